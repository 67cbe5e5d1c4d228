"""Tiles read on the fly from memory-mapped images, and a seeded, resumable visiting order.

The dataset returns raw ``uint8`` tiles; normalisation (grey → 3 channels, ImageNet mean/std)
happens on the whole batch on the training device (``mvfcnn.models.preprocess.normalize_batch``),
which is cheaper than converting every tile to float on the loader side.

SEM contrast augmentation (:class:`AugmentedTiles`, ``fcn.augmentation``): micrographs of one
steel differ in brightness, contrast, detector gamma, focus and noise from session to session,
so the network should not key on absolute grey levels. Each visit of a tile draws its own
flips and photometric changes from a generator seeded with (run seed, position in the visiting
order), so a run is a function of its seed alone and a resumed run draws what the uninterrupted
one would have.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, read_labels, to_uint8

#: columns of a tile index that TileDataset reads (tiling.TILE_INDEX_COLUMNS has them all)
DATASET_COLUMNS = ["sample", "y", "x", "h", "w", "rot", "image", "labels"]


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
            if kind == "labels":
                array = read_labels(path, sample=sample, mmap=True)
            else:
                array = read_image(path, sample=sample, mmap=True, micrograph=True)
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


#: ``fcn.augmentation`` keys, in the order they are applied (flips first: geometry, then grey)
AUGMENTATIONS = ("flips", "gamma", "contrast", "brightness", "blur_sigma", "noise_std")


def augmentation_enabled(params: dict[str, Any] | None) -> bool:
    """Whether any ``fcn.augmentation`` setting changes a tile (all off = the plain dataset)."""
    return bool(params) and any(bool(params.get(k)) for k in AUGMENTATIONS)


def augment_tile(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                 params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One random draw of the enabled augmentations on a uint8 tile (h, w[, C]) and its labels.

    ``flips``: left-right and up-down, each with probability 1/2 (with the index's 90°
    rotations: all 8 symmetries of the square). On intensities x in [0, 1]: ``gamma`` g →
    x ** exp(U(-g, g)); ``contrast`` c → mean + (x - mean) · U(1 - c, 1 + c); ``brightness`` b
    → x + U(-b, b); ``blur_sigma`` s → Gaussian blur with σ ~ U(0, s) px; ``noise_std`` n →
    Gaussian noise of σ ~ U(0, n). Labels only follow the flips. Every draw is taken whether
    or not its setting is on, so enabling one setting does not shift the others' draws.
    """
    draws = rng.random(8)
    if params.get("flips"):
        if draws[0] < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if draws[1] < 0.5:
            img, lab = img[::-1], lab[::-1]
    grey = [params.get(k) for k in AUGMENTATIONS[1:]]
    if not any(grey):
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)
    gamma, contrast, brightness, blur, noise = (float(v or 0.0) for v in grey)
    x = img.astype(np.float32) / 255.0
    if gamma:
        x = x ** np.float32(np.exp(gamma * (2 * draws[2] - 1)))
    if contrast:
        mean = x.mean()
        x = mean + (x - mean) * np.float32(1 + contrast * (2 * draws[3] - 1))
    if brightness:
        x = x + np.float32(brightness * (2 * draws[4] - 1))
    if blur and draws[5] * blur > 0.1:
        from scipy.ndimage import gaussian_filter

        sigma = draws[5] * blur
        x = gaussian_filter(x, sigma=(sigma, sigma) + (0,) * (x.ndim - 2), mode="reflect")
    if noise:
        std = np.float32(noise * draws[6])
        x = x + std * rng.standard_normal(x.shape, dtype=np.float32)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return out, np.ascontiguousarray(lab)


class AugmentedTiles(Dataset):
    """A :class:`TileDataset` whose items are ``(position, tile)`` pairs, each augmented by
    :func:`augment_tile` with a generator seeded by (``seed``, position): position is the
    sample's place in the visiting order, so a tile visited twice is augmented twice anew."""

    def __init__(self, tiles: TileDataset, params: dict[str, Any], seed: int) -> None:
        self.tiles, self.params, self.seed = tiles, dict(params), int(seed)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        position, index = (int(v) for v in item)
        img, lab = self.tiles.read(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, position]))
        img, lab = augment_tile(img, lab, rng, self.params)
        chw = img[None] if img.ndim == 2 else np.ascontiguousarray(img.transpose(2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(chw)), torch.from_numpy(lab)


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
