"""`mvfcnn classify`: what is in a new micrograph, and how much of each (paper §6's outlook).

The trained FCN-8s segments the image with the same sliding window as the workflow's
``predict`` rule (:func:`mvfcnn.inference.predict_image`, settings from the model bundle), and
every object takes the max-voted class of its predicted pixels (:func:`mvfcnn.voting.vote`,
the ``vote`` rule's code), so a sample classified here and in the workflow gets the same classes.
Objects come from a supplied binary mask, from a registered LOM thresholded like the ``mask``
rule (:func:`mvfcnn.masking.make_mask`), or, with neither, from the predicted second phase
itself (cleaned with the same opening/closing/minimum area).

Per image it writes, under ``OUT/<name>/``: ``objects.csv`` (one row per object),
``summary.csv`` (per class: count, area fraction, size quantiles), ``low_confidence.csv``
(objects whose vote share is below a threshold, least confident first, for expert review),
``overlay.png`` (full size) and ``overlay_preview.png`` (reduced, with a legend),
``classmap.ome.tif`` (tiled pyramidal OME-TIFF: pixel and object classes, pixel size in the
metadata, for napari / QuPath / Fiji), ``size_distribution.png`` and ``run.json`` (settings
and provenance). All inputs are checked before anything is written.
"""

from __future__ import annotations

import argparse
import inspect
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.bundle import LoadedModel
from mvfcnn.config import ClassSet
from mvfcnn.errors import InputError
from mvfcnn.metrics import NOT_SEGMENTED_INDEX, NOT_SEGMENTED_LABEL

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
OBJECT_COLUMNS = ["object_id", "class", "class_name", "vote_share", "area_px", "area_um2",
                  "equivalent_diameter_px", "equivalent_diameter_um", "bbox_y0", "bbox_x0",
                  "bbox_y1", "bbox_x1", "centroid_y", "centroid_x", "n_foreground"]
QUANTILES = (10, 25, 50, 75, 90)
SUMMARY_COLUMNS = (["class", "class_name", "n_objects", "area_px", "area_um2", "area_fraction",
                    "pixel_fraction", "mean_vote_share"]
                   + [f"eqd_px_p{q}" for q in QUANTILES] + [f"eqd_um_p{q}" for q in QUANTILES])
OUTPUT_FILES = ("objects.csv", "summary.csv", "low_confidence.csv", "overlay.png",
                "overlay_preview.png", "classmap.ome.tif", "size_distribution.png", "run.json")
PREVIEW_MAX_SIDE = 1024
#: object-class channel value of a not-segmented object (no class index can be 255)
NOT_SEGMENTED_VALUE = 255
NOT_SEGMENTED_RGB = (255, 255, 255)
OVERLAY_ALPHA = 0.45
OME_TILE = 256
OME_MIN_SIDE = 512
_STRIP = 512
#: predict_image arguments that are not inference settings
_RUNTIME_ARGS = {"model", "image", "device", "progress", "return_probs", "preprocess", "timings"}


@dataclass
class Classification:
    """Everything classify learned about one image (the tables are what gets written)."""

    name: str
    class_map: np.ndarray          # (H, W) uint8 predicted pixel classes
    object_ids: np.ndarray         # (H, W) uint32 object ids, 0 = matrix
    objects: pd.DataFrame          # OBJECT_COLUMNS
    summary: pd.DataFrame          # SUMMARY_COLUMNS
    low_confidence: pd.DataFrame   # OBJECT_COLUMNS, vote_share < threshold, ascending
    object_source: str             # "mask" | "lom" | "prediction"
    pixel_size_um: float | None
    low_confidence_threshold: float
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# Inputs


