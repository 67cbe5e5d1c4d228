"""Object crops for the object-based baselines (§4.1 "Masking", "Cropping", "Warping").

Every labelled object (``true_class >= 1``) of a sample is cut out by its bounding box from the
masked image -- the masked SEM, or the registered LOM converted to grey and masked with the
binary second-phase mask -- and warped (resized, aspect ratio NOT kept, as the paper's
"warping") to ``crop_size`` x ``crop_size`` with ``skimage.transform.resize`` (bilinear,
anti-aliased when shrinking, edge-clamped). The paper uses 224; the CPU default is 64 (objects of
the synthetic data are ~40-120 px across, and VGG16 training at 64 px is ~12x cheaper than at 224).

Because warping distorts shape and texture, the hand-crafted features are computed here, on the
UNWARPED crop and the object's own mask (pixels of its id in the objects id image), and stored
beside the crops. One compressed ``.npz`` per (modality, split) -- or, cross-validated, per
(modality, sample), concatenated per fold by ``train-baseline`` -- holds (N objects):

* ``images`` (N, S, S) uint8, ``true_class`` (N,) int64, ``sample`` (N,) str,
  ``object_id`` (N,) int64, ``bbox`` (N, 4) int64 (y0, x0, y1, x1, half-open), ``area`` (N,);
* ``handcrafted`` (N, F) float32 and ``handcrafted_names`` (F,) str
  (:mod:`mvfcnn.baselines.features`);
* ``modality``, ``split`` (0-d str: train, test or sample) and ``crop_size`` (0-d int).

Whole images are never copied: crops are sliced from memory-mapped files, then masked and
converted to grey one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.baselines.features import handcrafted_features, handcrafted_names
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import atomic_path, read_image, to_gray, to_unit_float

TABLE_COLUMNS = ("object_id", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "true_class")


@dataclass(frozen=True)
class CropSet:
    """The crops of one (modality, split); see the module docstring for the arrays."""

    images: np.ndarray
    true_class: np.ndarray
    sample: np.ndarray
    object_id: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    handcrafted: np.ndarray
    handcrafted_names: np.ndarray
    modality: str
    split: str
    crop_size: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, images=self.images, true_class=self.true_class, sample=self.sample,
                object_id=self.object_id, bbox=self.bbox, area=self.area,
                handcrafted=self.handcrafted, handcrafted_names=self.handcrafted_names,
                modality=np.array(self.modality), split=np.array(self.split),
                crop_size=np.array(self.crop_size))

    @classmethod
    def concatenate(cls, parts: Sequence[CropSet], *, split: str) -> CropSet:
        """The objects of several crop files (e.g. one per sample) as one set, in order."""
        if not parts:
            raise InputError("no crops files given")
        first = parts[0]
        for part in parts[1:]:
            if (part.modality, part.crop_size) != (first.modality, first.crop_size) or \
                    list(part.handcrafted_names) != list(first.handcrafted_names):
                raise InputError(f"crops files disagree: {first.modality}/{first.crop_size} px "
                                 f"vs {part.modality}/{part.crop_size} px (or their hand-crafted "
                                 "features); rerun crop-objects with one setting")
        if len(parts) == 1:
            return replace(first, split=split)
        arrays = {name: np.concatenate([getattr(p, name) for p in parts])
                  for name in ("images", "true_class", "sample", "object_id", "bbox", "area",
                               "handcrafted")}
        return cls(**arrays, handcrafted_names=first.handcrafted_names, modality=first.modality,
                   split=split, crop_size=first.crop_size)

    @classmethod
    def load_all(cls, paths: Sequence[str | Path], *, split: str) -> CropSet:
        """:meth:`load` each file and :meth:`concatenate` them."""
        return cls.concatenate([cls.load(path) for path in paths], split=split)

    @classmethod
    def load(cls, path: str | Path) -> CropSet:
        path = Path(path)
        if not path.is_file():
            raise InputError("crops file not found", path=path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read crops file ({err})", path=path) from err
        missing = [f for f in cls.__dataclass_fields__ if f not in arrays]
        if missing:
            raise InputError(f"crops file lacks array(s) {missing}", path=path)
        return cls(
            images=arrays["images"], true_class=arrays["true_class"].astype(np.int64),
            sample=arrays["sample"].astype(str), object_id=arrays["object_id"].astype(np.int64),
            bbox=arrays["bbox"].astype(np.int64), area=arrays["area"].astype(np.int64),
            handcrafted=arrays["handcrafted"].astype(np.float32),
            handcrafted_names=arrays["handcrafted_names"].astype(str),
            modality=str(arrays["modality"]), split=str(arrays["split"]),
            crop_size=int(arrays["crop_size"]))


def warp(crop: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D crop to ``size`` x ``size`` (aspect not kept) -> uint8.

    Bilinear (order 1), Gaussian anti-aliasing along axes that shrink, edges clamped, values
    rounded to the nearest integer.
    """
    from skimage.transform import resize

    crop = np.asarray(crop)
    if crop.ndim != 2 or min(crop.shape) < 1:
        raise ValueError(f"expected a non-empty 2-D crop, got shape {crop.shape}")
    out = resize(crop.astype(np.float64), (size, size), order=1, mode="edge",
                 anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _grey_uint8(block: np.ndarray) -> np.ndarray:
    """8-bit grey view of an image block (RGB -> luminance; deeper integers/floats rescaled)."""

    block = np.asarray(block)
    if block.ndim == 3:
        block = to_gray(block[..., :3])
    if block.dtype == np.uint8:
        return block
    return np.clip(np.rint(to_unit_float(block) * 255.0), 0, 255).astype(np.uint8)


def _check_table(table: pd.DataFrame, sample: str, path: object = None) -> None:
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"objects table lacks column(s) {missing}", sample=sample, path=path)


