"""Sliding-window tile index with per-class stride balancing (Azimi et al. 2018, §4.3.4).

Tiles are never written to disk: the index is a table of window coordinates (one row per tile
and rotation) that :class:`mvfcnn.fcn.dataset.TileDataset` reads on the fly from memory-mapped
images.

Window positions along an axis of length ``L`` are ``0, s, 2s, ...`` while the window fits
(``p + size <= L``). The last window is **not** flushed to the edge, so a strip of at most
``s - 1`` pixels at the bottom/right may be left out; this keeps the count formula of the paper::

    n(L, s) = (L - size) // s + 1          (L >= size)
    n(L, s) = 1                             (L <  size: one window of the whole axis, h or w < size)

and an image yields ``n(H, s) * n(W, s)`` tiles: 7000×8000 px, 1000 px tiles, stride 100 →
61 × 71 = 4331 (§4.3.4). Windows on an image smaller than ``size`` are padded by the dataset.

Balancing: the class with the most tiles at the common stride keeps it; every other class gets
the integer stride ``s <= common`` (equal in x and y, as in the paper) whose count is closest to
that target (ties → the larger stride, fewer duplicates). A class that cannot come within the
tolerance is reported (``BalanceResult.within_tolerance``) and, with ``strict=True``, rejected.

Augmentation adds rows with ``rot`` = 1, 2, 3 (90°, 180°, 270° counter-clockwise, ``np.rot90``
convention) beside ``rot`` = 0; the rotation is applied when the tile is read.

Rare-class centring (:func:`add_rare_tiles`, ``tiles.rare_share`` > 0): stride balancing works per
*image* class, which says nothing about pixels when every image holds several classes (MetalDAM),
so a rare class (M/A, defects) lands in few tiles and mostly near their borders. For each rare
class a share ``rare_share`` of the final index is added as windows centred on pixels of that
class, drawn uniformly over its labelled pixels of all training images by a generator seeded
with the run's seed. Their ``class`` column reads ``centred:<class>``; they always train (never
held out for validation), so the validation tiles are those of the plain index.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, read_labels

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ["sample", "height", "width", "class", "image", "labels"]
#: columns of the tile index file (tiles.csv) that tile_index writes
TILE_INDEX_COLUMNS = ["sample", "y", "x", "h", "w", "rot", "class", "image", "labels"]
ROTATIONS = (0, 1, 2, 3)
#: ``class`` prefix of the rows :func:`add_rare_tiles` adds (windows centred on a rare class)
CENTRED = "centred:"


@dataclass
class ClassBalance:
    """Stride and tile count chosen for one class (counts exclude rotations)."""

    name: str
    images: int
    stride: int
    count: int
    count_at_common_stride: int
    target: int
    within_tolerance: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TileIndex:
    """The tile table plus how it was made (strides per class, counts, balance check)."""

    tiles: pd.DataFrame
    size: int
    common_stride: int
    balanced: bool
    augment: bool
    tolerance: float
    classes: dict[str, ClassBalance] = field(default_factory=dict)
    rare: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def strides(self) -> dict[str, int]:
        return {name: c.stride for name, c in self.classes.items()}

    @property
    def counts(self) -> dict[str, int]:
        """Rows per class in ``tiles`` (rotations included)."""
        return {name: int((self.tiles["class"] == name).sum()) for name in self.classes}

    @property
    def within_tolerance(self) -> bool:
        return all(c.within_tolerance for c in self.classes.values())

    def summary(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "common_stride": self.common_stride,
            "balanced": self.balanced,
            "augment": self.augment,
            "tolerance": self.tolerance,
            "n_tiles": int(len(self.tiles)),
            "within_tolerance": self.within_tolerance,
            "classes": {name: {**c.to_dict(), "rows": self.counts[name]}
                        for name, c in self.classes.items()},
            **({"rare": self.rare} if self.rare else {}),
        }


def axis_positions(length: int, size: int, stride: int) -> np.ndarray:
    """Window start positions along one axis (no flush to the edge; see module docstring)."""
    if stride < 1 or size < 1:
        raise InputError(f"tile size and stride must be >= 1, got size={size}, stride={stride}")
    if length < size:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, length - size + 1, stride, dtype=np.int64)


def count_windows(height: int, width: int, size: int, stride: int) -> int:
    """Number of windows on one image: ``n(H, s) * n(W, s)``."""
    def n(length: int) -> int:
        return (length - size) // stride + 1 if length >= size else 1

    return n(int(height)) * n(int(width))


def _class_count(shapes: Sequence[tuple[int, int]], size: int, stride: int) -> int:
    return sum(count_windows(h, w, size, stride) for h, w in shapes)


def choose_stride(shapes: Sequence[tuple[int, int]], *, size: int, common_stride: int,
                  target: int) -> int:
    """Integer stride <= common stride whose tile count is closest to ``target``.

    Ties go to the larger stride (fewer near-duplicate tiles).
    """
    best_stride, best_gap = common_stride, None
    for stride in range(common_stride, 0, -1):
        count = _class_count(shapes, size, stride)
        gap = abs(count - target)
        if best_gap is None or gap < best_gap:
            best_stride, best_gap = stride, gap
        if count >= target:
            break  # counts only grow as the stride shrinks: no closer one below

    return best_stride


def tile_index(images: pd.DataFrame, *, size: int, stride: int, balanced: bool, augment: bool,
               tolerance: float = 0.05, strict: bool = False) -> TileIndex:
    """Sliding-window tiles of every image, stride-balanced per class if ``balanced``.

    ``images`` has columns sample, height, width, class (image-level class name; resolve mixed
    images first with :func:`image_class_from_labels`), image, labels.
    """
    missing = [c for c in IMAGE_COLUMNS if c not in images.columns]
    if missing:
        raise InputError(f"image table lacks column(s) {missing}")
    if len(images) == 0:
        raise InputError("no training images to tile")
    size, stride = int(size), int(stride)
    if size < 1 or stride < 1:
        raise InputError(f"tile size and stride must be >= 1, got size={size}, stride={stride}")
    empty = images.loc[images["class"].fillna("").astype(str) == "", "sample"].tolist()
    if empty:
        raise InputError(f"image-level class missing for sample(s) {empty}")
    images = images.reset_index(drop=True)

    groups: dict[str, list[int]] = {}
    for i, name in enumerate(images["class"].astype(str)):
        groups.setdefault(name, []).append(i)
    shapes = {name: [(int(images.at[i, "height"]), int(images.at[i, "width"])) for i in rows]
              for name, rows in groups.items()}
    common_counts = {name: _class_count(s, size, stride) for name, s in shapes.items()}
    target = max(common_counts.values())

    balance: dict[str, ClassBalance] = {}
    for name, class_shapes in shapes.items():
        if balanced:
            chosen = choose_stride(class_shapes, size=size, common_stride=stride, target=target)
        else:
            chosen = stride
        count = _class_count(class_shapes, size, chosen)
        ok = (not balanced) or abs(count - target) <= tolerance * target
        balance[name] = ClassBalance(name, len(class_shapes), chosen, count, common_counts[name],
                                     target if balanced else count, ok)
        if not ok:
            msg = (f"class {name!r} ({len(class_shapes)} image(s)) reaches {count} tiles at "
                   f"stride {chosen}, not within {tolerance:.0%} of the target {target}")
            if strict:
                raise InputError(msg)
            log.warning("tile balancing: %s", msg)

    rotations = ROTATIONS if augment else (0,)
    frames = []
    for sample, height, width, name, image, label in zip(
            *(images[c].tolist() for c in IMAGE_COLUMNS), strict=True):
        name = str(name)
        s = balance[name].stride
        height, width = int(height), int(width)
        ys, xs = axis_positions(height, size, s), axis_positions(width, size, s)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        yy, xx = yy.ravel(), xx.ravel()
        n = yy.size
        frames.append(pd.DataFrame({
            "sample": sample,
            "y": np.tile(yy, len(rotations)),
            "x": np.tile(xx, len(rotations)),
            "h": min(size, height),
            "w": min(size, width),
            "rot": np.repeat(np.asarray(rotations, dtype=np.int64), n),
            "class": name,
            "image": str(image),
            "labels": str(label),
        }))
    tiles = pd.concat(frames, ignore_index=True)[TILE_INDEX_COLUMNS]
    return TileIndex(tiles, size, stride, bool(balanced), bool(augment), float(tolerance), balance)


def is_centred(tiles: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows :func:`add_rare_tiles` added (kept out of validation)."""
    return tiles["class"].astype(str).str.startswith(CENTRED).to_numpy()


