"""Raw micrographs as the workflow needs them: grey, without the information band, checked labels.

Real releases are not the clean TIFFs the rest of the workflow reads: SEM images come as JPEG
stored as RGB with (almost) equal channels, the microscope prints an information band (scale
bar, kV, magnification) below the sample, and label maps are sometimes saved as RGB. The
``prepare`` step turns every such sample, through sample-sheet columns any dataset can use, into
an uncompressed grey TIFF (memory-mapped by the tile loader) and a checked label TIFF on exactly
the same grid, and measures the pixel size from the scale bar where its length is known:

* ``crop_bottom``: rows of the information band below the sample; cropped from the image. The
  label map must then have the image's grid (or already be cropped to it): anything else is an
  error naming both files.
* ``upscale`` (config ``prepare.upscale``, an integer): the image is enlarged bilinearly and the
  labels by replication, so structures a few pixels wide (MetalDAM's matrix walls) span more
  than the FCN-8s output stride of 8 px. Every label pixel becomes upscale² identical pixels, so
  pixel metrics on the enlarged grid weigh each original pixel by the share of its sub-pixels
  predicted correctly. The pixel size is divided accordingly.
* ``scale_bar_um``: the length of the scale bar printed in the band, in µm. The bar is the longest
  horizontal run of foreground pixels (contrasting with the band's background) shorter than half
  the band; pixel size = length / run. No band, or no bar found: the pixel size is unknown.
* ``intensity_percentiles`` (config ``prepare.intensity_percentiles``, ``[low, high]`` or none):
  each SEM image's grey values are stretched linearly so its ``low`` and ``high`` percentiles (of
  the sample, the band excluded) become the ends of its range (0 and the integer dtype's maximum;
  floats 0 and 1). LOM images (registered, not prepared) are left as they are. Real SEM
  sessions differ in brightness and contrast (MetalDAM's image medians run from 39 to 117 of
  255); the network then sees the same phase at about the same grey value in every image, at
  training and at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import (
    check_micrograph_integers,
    read_image,
    read_labels,
)
from mvfcnn.objects.components import check_labels

#: a scale bar shorter than this many pixels is not trusted (text strokes are shorter)
MIN_BAR_PX = 24


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` did to one sample (written beside the images as JSON)."""

    sample: str
    source_image: str
    source_labels: str | None
    height: int
    width: int
    crop_bottom: int
    upscale: int
    scale_bar_um: float | None
    scale_bar_px: int | None
    pixel_size_um: float | None
    class_pixels: list[int] | None
    intensity_warning: str | None = None
    intensity_percentiles: list[float] | None = None
    intensity_range: list[float] | None = None


