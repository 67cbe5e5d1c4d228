"""Binary second-phase mask: threshold the registered LOM (paper section 4.1, "Masking").

The paper thresholds the LOM at a user-defined grey value; we take that value from config
(``masking.threshold`` in [0, 1] of the image's range) or, when it is null, Otsu's threshold,
which suits the strongly bimodal etched LOM. The raw threshold leaves speckle, grain-boundary
fragments and pin holes, so the mask is cleaned: opening (removes thin bright/dark lines and
speckle), closing (bridges one-pixel gaps), removal of objects below ``min_object_area`` and
filling of holes below the same area. Opening erodes as if the image continued beyond its edge,
so islands cut by the border are not eaten from the border.

Pixels the warped LOM did not cover carry the LOM's matrix value (see
:func:`mvfcnn.data.registration.warp_to_grid`), so they never become foreground.
A sample may instead supply its own mask (the paper's "binary LOM"): it is used as is (> 0).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mvfcnn.core.io import to_gray
from mvfcnn.objects.components import remove_small

#: a mask covering more than this share of the image is suspicious (an inverted threshold,
#: dark_is_foreground wrong, a mask with 0/1 swapped): warned about, not an error
MAX_FOREGROUND_FRACTION = 0.9



def disk(radius: int) -> np.ndarray:
    """Disc footprint; radius 1 is the 4-neighbour cross."""
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def gray_strips(image: np.ndarray, rows: int = 512) -> np.ndarray:
    """ITU-R 601 luminance of an RGB image in the input dtype, converted in row strips.

    Converting a 7000x8000 RGB image at once needs ~16 bytes per pixel of float scratch; strips
    keep it to the output plus one strip.
    """
    if image.ndim == 2:
        return np.asarray(image)

    out = np.empty(image.shape[:2], dtype=image.dtype)
    for r0 in range(0, image.shape[0], rows):
        out[r0:r0 + rows] = to_gray(np.asarray(image[r0:r0 + rows, :, :3]))
    return out


def _range_max(image: np.ndarray) -> float:
    if np.issubdtype(image.dtype, np.integer):
        return float(np.iinfo(image.dtype).max)
    return 1.0


def otsu_threshold(gray: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Otsu's threshold in [0, 1] of the image's range, from a 256-bin histogram (strip-wise)."""
    top = _range_max(gray)
    hist = np.zeros(256, dtype=np.int64)
    for r0 in range(0, gray.shape[0], 1024):
        strip = np.asarray(gray[r0:r0 + 1024])
        if strip.dtype != np.uint8:
            strip = np.clip((strip.astype(np.float32) / np.float32(top) * 255).round(), 0, 255)
            strip = strip.astype(np.uint8)
        if valid is not None:
            strip = strip[np.asarray(valid[r0:r0 + 1024])]
        hist += np.bincount(strip.ravel(), minlength=256)
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * levels) / np.maximum(weight0, 1)
    total = (hist * levels).sum()
    mean1 = (total - np.cumsum(hist * levels)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    if not np.any(between > 0):
        raise ValueError("the image is constant: no threshold separates two phases")
    return float(np.argmax(between[:-1]) + 0.5) / 255.0  # between bin t and t+1


def make_mask(lom_gray: np.ndarray, *, threshold: float | None, dark_is_foreground: bool = True,
              opening_radius: int = 1, closing_radius: int = 2,
              min_object_area: int = 80,
              valid: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Second-phase mask from the grey registered LOM; returns (mask, threshold used in [0, 1]).

    ``threshold`` None means Otsu (over ``valid`` pixels only, when given: the LOM footprint).
    Foreground is ``gray <= T`` (dark second phase) or ``> T``; never outside ``valid``.
    """
    if threshold is None:
        threshold = otsu_threshold(lom_gray, valid)
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    cut = threshold * _range_max(lom_gray)
    gray = np.asarray(lom_gray)
    mask = gray <= cut if dark_is_foreground else gray > cut
    if valid is not None:
        mask &= valid
    if opening_radius > 0:
        fp = disk(opening_radius)
        mask = ndimage.binary_erosion(mask, fp, border_value=1)
        mask = ndimage.binary_dilation(mask, fp, border_value=0)
    if closing_radius > 0:
        fp = disk(closing_radius)
        mask = ndimage.binary_dilation(mask, fp, border_value=0)
        mask = ndimage.binary_erosion(mask, fp, border_value=1)
    if min_object_area > 1:
        mask = remove_small(mask, min_object_area)
        mask = ~remove_small(~mask, min_object_area, connectivity=4, keep_border=True)
    if valid is not None:
        mask &= valid  # closing/hole filling must not reach into the no-data border either
    return mask, threshold


def mask_iou(mask: np.ndarray, labels: np.ndarray, ignore_index: int = 255,
             valid: np.ndarray | None = None) -> float:
    """IoU of the mask with the true second phase (labels not 0/ignore); ignore px excluded.

    ``valid`` restricts the comparison further (e.g. to where the LOM has data). NaN when
    undefined (no second phase in labels or mask where compared; :func:`iou_undefined_reason`
    says why): a 1.0 there would report a perfect mask that nothing was compared with.
    """
    valid = labels != ignore_index if valid is None else (labels != ignore_index) & valid
    truth = (labels != 0) & valid
    pred = np.asarray(mask, dtype=bool) & valid
    union = np.count_nonzero(truth | pred)
    return float(np.count_nonzero(truth & pred) / union) if union else float("nan")


def iou_undefined_reason(mask: np.ndarray, labels: np.ndarray, ignore_index: int = 255,
                         valid: np.ndarray | None = None) -> str:
    """Why :func:`mask_iou` is NaN, for the report."""
    labelled = labels != ignore_index if valid is None else (labels != ignore_index) & valid
    if not labelled.any():
        where = "" if valid is None else " where the LOM has data"
        return f"no labelled pixel{where} (all labels are ignore_index {ignore_index})"
    return "neither the labels nor the mask have second-phase pixels where compared"