def class_pixel_counts(label_maps: Sequence[np.ndarray], classes: ClassSet) -> np.ndarray:
    """Labelled pixels per class over ``label_maps`` (ignore pixels and unknown values left out)."""
    counts = np.zeros(classes.num_classes, dtype=np.int64)
    for labels in label_maps:
        flat = np.asarray(labels).ravel().astype(np.int64, copy=False)
        counts += np.bincount(flat[flat < classes.num_classes], minlength=classes.num_classes)
    return counts


def rare_classes(counts: np.ndarray, classes: ClassSet, *, names: Sequence[str] | None,
                 max_frequency: float) -> list[str]:
    """The classes to centre tiles on: ``names`` if given, else every class present in the
    training labels whose pixel share is below ``max_frequency`` (absent ones cannot be centred).
    """
    if names is not None:
        for name in names:
            classes.index_of(name)
        return [n for n in classes.names if n in set(names)]
    freq = counts / max(int(counts.sum()), 1)
    return [classes.names[c] for c in range(classes.num_classes)
            if counts[c] > 0 and freq[c] < max_frequency]


def add_rare_tiles(index: TileIndex, label_maps: Sequence[np.ndarray], classes: ClassSet, *,
                   share: float, names: Sequence[str] | None = None, max_frequency: float = 0.1,
                   seed: int = 0) -> TileIndex:
    """``index`` plus windows centred on pixels of each rare class, ``share`` of the result each.

    ``label_maps`` are the label images in the order of the index's samples (first appearance).
    With k rare classes and N plain rows, each class gets ``round(share * N / (1 - k * share))``
    rows (whole positions times the rotations the index uses); the centres are uniform over the
    class's pixels of all images, drawn from ``seed`` alone, and a window is shifted inside the
    image where the centre lies near a border. ``share`` 0 returns ``index`` unchanged.
    """
    if share <= 0:
        return index
    tiles = index.tiles
    samples = list(dict.fromkeys(tiles["sample"].astype(str)))
    if len(samples) != len(label_maps):
        raise InputError(f"{len(label_maps)} label maps for {len(samples)} tiled images")
    first = tiles.drop_duplicates("sample")
    first = first.set_index(first["sample"].astype(str), drop=False)
    counts = class_pixel_counts(label_maps, classes)
    rare = rare_classes(counts, classes, names=names, max_frequency=max_frequency)
    rare = [n for n in rare if counts[classes.index_of(n)] > 0]
    if not rare:
        log.info("rare-class tiles: no rare class in the training labels")
        return index
    if share * len(rare) >= 1:
        raise InputError(f"tiles.rare_share {share} x {len(rare)} rare classes must stay below 1")
    rotations = sorted(int(r) for r in tiles["rot"].unique())
    wanted = round(share * len(tiles) / (1 - share * len(rare)))
    positions = max(1, round(wanted / len(rotations)))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 22]))
    frames, report = [], {}
    for name in rare:
        value = classes.index_of(name)
        per_image = np.array([int((np.asarray(m) == value).sum()) for m in label_maps])
        picks = np.sort(rng.integers(0, int(per_image.sum()), positions))
        bounds = np.cumsum(per_image)
        image_of = np.searchsorted(bounds, picks, side="right")
        ys, xs, owners = [], [], []
        for i in np.unique(image_of):
            where = np.flatnonzero(np.asarray(label_maps[i]).ravel() == value)
            offset = int(bounds[i] - per_image[i])
            py, px = np.divmod(where[picks[image_of == i] - offset], label_maps[i].shape[1])
            ys.append(py)
            xs.append(px)
            owners += [i] * len(py)
        py, px, owner = np.concatenate(ys), np.concatenate(xs), np.asarray(owners)
        for i in np.unique(owner):
            row = first.loc[samples[i]]
            height, width = label_maps[i].shape
            h, w = min(index.size, height), min(index.size, width)
            sel = owner == i
            y = np.clip(py[sel] - index.size // 2, 0, height - h)
            x = np.clip(px[sel] - index.size // 2, 0, width - w)
            frames.append(pd.DataFrame({
                "sample": row["sample"], "y": np.tile(y, len(rotations)),
                "x": np.tile(x, len(rotations)), "h": h, "w": w,
                "rot": np.repeat(np.asarray(rotations, dtype=np.int64), len(y)),
                "class": f"{CENTRED}{name}", "image": row["image"], "labels": row["labels"]}))
        report[name] = {"pixel_share": float(counts[value] / counts.sum()),
                        "positions": positions, "rows": positions * len(rotations)}
    extra = pd.concat(frames, ignore_index=True)[TILE_INDEX_COLUMNS]
    for info in report.values():
        info["share"] = info["rows"] / (len(tiles) + len(extra))
    log.info("rare-class tiles: %s", json.dumps(report))
    out = pd.concat([tiles, extra], ignore_index=True)
    return TileIndex(out, index.size, index.common_stride, index.balanced, index.augment,
                     index.tolerance, index.classes, report)


def image_class_from_labels(labels: np.ndarray, classes: ClassSet) -> str:
    """Majority non-matrix class of a label image (for images without an image-level class).

    Returns the matrix class name when the image has no labelled second-phase pixel.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"label image must be integer, got {labels.dtype}")
    counts = np.bincount(labels.ravel().astype(np.int64, copy=False),
                         minlength=max(classes.num_classes, classes.ignore_index + 1))
    fg = np.asarray(classes.foreground, dtype=np.int64)
    if fg.size == 0 or counts[fg].sum() == 0:
        return classes.names[0]
    return classes.names[int(fg[np.argmax(counts[fg])])]


def image_shape(path: str | Path, *, sample: str | None = None) -> tuple[int, int]:
    """(height, width) of an image without decoding its pixels (TIFF header only)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", sample=sample, path=path)
    if path.suffix.lower() in {".tif", ".tiff"}:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except Exception as err:  # noqa: BLE001 - any parser failure means an unreadable file
            raise InputError(f"cannot read TIFF header ({err})", sample=sample, path=path) from err
    else:
        shape = read_image(path, sample=sample, mmap=False).shape
    if len(shape) == 3 and shape[-1] in (3, 4):
        shape = shape[:2]
    if len(shape) != 2:
        raise InputError(f"expected a 2-D grayscale or RGB image, got shape {tuple(shape)}",
                         sample=sample, path=path)
    return int(shape[0]), int(shape[1])


def build_image_table(samples: Sequence[str], images: Sequence[str], labels: Sequence[str],
                      class_names: Sequence[str], classes: ClassSet) -> pd.DataFrame:
    """Image table for :func:`tile_index`: shapes from headers, missing classes from labels."""
    lengths = {len(samples), len(images), len(labels), len(class_names)}
    if len(lengths) != 1:
        raise InputError("--samples, --images, --labels and --classes need the same number of "
                         f"values, got {len(samples)}, {len(images)}, {len(labels)}, "
                         f"{len(class_names)}")
    rows = []
    for sample, image, label, name in zip(samples, images, labels, class_names, strict=True):
        shape = image_shape(image, sample=sample)
        label_shape = image_shape(label, sample=sample)
        if shape != label_shape:
            raise InputError(f"image is {shape[0]}x{shape[1]} but its labels are "
                             f"{label_shape[0]}x{label_shape[1]}", sample=sample, path=label)
        if name:
            classes.index_of(name)
        else:
            name = image_class_from_labels(read_labels(label, sample=sample), classes)
            log.info("sample %s: image-level class from labels: %s", sample, name)
        rows.append({"sample": sample, "height": shape[0], "width": shape[1], "class": name,
                     "image": str(image), "labels": str(label)})
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS)


def read_tiles(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A tile index CSV written by ``mvfcnn tile-index``."""
    if not Path(path).is_file():
        raise InputError("tile index not found", path=path)
    try:
        frame = pd.read_csv(path, dtype={"sample": str, "class": str, "image": str,
                                         "labels": str}, keep_default_na=False)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot parse tile index ({err})", path=path) from err
    if len(frame) == 0:
        raise InputError("tile index is empty (no training tiles)", path=path)
    return frame