def scale_bar_pixels(band: np.ndarray) -> int | None:
    """Length in px of the scale bar in an information band (grey), or None if none is found.

    Only rows of the band's plain background (dark or bright) are searched, so micrograph rows
    above the band do not count; text strokes are shorter than :data:`MIN_BAR_PX`.
    """
    if band.size == 0:
        return None
    band = np.asarray(band, dtype=np.float32)
    row_median = np.median(band, axis=1)
    background_is_dark = float(np.median(row_median)) < 128.0
    plain = row_median < 40.0 if background_is_dark else row_median > 215.0
    foreground = (band > 128.0 if background_is_dark else band < 128.0)[plain]
    if foreground.size == 0:
        return None
    steps = np.diff(np.pad(foreground.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    best = 0
    limit = band.shape[1] // 2
    for row in steps:
        runs = np.flatnonzero(row == -1) - np.flatnonzero(row == 1)
        runs = runs[runs < limit]
        if runs.size:
            best = max(best, int(runs.max()))
    return best if best >= MIN_BAR_PX else None


def prepare_sample(
    sample: str,
    image_path: str,
    labels_path: str | None,
    classes: ClassSet,
    *,
    crop_bottom: int = 0,
    scale_bar_um: float | None = None,
    upscale: int = 1,
    intensity_percentiles: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Prepared]:
    """Read, crop, check and enlarge one sample; returns the grey image, labels and the record.

    ``class_pixels`` counts the labels before enlarging (comparable with a release's counts).
    """

    image = np.asarray(read_image(image_path, sample=sample, gray=True, mmap=False))
    # the micrograph rules, with the warning kept for the record
    intensity_warning = check_micrograph_integers(image, value_range=None, sample=sample,
                                                  path=image_path)
    if crop_bottom < 0 or crop_bottom >= image.shape[0]:
        raise InputError(f"crop_bottom {crop_bottom} must be in [0, {image.shape[0]}) for an "
                         f"image of {image.shape[0]} rows", sample=sample, path=image_path)
    band = image[image.shape[0] - crop_bottom:] if crop_bottom else image[:0]
    image = image[: image.shape[0] - crop_bottom]
    labels = None
    counts = None
    if labels_path:
        labels = np.asarray(read_labels(labels_path, sample=sample))
        if labels.shape != image.shape:
            raise InputError(
                f"label grid {labels.shape[0]}x{labels.shape[1]} differs from the image "
                f"{image_path!r} ({image.shape[0]}x{image.shape[1]} after cropping "
                f"{crop_bottom} band rows)", sample=sample, path=labels_path)
        check_labels(labels, classes, sample=sample, path=labels_path)
        counts = np.bincount(labels.ravel(), minlength=classes.num_classes)[
            : classes.num_classes].tolist()
    if upscale < 1 or int(upscale) != upscale:
        raise InputError(f"upscale must be a positive integer, got {upscale!r}", sample=sample)
    bar_px = scale_bar_pixels(band) if scale_bar_um else None
    pixel_size = (round(float(scale_bar_um) / bar_px / upscale, 6)
                  if bar_px and scale_bar_um else None)
    stretched_from = None
    if intensity_percentiles is not None:
        image, stretched_from = stretch_intensity(image, intensity_percentiles, sample=sample,
                                                  path=image_path)
    if upscale > 1:
        image = enlarge_image(image, upscale)
        if labels is not None:
            labels = np.repeat(np.repeat(labels, upscale, axis=0), upscale, axis=1)
    record = Prepared(sample, str(image_path), str(labels_path) if labels_path else None,
                      int(image.shape[0]), int(image.shape[1]), int(crop_bottom), int(upscale),
                      float(scale_bar_um) if scale_bar_um else None, bar_px, pixel_size, counts,
                      intensity_warning,
                      list(map(float, intensity_percentiles)) if intensity_percentiles else None,
                      stretched_from)
    return image, labels, record


def stretch_range(image: np.ndarray, percentiles: tuple[float, float] | list[float], *,
                  sample: str = "", path: str = "") -> tuple[float, float]:
    """The grey values at ``percentiles`` (low, high) of ``image``: what
    :func:`stretch_intensity` maps to the ends of the range. A flat image (both equal) cannot be
    stretched: an error naming the file, since the network would see one grey value."""
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"intensity percentiles must satisfy 0 <= low < high <= 100, got "
                         f"{list(percentiles)}", sample=sample, path=path)
    lo, hi = (float(v) for v in np.percentile(image, [low, high]))
    if hi <= lo:
        raise InputError(f"cannot stretch the grey values: the {low:g}th and {high:g}th "
                         f"percentiles are both {lo:g} (a flat image)", sample=sample, path=path)
    return lo, hi


def stretch_intensity(image: np.ndarray, percentiles: tuple[float, float] | list[float], *,
                      sample: str = "", path: str = "") -> tuple[np.ndarray, list[float]]:
    """The image stretched linearly so its ``percentiles`` (low, high) span its dtype's range
    (floats: [0, 1]), clipped; returns it with the two grey values that were stretched.

    Computed in float64 in place: one image-sized buffer (8 bytes per pixel).
    """
    lo, hi = stretch_range(image, percentiles, sample=sample, path=path)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        bottom, top = float(info.min), float(info.max)
    else:
        bottom, top = 0.0, 1.0
    out = image.astype(np.float64)
    np.subtract(out, lo, out=out)
    np.multiply(out, (top - bottom) / (hi - lo), out=out)
    np.add(out, bottom, out=out)
    np.clip(out, bottom, top, out=out)
    if np.issubdtype(image.dtype, np.integer):
        np.rint(out, out=out)
    return out.astype(image.dtype, copy=False), [lo, hi]


def enlarge_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear enlargement by an integer factor, in the image's dtype (pixel centres kept)."""
    from skimage.transform import resize

    height, width = image.shape
    out = resize(image, (height * factor, width * factor), order=1, mode="edge",
                 preserve_range=True, anti_aliasing=False)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)
