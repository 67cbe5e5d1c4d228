"""Tiles read on the fly from memory-mapped images, and a seeded, resumable visiting order.

The dataset returns raw ``uint8`` tiles; normalisation (grey → 3 channels, ImageNet mean/std)
happens on the whole batch on the training device (``mvfcnn.models.preprocess.normalize_batch``),
which is cheaper than converting every tile to float on the loader side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mvfcnn.errors import InputError
from mvfcnn.io import read_image, read_labels

#: columns of a tile index that TileDataset reads (tiling.TILE_INDEX_COLUMNS has them all)
DATASET_COLUMNS = ["sample", "y", "x", "h", "w", "rot", "image", "labels"]


def to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit view of an image tile: uint16 keeps its high byte, floats in [0, 1] are scaled."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    info = np.iinfo(array.dtype)
    scaled = (array.astype(np.float64) - info.min) / float(info.max - info.min)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


class TileDataset(Dataset):
    """Tiles of a tile index as ``(image uint8 (C, h, w), labels int64 (h, w))`` tensors.

    Images are opened lazily with memory-mapping and cached per process, so each DataLoader
    worker keeps its own maps (the cache is dropped when the dataset is pickled to a worker).
    Grey images give C = 1, RGB images C = 3. ``rot`` is applied with ``np.rot90`` (counter-
    clockwise). A window smaller than ``size`` (an image smaller than the tile) is padded to
    ``size`` with 0 and the ignore label, so batches stack.
    """

    def __init__(self, tiles: pd.DataFrame, *, size: int | None = None,
                 ignore_index: int = 255) -> None:
        missing = [c for c in DATASET_COLUMNS if c not in tiles.columns]
        if missing:
            raise InputError(f"tile index lacks column(s) {missing}")
        if len(tiles) == 0:
            raise InputError("tile index is empty")
        self.tiles = tiles.reset_index(drop=True)
        self._cols = {c: self.tiles[c].to_numpy() for c in DATASET_COLUMNS}
        self.size = int(size) if size is not None else int(max(self.tiles["h"].max(),
                                                              self.tiles["w"].max()))
        self.ignore_index = int(ignore_index)
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _open(self, path: str, sample: str, kind: str) -> np.ndarray:
        key = (kind, path)
        array = self._cache.get(key)
        if array is None:
            read = read_labels if kind == "labels" else read_image
            array = read(path, sample=sample, mmap=True)
            self._cache[key] = array
        return array

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i`` as numpy: image (h, w[, C]) uint8 and labels (h, w) int64, rotated."""
        c = self._cols
        sample = str(c["sample"][i])
        y, x, h, w, rot = (int(c[k][i]) for k in ("y", "x", "h", "w", "rot"))
        image = self._open(str(c["image"][i]), sample, "image")
        labels = self._open(str(c["labels"][i]), sample, "labels")
        if image.shape[:2] != labels.shape:
            raise InputError(f"image {image.shape[:2]} and labels {labels.shape} differ in size",
                             sample=sample, path=c["labels"][i])
        if y < 0 or x < 0 or y + h > labels.shape[0] or x + w > labels.shape[1]:
            raise InputError(f"tile y={y} x={x} h={h} w={w} outside the image {labels.shape}",
                             sample=sample, path=c["image"][i])
        img = to_uint8(np.array(image[y:y + h, x:x + w]))  # a private copy, never the map
        if img.ndim == 3:
            img = img[..., :3]
        lab = np.asarray(labels[y:y + h, x:x + w]).astype(np.int64)
        if h < self.size or w < self.size:
            img, lab = self._pad(img, lab)
        if rot % 4:
            img = np.rot90(img, k=rot % 4, axes=(0, 1))
            lab = np.rot90(lab, k=rot % 4, axes=(0, 1))
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def _pad(self, img: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ph, pw = max(self.size - lab.shape[0], 0), max(self.size - lab.shape[1], 0)
        lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=self.ignore_index)
        pad = ((0, ph), (0, pw)) + (((0, 0),) if img.ndim == 3 else ())
        return np.pad(img, pad), lab

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = self.read(int(i))
        chw = img[None] if img.ndim == 2 else np.ascontiguousarray(img.transpose(2, 0, 1))
        return torch.from_numpy(chw), torch.from_numpy(lab)


def sample_order(n_tiles: int, iterations: int, batch_size: int, seed: int) -> np.ndarray:
    """Tile indices for every batch, shape (iterations, batch_size), derived from ``seed`` alone.

    Concatenated epoch-wise permutations, so every tile is visited once per epoch and a run
    resumed at iteration ``i`` takes exactly ``order[i:]``, the batches the uninterrupted run
    would have taken.
    """
    if n_tiles < 1:
        raise InputError("cannot sample from an empty tile index")
    if iterations < 0 or batch_size < 1:
        raise InputError(f"need iterations >= 0 and batch_size >= 1, got {iterations}, "
                         f"{batch_size}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    need = iterations * batch_size
    epochs = -(-need // n_tiles) if need else 0
    flat = (np.concatenate([rng.permutation(n_tiles) for _ in range(epochs)]) if epochs
            else np.zeros(0, dtype=np.int64))
    return flat[:need].astype(np.int64).reshape(iterations, batch_size)