def read_micrograph(path: str | Path, *, gray: bool = False,
                    value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A micrograph as (H, W) or (H, W, 3); unsupported formats and pixel values are InputErrors
    (accepted pixel values: :func:`mvfcnn.io.check_pixels`; ``value_range`` of a float image)."""
    from mvfcnn.io import read_image

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"unsupported image format {path.suffix or '(no suffix)'!r} "
                         f"(expected one of {list(IMAGE_SUFFIXES)})", path=path)
    image = read_image(path, gray=gray, value_range=value_range)
    if image.dtype == bool:
        raise InputError("unsupported pixel type bool (a 1-bit image is a mask, not a "
                         "micrograph; expected 8/16-bit or float)", path=path)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    return image


def read_mask_for(path: str | Path, shape: tuple[int, int], image_path: str | Path) -> np.ndarray:
    """A binary mask (> 0 = second phase) that must lie on the image's pixel grid."""
    from mvfcnn.io import read_image

    mask = read_image(path, gray=True)
    if mask.shape[:2] != tuple(shape):
        raise InputError(f"mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size "
                         f"{shape[0]}x{shape[1]} ({image_path})", path=path)
    return np.asarray(mask) > 0


def read_lom_for(path: str | Path, shape: tuple[int, int],
                 image_path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey LOM, footprint or None) of a LOM registered onto the image grid (mvfcnn register)."""
    from mvfcnn.io import read_image
    from mvfcnn.masking import gray_strips
    from mvfcnn.registration import footprint, read_warp_metadata

    lom = gray_strips(read_image(path))
    if lom.shape[:2] != tuple(shape):
        raise InputError(f"LOM size {lom.shape[0]}x{lom.shape[1]} differs from the image size "
                         f"{shape[0]}x{shape[1]} ({image_path}); register it onto the image "
                         "first (mvfcnn register)", path=path)
    meta = read_warp_metadata(str(path))
    valid = None
    if meta is not None:
        valid = footprint(np.asarray(meta["lom_to_sem"], dtype=np.float64), meta["lom_shape"],
                          shape)
    return lom, valid


# ----------------------------------------------------------------------------------------------
# Objects


def objects_from_mask(mask: np.ndarray) -> np.ndarray:
    """uint32 object ids of a binary mask (8-connected, exactly as the ``objects`` rule)."""
    from mvfcnn.objects import find_objects

    return find_objects(mask)


def objects_from_lom(lom_gray: np.ndarray, masking: dict[str, Any], *,
                     threshold: float | None, valid: np.ndarray | None = None,
                     path: str | Path | None = None) -> np.ndarray:
    """Threshold a registered LOM with the ``mask`` rule's clean-up, then label the objects.

    ``threshold`` None means Otsu, as ``masking.threshold: null`` does.
    """
    from mvfcnn.masking import make_mask

    try:
        mask, _ = make_mask(lom_gray, threshold=threshold,
                            dark_is_foreground=bool(masking["dark_is_foreground"]),
                            opening_radius=int(masking["opening_radius"]),
                            closing_radius=int(masking["closing_radius"]),
                            min_object_area=int(masking["min_object_area"]), valid=valid)
    except ValueError as err:
        raise InputError(str(err), path=path) from err
    return objects_from_mask(mask)


def objects_from_prediction(class_map: np.ndarray, masking: dict[str, Any]) -> np.ndarray:
    """Objects = the predicted second phase (class > 0), cleaned like a thresholded LOM.

    The binary prediction goes through :func:`mvfcnn.masking.make_mask` (threshold between 0
    and 1), so speckle and pin holes are treated exactly as in a LOM mask.
    """
    from mvfcnn.masking import make_mask

    foreground = (np.asarray(class_map) > 0).view(np.uint8)
    mask, _ = make_mask(foreground, threshold=0.5 / 255.0, dark_is_foreground=False,
                        opening_radius=int(masking["opening_radius"]),
                        closing_radius=int(masking["closing_radius"]),
                        min_object_area=int(masking["min_object_area"]))
    return objects_from_mask(mask)


# ----------------------------------------------------------------------------------------------
# Tables


def equivalent_diameter(area: np.ndarray | pd.Series) -> np.ndarray:
    """Diameter of the disc with the same area (the usual grain-size measure)."""
    return np.sqrt(4.0 * np.asarray(area, dtype=np.float64) / math.pi)


def voted_object_table(class_map: np.ndarray, object_ids: np.ndarray, classes: ClassSet,
                       pixel_size_um: float | None = None) -> pd.DataFrame:
    """One row per object: max-voted class (``mvfcnn.voting.vote``) and geometry in px and µm
    (``OBJECT_COLUMNS``); built on :func:`mvfcnn.objects.object_table`, the geometry table.

    µm columns are empty (NaN) without a pixel size.
    """
    from mvfcnn.objects import object_table as geometry
    from mvfcnn.voting import vote

    votes = vote(class_map, object_ids, classes.num_classes, classes=classes)
    shape = geometry(object_ids, None, classes)
    frame = shape.merge(votes, on="object_id", how="inner", validate="one_to_one")
    out = pd.DataFrame({
        "object_id": frame["object_id"].astype(np.int64),
        "class": frame["pred_class"].astype(np.int64),
        "class_name": frame["pred_class_name"],
        "vote_share": frame["vote_share"].round(6),
        "area_px": frame["area"].astype(np.int64),
    })
    scale = np.nan if pixel_size_um is None else float(pixel_size_um)
    out["area_um2"] = (out["area_px"] * scale * scale).round(6)
    out["equivalent_diameter_px"] = equivalent_diameter(out["area_px"]).round(4)
    out["equivalent_diameter_um"] = (out["equivalent_diameter_px"] * scale).round(6)
    for column in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "centroid_y", "centroid_x"):
        out[column] = frame[column]
    out["n_foreground"] = frame["n_foreground"].astype(np.int64)
    return out[OBJECT_COLUMNS]


def pixel_counts(class_map: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels predicted as each class, counted in row strips."""
    counts = np.zeros(max(256, num_classes), dtype=np.int64)
    for r0 in range(0, class_map.shape[0], _STRIP * 4):
        counts += np.bincount(np.asarray(class_map[r0:r0 + _STRIP * 4]).ravel(), minlength=256)
    return counts[:num_classes]


def class_summary(objects: pd.DataFrame, class_map: np.ndarray, classes: ClassSet,
                  pixel_size_um: float | None = None) -> pd.DataFrame:
    """Per class (matrix first, then each constituent, then not_segmented).

    ``area_fraction`` is object area / image area (the matrix row holds the pixels in no object,
    so the column sums to 1); ``pixel_fraction`` is the FCN's pixel share of that class (sums to
    1 over the classes). Size quantiles are of the equivalent diameter.
    """
    total = int(class_map.shape[0] * class_map.shape[1])
    pixels = pixel_counts(class_map, classes.num_classes)
    scale = np.nan if pixel_size_um is None else float(pixel_size_um)
    rows = []
    groups = [(i, classes.names[i]) for i in classes.foreground]
    groups.append((NOT_SEGMENTED_INDEX, NOT_SEGMENTED_LABEL))
    in_objects = int(objects["area_px"].sum())
    rows.append({"class": 0, "class_name": classes.names[0], "n_objects": 0,
                 "area_px": total - in_objects, "pixel_fraction": pixels[0] / total})
    for index, name in groups:
        part = objects[objects["class"] == index]
        eqd = equivalent_diameter(part["area_px"])  # unrounded
        row: dict[str, Any] = {
            "class": index, "class_name": name, "n_objects": len(part),
            "area_px": int(part["area_px"].sum()),
            "pixel_fraction": pixels[index] / total if index >= 0 else np.nan,
            "mean_vote_share": part["vote_share"].mean() if len(part) else np.nan,
        }
        values = np.percentile(eqd, QUANTILES) if len(eqd) else [np.nan] * len(QUANTILES)
        for q, value in zip(QUANTILES, values, strict=True):
            row[f"eqd_px_p{q}"] = value
            row[f"eqd_um_p{q}"] = value * scale
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["area_um2"] = frame["area_px"] * scale * scale
    frame["area_fraction"] = frame["area_px"] / total
    frame = frame.reindex(columns=SUMMARY_COLUMNS)
    floats = [c for c in SUMMARY_COLUMNS if c not in ("class", "class_name", "n_objects",
                                                      "area_px")]
    frame[floats] = frame[floats].astype(np.float64).round(6)
    return frame


def low_confidence(objects: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Objects with vote share < ``threshold``, least confident first (then larger first).

    Not-segmented objects (share 0) lead the list: the network saw no second phase in them.
    """
    part = objects[objects["vote_share"] < threshold]
    return part.sort_values(["vote_share", "area_px", "object_id"],
                            ascending=[True, False, True], kind="mergesort").reset_index(drop=True)


def object_class_map(object_ids: np.ndarray, objects: pd.DataFrame) -> np.ndarray:
    """(H, W) uint8: each object's voted class, 0 outside objects, 255 = not segmented."""
    n = int(objects["object_id"].max()) if len(objects) else 0
    lut = np.zeros(n + 1, dtype=np.uint8)
    values = objects["class"].to_numpy()
    lut[objects["object_id"].to_numpy()] = np.where(values < 0, NOT_SEGMENTED_VALUE, values)
    out = np.empty(object_ids.shape, dtype=np.uint8)
    for r0 in range(0, object_ids.shape[0], _STRIP):
        out[r0:r0 + _STRIP] = lut[np.asarray(object_ids[r0:r0 + _STRIP])]
    return out


# ----------------------------------------------------------------------------------------------
# The whole analysis


def predict_class_map(image: np.ndarray, loaded: LoadedModel, *,
                      inference: dict[str, Any] | None = None, device: str = "auto",
                      progress: bool = True) -> np.ndarray:
    """The stitched class map, through the workflow's own inference function and settings."""
    from mvfcnn.inference import predict_image

    params = {**loaded.inference, **(inference or {})}
    # every setting of the config's `inference` section that predict_image knows (as the
    # predict rule passes them), so new options reach both the same way
    accepted = set(inspect.signature(predict_image).parameters) - _RUNTIME_ARGS
    settings = {k: v for k, v in params.items() if k in accepted}
    class_map = predict_image(loaded.model, image, device=device, progress=progress, **settings)
    assert isinstance(class_map, np.ndarray)
    if int(class_map.max(initial=0)) >= loaded.classes.num_classes:
        raise InputError(f"model predicted class {int(class_map.max())} but its class set has "
                         f"only {loaded.classes.num_classes}", path=loaded.path)
    return class_map


def analyse(class_map: np.ndarray, object_ids: np.ndarray, classes: ClassSet, *,
            name: str = "image", object_source: str = "mask",
            pixel_size_um: float | None = None,
            low_confidence_threshold: float = 0.6) -> Classification:
    """Tables of one image from its class map and object ids (no network involved)."""
    if class_map.shape != object_ids.shape:
        raise InputError(f"class map {class_map.shape} and object ids {object_ids.shape} differ")
    objects = voted_object_table(class_map, object_ids, classes, pixel_size_um)
    return Classification(
        name=name, class_map=class_map, object_ids=object_ids, objects=objects,
        summary=class_summary(objects, class_map, classes, pixel_size_um),
        low_confidence=low_confidence(objects, low_confidence_threshold),
        object_source=object_source, pixel_size_um=pixel_size_um,
        low_confidence_threshold=float(low_confidence_threshold))


def classify_image(image: np.ndarray, loaded: LoadedModel, *, mask: np.ndarray | None = None,
                   lom: np.ndarray | None = None, lom_valid: np.ndarray | None = None,
                   threshold: float | None = None, name: str = "image",
                   pixel_size_um: float | None = None, low_confidence_threshold: float = 0.6,
                   inference: dict[str, Any] | None = None, device: str = "auto",
                   progress: bool = True) -> Classification:
    """Segment ``image``, find its objects (mask > LOM > prediction) and max-vote each.

    ``mask``/``lom`` must already be on the image grid (see :func:`read_mask_for`,
    :func:`read_lom_for`); ``threshold`` applies to ``lom`` (None = Otsu).
    """
    start = time.perf_counter()
    class_map = predict_class_map(image, loaded, inference=inference, device=device,
                                  progress=progress)
    if mask is not None:
        ids, source = objects_from_mask(mask), "mask"
    elif lom is not None:
        ids = objects_from_lom(lom, loaded.masking, threshold=threshold, valid=lom_valid)
        source = "lom"
    else:
        ids, source = objects_from_prediction(class_map, loaded.masking), "prediction"
    result = analyse(class_map, ids, loaded.classes, name=name, object_source=source,
                     pixel_size_um=pixel_size_um,
                     low_confidence_threshold=low_confidence_threshold)
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------
# Pictures and the OME-TIFF


def _display_lut(image: np.ndarray) -> np.ndarray:
    """uint8 -> uint8 lookup table: :func:`mvfcnn.io.contrast_stretch` of the 256 grey levels by
    the percentiles of a ~1 MP subsample (a whole large image is never copied)."""
    from mvfcnn.data import to_uint8
    from mvfcnn.io import contrast_stretch

    step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 1e6)))
    sample = to_uint8(np.asarray(image[::step, ::step]))
    levels = np.arange(256, dtype=np.float32)
    return contrast_stretch(levels, sample, top=255.0).round().astype(np.uint8)