def crop_sample(
    image: np.ndarray,
    ids: np.ndarray,
    table: pd.DataFrame,
    *,
    size: int,
    sample: str,
    mask: np.ndarray | None = None,
    labelled_only: bool = True,
    handcrafted: dict[str, Any] | None = None,
) -> dict[str, list[Any]]:
    """Crops (and hand-crafted features) of one sample's objects, as lists of per-object values.

    ``image``: (H, W) or (H, W, 3) image on the objects' grid; ``ids``: (H, W) object ids;
    ``mask``: optional (H, W) second-phase mask, pixels where it is 0 are set to 0 (the masked
    SEM is already masked, so passing its mask again changes nothing).
    """

    _check_table(table, sample)
    if ids.shape != image.shape[:2]:
        raise InputError(f"objects id image {ids.shape} and image {image.shape[:2]} differ in "
                         "size", sample=sample)
    if mask is not None and mask.shape != ids.shape:
        raise InputError(f"mask {mask.shape} and image {ids.shape} differ in size", sample=sample)
    height, width = ids.shape
    out: dict[str, list[Any]] = {k: [] for k in ("images", "true_class", "sample", "object_id",
                                                 "bbox", "area", "handcrafted")}
    for row in table.itertuples(index=False):
        true_class = int(row.true_class)
        if labelled_only and true_class < 1:
            continue
        y0, x0, y1, x1 = (int(v) for v in (row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1))
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise InputError(f"object {row.object_id}: bbox {(y0, x0, y1, x1)} outside the "
                             f"{height}x{width} image", sample=sample)
        own = np.asarray(ids[y0:y1, x0:x1]) == int(row.object_id)
        if not own.any():
            raise InputError(f"object {row.object_id} has no pixel in its bbox "
                             f"{(y0, x0, y1, x1)}: objects table and id image disagree",
                             sample=sample)
        crop = _grey_uint8(image[y0:y1, x0:x1])
        if mask is not None:
            crop = np.where(np.asarray(mask[y0:y1, x0:x1]) > 0, crop, 0).astype(np.uint8)
        out["images"].append(warp(crop, size))
        out["true_class"].append(true_class)
        out["sample"].append(sample)
        out["object_id"].append(int(row.object_id))
        out["bbox"].append((y0, x0, y1, x1))
        out["area"].append(int(own.sum()))
        out["handcrafted"].append(handcrafted_features(crop, own, handcrafted))
    return out


def crop_objects(
    samples: Sequence[str],
    images: Sequence[str | Path],
    objects_tables: Sequence[str | Path],
    objects_ids: Sequence[str | Path],
    *,
    modality: str,
    split: str,
    size: int,
    masks: Sequence[str | Path] | None = None,
    handcrafted: dict[str, Any] | None = None,
) -> CropSet:
    """Crop every labelled object of ``samples`` (files given in the same order) -> CropSet."""

    lists = [list(samples), list(images), list(objects_tables), list(objects_ids)]
    if masks is not None:
        lists.append(list(masks))
    if len({len(x) for x in lists}) != 1:
        raise InputError("--samples, --images, --objects-tables, --objects-ids (and --masks) "
                         f"need one entry per sample, got lengths {[len(x) for x in lists]}")
    names = handcrafted_names(handcrafted)
    total: dict[str, list[Any]] = {}
    for index, sample in enumerate(samples):
        table_path = Path(objects_tables[index])
        if not table_path.is_file():
            raise InputError("objects table not found", sample=sample, path=table_path)
        try:
            table = pd.read_csv(table_path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(f"cannot read objects table ({err})", sample=sample,
                             path=table_path) from err
        _check_table(table, sample, table_path)
        image = read_image(images[index], sample=sample, micrograph=True)
        ids = read_image(objects_ids[index], sample=sample)
        mask = read_image(masks[index], sample=sample) if masks is not None else None
        part = crop_sample(image, ids, table, size=size, sample=sample, mask=mask,
                           handcrafted=handcrafted)
        for key, values in part.items():
            total.setdefault(key, []).extend(values)
    n = len(total.get("images", []))
    return CropSet(
        images=np.stack(total["images"]) if n else np.zeros((0, size, size), np.uint8),
        true_class=np.asarray(total.get("true_class", []), dtype=np.int64),
        sample=np.asarray(total.get("sample", []), dtype=str),
        object_id=np.asarray(total.get("object_id", []), dtype=np.int64),
        bbox=np.asarray(total.get("bbox", []), dtype=np.int64).reshape(n, 4),
        area=np.asarray(total.get("area", []), dtype=np.int64),
        handcrafted=(np.stack(total["handcrafted"]) if n
                     else np.zeros((0, len(names)), np.float32)),
        handcrafted_names=np.asarray(names, dtype=str),
        modality=modality, split=split, crop_size=int(size))
