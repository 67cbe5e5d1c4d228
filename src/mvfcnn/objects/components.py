"""Second-phase objects: connected components of the mask, with their ground-truth class.

Connectivity is 8 (pixels touching at a corner belong to the same object): a thin diagonal
island is one object, as a metallographer would count it, not a chain of fragments. The same
connectivity is used by :mod:`mvfcnn.objects.masking` when it removes small objects and counts them.

The ground-truth class of an object is the majority of the label pixels inside it, ignoring the
``ignore_index``; it is computed with one ``np.bincount`` over ``id * K + label`` in row strips, so
a 7000x8000 image with thousands of objects takes seconds and no per-object pass over the image.
Ties go to the lowest class index (so a 50/50 matrix/phase object counts as matrix).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image

CONNECTIVITY = 8
STRUCTURE = np.ones((3, 3), dtype=bool)  # 8-connectivity


def remove_small(mask: np.ndarray, min_area: int, *, connectivity: int = 8,
                 keep_border: bool = False) -> np.ndarray:
    """Drop components smaller than ``min_area`` px; ``keep_border`` spares those at the edge.

    Applied to the inverted mask with 4-connectivity (the dual of the objects' 8), it fills the
    small holes: background touching the image edge is the matrix, never a hole.
    """
    structure = STRUCTURE if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    ids, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    area = np.bincount(ids.ravel(), minlength=n + 1)
    small = area < min_area
    small[0] = False
    if keep_border:
        edge = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
        small[edge] = False
    if not small.any():
        return mask
    out = mask.copy()
    out[small[ids]] = False
    return out


COLUMNS = ["object_id", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area", "centroid_y",
           "centroid_x", "true_class", "true_class_name", "true_share"]
UNKNOWN = (-1, "unknown")
_STRIP_ROWS = 512


def find_objects(mask: np.ndarray) -> np.ndarray:
    """uint32 object ids (0 = background, 1.. in raster order of each object's first pixel)."""
    ids = np.zeros(mask.shape, dtype=np.uint32)
    ndimage.label(np.asarray(mask) > 0, structure=STRUCTURE, output=ids)
    return ids


LABEL_OBJECTS = ("per_class", "second_phase")


def label_objects(labels: np.ndarray, classes: ClassSet, *, min_area: int = 0,
                  mode: str = "per_class") -> np.ndarray:
    """Objects from ground truth alone, for datasets with neither LOM nor a second-phase mask
    (e.g. MetalDAM).

    ``per_class``: the connected components of each second-phase class; two touching objects of
    different classes stay two objects, each pure. Ids run 1.. over classes in index order, then
    raster order within a class. ``second_phase``: the components of all second-phase pixels
    together, as a binary mask would cut them (their class is then the majority of their labels,
    :func:`object_table`); ids in raster order. Components smaller than ``min_area`` px are
    dropped either way.
    """
    labels = np.asarray(labels)
    if mode not in LABEL_OBJECTS:
        raise ValueError(f"mode must be one of {LABEL_OBJECTS}, got {mode!r}")
    if mode == "second_phase":
        return find_objects(remove_small(np.isin(labels, classes.foreground), min_area))
    ids = np.zeros(labels.shape, dtype=np.uint32)
    next_id = 0
    for index in classes.foreground:
        component, count = ndimage.label(labels == index, structure=STRUCTURE)
        if not count:
            continue
        keep = np.bincount(component.ravel(), minlength=count + 1) >= max(min_area, 1)
        keep[0] = False
        renumber = np.zeros(count + 1, dtype=np.uint32)
        renumber[keep] = np.arange(next_id + 1, next_id + 1 + int(keep.sum()), dtype=np.uint32)
        ids = np.where(component > 0, renumber[component], ids)
        next_id += int(keep.sum())
    return ids


def component_areas(labels: np.ndarray, classes: ClassSet) -> dict[str, np.ndarray]:
    """Areas (px) of the 8-connected components of each second-phase class of a label map."""
    labels = np.asarray(labels)
    out = {}
    for index, name in zip(classes.foreground, classes.foreground_names, strict=True):
        component, count = ndimage.label(labels == index, structure=STRUCTURE)
        out[name] = np.bincount(component.ravel(), minlength=count + 1)[1:].astype(np.int64)
    return out


def min_area_for_area_loss(areas: dict[str, np.ndarray], max_loss: float) -> int:
    """The largest minimum object area (px) that drops at most ``max_loss`` of every class's
    area: objects become the components that carry the phase, not one-pixel annotation speckle,
    and no class loses more than that share of itself (a class of small objects, such as
    MetalDAM's precipitates, bounds the choice). Components below the result are dropped."""
    if not 0 <= max_loss < 1:
        raise ValueError(f"max_loss must be in [0, 1), got {max_loss}")
    bound = None
    for values in areas.values():
        values = np.sort(np.asarray(values, dtype=np.int64))
        if not len(values):
            continue
        removable = int(np.searchsorted(np.cumsum(values), max_loss * values.sum(), side="right"))
        if removable == len(values):
            continue  # even dropping every component stays within the budget (never: loss < 1)
        limit = int(values[removable])  # dropping "< limit" removes only the affordable ones
        bound = limit if bound is None else min(bound, limit)
    return 1 if bound is None else max(bound, 1)


def count_objects(mask: np.ndarray) -> int:
    """Number of 8-connected components (without keeping the id image)."""
    return int(ndimage.label(np.asarray(mask) > 0, structure=STRUCTURE)[1])


def check_labels(labels: np.ndarray, classes: ClassSet, *, sample: str | None = None,
                 path: object = None, shape: tuple[int, ...] | None = None) -> None:
    """Labels must be integer, on the expected grid, and hold only class indices or ignore."""
    if shape is not None and labels.shape[:2] != tuple(shape[:2]):
        raise InputError(f"labels size {labels.shape[0]}x{labels.shape[1]} differs from the "
                         f"mask/SEM size {shape[0]}x{shape[1]}", sample=sample, path=path)
    if labels.ndim != 2:
        raise InputError(f"labels must be a single-channel image, got shape {labels.shape}",
                         sample=sample, path=path)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be an integer image, got {labels.dtype}", sample=sample,
                         path=path)
    values = _present_values(labels)
    allowed = set(classes.indices) | {classes.ignore_index}
    bad = sorted(int(v) for v in values if int(v) not in allowed)
    if bad:
        shown = bad[:10] + (["..."] if len(bad) > 10 else [])
        raise InputError(f"label value(s) {shown} are not configured classes "
                         f"{list(classes.indices)} or ignore ({classes.ignore_index})",
                         sample=sample, path=path)


def _present_values(labels: np.ndarray) -> np.ndarray:
    """Distinct values; bincount for 8-bit (a 56 MP image in a fraction of a second)."""
    if labels.dtype == np.uint8:
        counts = np.zeros(256, dtype=np.int64)
        for r0 in range(0, labels.shape[0], _STRIP_ROWS * 4):
            counts += np.bincount(np.asarray(labels[r0:r0 + _STRIP_ROWS * 4]).ravel(),
                                  minlength=256)
        return np.flatnonzero(counts)
    return np.unique(labels)


def object_table(ids: np.ndarray, labels: np.ndarray | None, classes: ClassSet,
                 image_class: str | None = None) -> pd.DataFrame:
    """One row per object: half-open bbox, area, centroid and the ground-truth class.

    ``image_class``: the image as a whole is known to be of one constituent. Without labels every
    object gets that class (share 1.0). With *binary* labels (only 0, 1 and ignore) an object
    whose majority is the phase (1) gets that class and one whose majority is matrix stays a
    spurious object (0), with the majority's share. Multi-class labels (any other class value
    present) are more precise than the image-level class, e.g. about an intruder island of
    another constituent, so they decide as usual.
    ``labels`` must have passed :func:`check_labels` (non-negative integers).
    """
    n = int(ids.max()) if ids.size else 0
    k = classes.num_classes
    area = np.zeros(n + 1, dtype=np.int64)
    sum_y = np.zeros(n + 1, dtype=np.float64)
    sum_x = np.zeros(n + 1, dtype=np.float64)
    use_labels = labels is not None
    seen = np.zeros(k + 1, dtype=bool)  # which label bins occur anywhere
    counts = np.zeros((n + 1) * (k + 1), dtype=np.int64) if use_labels else None
    if use_labels:
        # class index -> bin 0..K-1, ignore (and anything else) -> bin K, dropped later
        size = max(256, int(classes.ignore_index) + 1)
        if np.asarray(labels).dtype.itemsize > 1:  # e.g. uint16 labels
            size = max(size, int(np.max(labels)) + 1)
        lut = np.full(size, k, dtype=np.int64)
        lut[list(classes.indices)] = np.arange(k)
    width = ids.shape[1] if ids.ndim == 2 else 0
    cols = np.arange(width, dtype=np.float64)
    for r0 in range(0, ids.shape[0], _STRIP_ROWS):
        strip = np.asarray(ids[r0:r0 + _STRIP_ROWS])
        rows = strip.shape[0]
        flat = strip.ravel().astype(np.int64)
        area += np.bincount(flat, minlength=n + 1)
        row_w = np.repeat(np.arange(r0, r0 + rows, dtype=np.float64), width)
        sum_y += np.bincount(flat, weights=row_w, minlength=n + 1)
        sum_x += np.bincount(flat, weights=np.tile(cols, rows), minlength=n + 1)
        if use_labels:
            lab = lut[np.asarray(labels[r0:r0 + rows]).ravel()]
            counts += np.bincount(flat * (k + 1) + lab, minlength=(n + 1) * (k + 1))
            seen |= np.bincount(lab, minlength=k + 1) > 0
    frame = pd.DataFrame({"object_id": np.arange(1, n + 1, dtype=np.int64)})
    boxes = ndimage.find_objects(ids, max_label=n) if n else []
    frame["bbox_y0"] = np.array([b[0].start for b in boxes], dtype=np.int64)
    frame["bbox_x0"] = np.array([b[1].start for b in boxes], dtype=np.int64)
    frame["bbox_y1"] = np.array([b[0].stop for b in boxes], dtype=np.int64)
    frame["bbox_x1"] = np.array([b[1].stop for b in boxes], dtype=np.int64)
    frame["area"] = area[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["centroid_y"] = sum_y[1:] / area[1:]
        frame["centroid_x"] = sum_x[1:] / area[1:]
    binary = counts is not None and not seen[2:k].any()
    if image_class is not None and counts is None:
        index = classes.index_of(image_class)
        frame["true_class"] = index
        frame["true_class_name"] = classes.names[index]
        frame["true_share"] = 1.0
    elif counts is not None:
        per = counts.reshape(n + 1, k + 1)[1:, :k]  # drop background row and ignore column
        if image_class is not None and binary:
            index = classes.index_of(image_class)
            per = per[:, :2]  # matrix, phase
        else:
            index = None
        total = per.sum(axis=1)
        best = per.argmax(axis=1)  # ties -> lowest index
        known = total > 0
        if index is not None:  # binary labels: phase -> the image's class
            best = np.where(best == 1, index, 0)
        frame["true_class"] = np.where(known, best, UNKNOWN[0]).astype(np.int64)
        names = np.array(classes.names, dtype=object)
        frame["true_class_name"] = np.where(known, names[best], UNKNOWN[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["true_share"] = np.where(known, per.max(axis=1) / np.maximum(total, 1), 0.0)
    else:
        frame["true_class"] = UNKNOWN[0]
        frame["true_class_name"] = UNKNOWN[1]
        frame["true_share"] = 0.0
    frame["centroid_y"] = frame["centroid_y"].round(3)
    frame["centroid_x"] = frame["centroid_x"].round(3)
    frame["true_share"] = frame["true_share"].astype(np.float64).round(6)
    return frame[COLUMNS]


def read_mask(path: str, sample: str) -> np.ndarray:
    """A mask image as bool (any value > 0 is foreground)."""

    mask = read_image(path, sample=sample, gray=True)
    return np.asarray(mask) > 0