def overlay(image: np.ndarray, object_ids: np.ndarray, object_classes: np.ndarray,
            classes: ClassSet, *, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGB uint8: the micrograph with each object tinted in its class colour, outlined in full
    colour; not-segmented objects white. Built in row strips (no float image-size copies)."""
    from mvfcnn.data import to_uint8

    lut = np.zeros((256, 3), dtype=np.uint16)
    lut[:classes.num_classes] = np.array(classes.rgb(), dtype=np.uint16)
    lut[NOT_SEGMENTED_VALUE] = NOT_SEGMENTED_RGB
    stretch = _display_lut(image)
    weight = int(round(alpha * 256))
    height, width = object_ids.shape
    out = np.empty((height, width, 3), dtype=np.uint8)
    for r0 in range(0, height, _STRIP):
        r1 = min(height, r0 + _STRIP)
        base = stretch[to_uint8(np.asarray(image[r0:r1]))]
        base = np.repeat(base[..., None], 3, axis=2) if base.ndim == 2 else base[..., :3]
        lo, hi = max(0, r0 - 1), min(height, r1 + 1)
        ids = np.asarray(object_ids[lo:hi])
        edge = np.zeros(ids.shape, dtype=bool)
        edge[1:] |= ids[1:] != ids[:-1]
        edge[:-1] |= ids[:-1] != ids[1:]
        edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        core = slice(r0 - lo, r0 - lo + (r1 - r0))
        inside = ids[core] > 0
        edge = edge[core] & inside
        colour = lut[np.asarray(object_classes[r0:r1])]
        mixed = base.astype(np.uint16)
        mixed[inside] = (mixed[inside] * (256 - weight) + colour[inside] * weight) >> 8
        mixed[edge] = colour[edge]
        out[r0:r1] = mixed.astype(np.uint8)
    return out


def pyramid_levels(height: int, width: int, min_side: int = OME_MIN_SIDE) -> int:
    """Levels of a 2x pyramid from full size down to a longest side <= ``min_side``."""
    levels, side = 1, max(height, width)
    while side > min_side:
        side = (side + 1) // 2
        levels += 1
    return levels


def write_ome_tiff(path: str | Path, planes: np.ndarray, *, channel_names: list[str],
                   pixel_size_um: float | None = None, name: str | None = None,
                   tile: int = OME_TILE, min_side: int = OME_MIN_SIDE) -> None:
    """(C, H, W) uint8 label planes as a tiled, pyramidal OME-TIFF (sub-resolutions in SubIFDs).

    Lower levels take every second pixel (nearest neighbour: labels must not be averaged).
    The pixel size goes into OME ``PhysicalSizeX/Y`` (µm) and the TIFF resolution tags.
    """
    import tifffile

    from mvfcnn.io import atomic_path

    _, height, width = planes.shape
    levels = pyramid_levels(height, width, min_side)
    metadata: dict[str, Any] = {"axes": "CYX", "Channel": {"Name": list(channel_names)}}
    if name:
        metadata["Name"] = name
    options: dict[str, Any] = {"tile": (tile, tile), "compression": "zlib",
                               "photometric": "minisblack"}
    resolution: dict[str, Any] = {}
    if pixel_size_um is not None:
        metadata.update({"PhysicalSizeX": float(pixel_size_um), "PhysicalSizeXUnit": "µm",
                         "PhysicalSizeY": float(pixel_size_um), "PhysicalSizeYUnit": "µm"})
        per_cm = 1e4 / float(pixel_size_um)
        resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp, tifffile.TiffWriter(
            tmp, bigtiff=planes.nbytes > 2**31 - 2**25, ome=True) as tif:
        tif.write(planes, subifds=levels - 1, metadata=metadata, **resolution, **options)
        level = planes
        for _ in range(levels - 1):
            level = np.ascontiguousarray(level[:, ::2, ::2])
            tif.write(level, subfiletype=1, **options)


def size_distribution_png(objects: pd.DataFrame, classes: ClassSet, *, title: str,
                          pixel_size_um: float | None = None) -> bytes:
    """PNG bytes: one histogram of equivalent diameters per constituent, in its colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    column, unit = (("equivalent_diameter_um", "µm") if pixel_size_um is not None
                    else ("equivalent_diameter_px", "px"))
    values = objects.loc[objects["class"] > 0, column].to_numpy(dtype=np.float64)
    bins = (np.histogram_bin_edges(values, bins=min(30, max(5, int(math.sqrt(len(values))))))
            if len(values) else np.linspace(0, 1, 6))
    panels = classes.foreground
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.4 * rows + 0.7), squeeze=False,
                             sharex=True)
    rgb = classes.rgb()
    for ax, index in zip(axes.ravel(), panels, strict=False):
        data = objects.loc[objects["class"] == index, column].to_numpy(dtype=np.float64)
        colour = np.array(rgb[index]) / 255.0
        label = f"n = {len(data)}"
        if len(data):
            ax.hist(data, bins=bins, color=colour, edgecolor="0.25", linewidth=0.6)
            label += f", median {np.median(data):.3g} {unit}"
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.set_xlim(bins[0], bins[-1])
            ax.text(0.5, 0.5, "no objects", ha="center", va="center", fontsize=8,
                    color="0.4", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_title(f"{classes.names[index]}\n{label}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"equivalent diameter ({unit})", fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("objects", fontsize=7)
    missed = int((objects["class"] == NOT_SEGMENTED_INDEX).sum())
    fig.suptitle(f"{title}: size distribution per class"
                 + (f" ({missed} object(s) not segmented)" if missed else ""), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def preview_png(picture: np.ndarray, summary: pd.DataFrame, classes: ClassSet, *,
                title: str, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """PNG bytes: the overlay reduced to <= ``max_side`` px with a legend of object counts and
    area fractions (the report's and README's picture; overlay.png stays full size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    step = max(1, math.ceil(max(picture.shape[:2]) / max_side))
    small = picture[::step, ::step]
    height, width = small.shape[:2]
    rgb = dict(zip(classes.indices, classes.rgb(), strict=True))
    rgb[NOT_SEGMENTED_INDEX] = NOT_SEGMENTED_RGB
    handles = []
    for row in summary.itertuples(index=False):
        if row[0] == 0:
            continue
        label = f"{row.class_name}: {row.n_objects} ({100 * row.area_fraction:.1f} % area)"
        handles.append(Patch(facecolor=np.array(rgb[row[0]]) / 255.0, edgecolor="0.4",
                             label=label))
    scale = 6.0 / max(height, width)  # inches per pixel: the longer side is 6 in
    img_w, img_h = width * scale, height * scale
    top, bottom = 0.35, 0.1 + 0.19 * math.ceil(len(handles) / 2)
    fig = plt.figure(figsize=(img_w + 0.2, img_h + top + bottom))
    total = img_h + top + bottom
    ax = fig.add_axes((0.1 / (img_w + 0.2), bottom / total, img_w / (img_w + 0.2), img_h / total))
    ax.imshow(small, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10, y=1 - 0.06 / total, va="top")
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False,
               borderaxespad=0.1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write_outputs(result: Classification, image: np.ndarray, classes: ClassSet,
                  outdir: str | Path, *, info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Render everything in memory first, then write each file atomically (run.json last)."""
    from mvfcnn.io import atomic_path, write_image, write_json, write_table

    outdir = Path(outdir)
    paths = {name: outdir / name for name in OUTPUT_FILES}
    objects_map = object_class_map(result.object_ids, result.objects)
    picture = overlay(image, result.object_ids, objects_map, classes)
    sizes = size_distribution_png(result.objects, classes, title=result.name,
                                  pixel_size_um=result.pixel_size_um)
    preview = preview_png(picture, result.summary, classes,
                          title=f"{result.name}: {len(result.objects)} objects")
    write_table(paths["objects.csv"], result.objects)
    write_table(paths["summary.csv"], result.summary)
    write_table(paths["low_confidence.csv"], result.low_confidence)
    write_image(paths["overlay.png"], picture)
    del picture
    planes = np.stack([result.class_map, objects_map])
    del objects_map
    write_ome_tiff(paths["classmap.ome.tif"], planes, channel_names=["pixel_class",
                                                                     "object_class"],
                   pixel_size_um=result.pixel_size_um, name=result.name)
    del planes
    for key, data in (("overlay_preview.png", preview), ("size_distribution.png", sizes)):
        with atomic_path(paths[key]) as tmp:
            tmp.write_bytes(data)
    counts = result.objects["class_name"].value_counts()
    write_json(paths["run.json"], {
        "name": result.name,
        "shape": list(result.class_map.shape),
        "object_source": result.object_source,
        "pixel_size_um": result.pixel_size_um,
        "low_confidence_threshold": result.low_confidence_threshold,
        "n_objects": len(result.objects),
        "n_low_confidence": len(result.low_confidence),
        "objects_per_class": {name: int(counts.get(name, 0))
                              for name in [*classes.names[1:], NOT_SEGMENTED_LABEL]},
        "classes": classes.to_dict()["classes"],
        "ome_tiff": {"channels": ["pixel_class", "object_class"],
                     "object_class_not_segmented": NOT_SEGMENTED_VALUE,
                     "levels": pyramid_levels(*result.class_map.shape), "tile": OME_TILE},
        "seconds": round(result.seconds, 3),
        **(info or {}),
    })
    return paths


# ----------------------------------------------------------------------------------------------
# CLI


def _threshold(text: str | None) -> float | str | None:
    if text is None:
        return None
    if text.lower() == "otsu":
        return "otsu"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--threshold must be a grey level in [0, 1] or 'otsu', "
                         f"got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"--threshold must be in [0, 1], got {value}")
    return value


def output_names(images: list[str], names: list[str] | None) -> list[str]:
    """One output folder name per image: --names, else the file name without suffix(es)."""
    if names is not None:
        if len(names) != len(images):
            raise InputError(f"--names gives {len(names)} name(s) for {len(images)} image(s)")
        chosen = list(names)
    else:
        chosen = []
        for image in images:
            stem = Path(image).name
            for suffix in (*IMAGE_SUFFIXES, ".ome"):
                if stem.lower().endswith(suffix):
                    stem = stem[:-len(suffix)]
            chosen.append(stem or Path(image).name)
    dupes = sorted({n for n in chosen if chosen.count(n) > 1})
    if dupes:
        raise InputError(f"two images would write to the same folder {dupes}; give --names")
    bad = [n for n in chosen if not n or "/" in n or n in (".", "..")]
    if bad:
        raise InputError(f"invalid output name(s) {bad}")
    return chosen


def _per_image(values: list[str] | None, images: list[str], option: str) -> list[str | None]:
    if values is None:
        return [None] * len(images)
    if len(values) != len(images):
        raise InputError(f"{option} gives {len(values)} file(s) for {len(images)} image(s); "
                         "give one per image, in the same order")
    return list(values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvfcnn classify",
        description="Classify new micrographs with a trained model (bundle): sliding-window "
                    "FCN inference, objects from a mask / thresholded registered LOM / the "
                    "prediction, max-voting; writes per-object and per-class tables, a "
                    "low-confidence list, an overlay, a pyramidal OME-TIFF class map and a "
                    "size-distribution plot under OUT/<name>/.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="micrograph(s): TIFF/PNG, 8/16-bit grey or RGB (give them "
                             "before --mask/--lom, which take one file per image)")
    parser.add_argument("--model", required=True,
                        help="model_bundle.pt (mvfcnn bundle) or a bare fcn8s.pt")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mask", nargs="+", help="binary second-phase mask(s) on the image "
                                                  "grid, one per image (> 0 = phase)")
    source.add_argument("--lom", nargs="+", help="LOM image(s) registered onto the image grid, "
                                                 "one per image, thresholded into objects")
    parser.add_argument("--threshold", default=None,
                        help="LOM grey level in [0, 1] or 'otsu' (default: the bundle's "
                             "masking.threshold; null there = Otsu)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--names", nargs="+", help="output sub-folder per image "
                                                   "(default: the image file name)")
    parser.add_argument("--float-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="value range of float images (default: floats must be in [0, 1]; "
                             "integer images always use their bit depth)")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="µm per pixel (default: the bundle's pixel size, else none)")
    parser.add_argument("--low-confidence", type=float, default=0.6,
                        help="objects with a vote share below this are listed for review "
                             "(default 0.6)")
    parser.add_argument("--classes-json", default=None,
                        help="expected class set (JSON); must match the model's; its colours "
                             "are used for display")
    parser.add_argument("--tile-size", type=int, help="override the bundle's inference tile size")
    parser.add_argument("--overlap", type=int, help="override the bundle's tile overlap")
    parser.add_argument("--batch-size", type=int, help="override the bundle's batch size")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                        help="override the bundle's inference precision (auto: bf16 where the "
                             "device computes it natively, else fp32)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; an inherited "
                             "OMP_NUM_THREADS=1 would cut it to one core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from mvfcnn.runtime import announce, choose_precision, resolve_device, set_threads

    set_threads(args.threads)
    from mvfcnn.bundle import load_for_inference
    from mvfcnn.config import classes_from_json
    from mvfcnn.io import check_writable
    from mvfcnn.progress import progress

    # --- check everything before the first output is written
    if args.threshold is not None and not args.lom:
        raise InputError("--threshold applies to --lom only")
    threshold = _threshold(args.threshold)
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError(f"--pixel-size must be > 0, got {args.pixel_size}")
    if not 0.0 <= args.low_confidence <= 1.0:
        raise InputError(f"--low-confidence must be in [0, 1], got {args.low_confidence}")
    names = output_names(args.images, args.names)
    if args.float_range is not None and not args.float_range[0] < args.float_range[1]:
        raise InputError(f"--float-range needs LO < HI, got {args.float_range}")
    value_range = tuple(args.float_range) if args.float_range else None
    for name in names:  # every output location, before the model is loaded
        for file in OUTPUT_FILES:
            check_writable(Path(args.out) / name / file)
    masks = _per_image(args.mask, args.images, "--mask")
    loms = _per_image(args.lom, args.images, "--lom")
    classes = None
    if args.classes_json:
        classes = classes_from_json(args.classes_json)
    loaded = load_for_inference(args.model, classes)
    overrides = {k: v for k, v in {"tile_size": args.tile_size, "overlap": args.overlap,
                                   "batch_size": args.batch_size,
                                   "precision": args.precision}.items() if v is not None}
    inference = {**loaded.inference, **overrides}
    if inference["tile_size"] < 32 or not 0 <= inference["overlap"] < inference["tile_size"]:
        raise InputError(f"need tile size >= 32 and 0 <= overlap < tile size, got "
                         f"{inference['tile_size']} / {inference['overlap']}")
    device = str(resolve_device(args.device))
    choice = choose_precision(str(inference["precision"]), device)
    pixel = args.pixel_size if args.pixel_size is not None else loaded.pixel_size_um
    if threshold is None:
        threshold = loaded.masking.get("threshold")
    threshold = None if threshold == "otsu" else threshold
    gray = loaded.modality == "sem"
    for image_path, mask_path, lom_path in zip(args.images, masks, loms, strict=True):
        image = read_micrograph(image_path, gray=gray, value_range=value_range)
        if mask_path:
            read_mask_for(mask_path, image.shape[:2], image_path)
        if lom_path:
            read_lom_for(lom_path, image.shape[:2], image_path)
        del image

    # --- classify, one image at a time
    announce("classify", choice, device)
    bar = progress(len(args.images), "classify", unit="image", enabled=not args.no_progress)
    for image_path, name, mask_path, lom_path in zip(args.images, names, masks, loms,
                                                     strict=True):
        image = read_micrograph(image_path, gray=gray, value_range=value_range)
        mask = read_mask_for(mask_path, image.shape[:2], image_path) if mask_path else None
        lom, valid = (read_lom_for(lom_path, image.shape[:2], image_path) if lom_path
                      else (None, None))
        try:
            result = classify_image(image, loaded, mask=mask, lom=lom, lom_valid=valid,
                                    threshold=threshold, name=name, pixel_size_um=pixel,
                                    low_confidence_threshold=args.low_confidence,
                                    inference=inference, device=device,
                                    progress=not args.no_progress)
        except InputError as err:
            if err.path is None:
                raise InputError(str(err), path=lom_path or image_path) from err
            raise
        del mask, lom, valid
        info = {"image": str(image_path), "mask": mask_path, "lom": lom_path,
                "lom_threshold": threshold if lom_path else None,
                "inference": inference, "precision_choice": choice.as_dict(),
                "model": loaded.provenance()}
        write_outputs(result, image, loaded.classes, Path(args.out) / name, info=info)
        counts = ", ".join(f"{row.class_name} {row.n_objects}"
                           for row in result.summary.itertuples() if row.n_objects)
        megapixels = result.class_map.size / 1e6
        print(f"mvfcnn classify: {name}: {len(result.objects)} objects ({counts or 'none'}), "
              f"{len(result.low_confidence)} below vote share {args.low_confidence}; "
              f"{megapixels:.2f} MP in {result.seconds:.1f} s", file=sys.stderr)
        bar.update(1)
    bar.close()
    return 0
