"""The files `mvfcnn classify` writes for one image: overlay pictures, the OME-TIFF, the size
distribution plot, the tables and run.json (:func:`write_outputs`).

:mod:`mvfcnn.classify.pipeline` decides what is in the image (checks, objects, votes, tables); this
module
only renders and writes those results, so a new output format changes nothing in the analysis.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.io import (
    atomic_path,
    contrast_stretch,
    to_uint8,
    write_image,
    write_json,
    write_table,
)
from mvfcnn.evaluation.metrics import NOT_SEGMENTED_INDEX, NOT_SEGMENTED_LABEL


@dataclass
class Classification:
    """Everything classify learned about one image (the tables are what gets written; it
    lives here, beside the writer, so that classify imports its outputs and not the reverse)."""

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


OUTPUT_FILES = ("objects.csv", "summary.csv", "low_confidence.csv", "overlay.png",
                "overlay_preview.png", "classmap.ome.tif", "size_distribution.png", "run.json")
PREVIEW_MAX_SIDE = 1024
#: object-class channel value of a not-segmented object (no class index can be 255)
NOT_SEGMENTED_VALUE = 255
NOT_SEGMENTED_RGB = (255, 255, 255)
OVERLAY_ALPHA = 0.45
OME_TILE = 256
OME_MIN_SIDE = 512
_STRIP = 512  # rows per strip: image-size arrays are built strip by strip


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


def _display_lut(image: np.ndarray) -> np.ndarray:
    """uint8 -> uint8 lookup table: :func:`mvfcnn.core.io.contrast_stretch` of the 256 grey levels
    by the percentiles of a ~1 MP subsample (a whole large image is never copied)."""

    step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 1e6)))
    sample = to_uint8(np.asarray(image[::step, ::step]))
    levels = np.arange(256, dtype=np.float32)
    return contrast_stretch(levels, sample, top=255.0).round().astype(np.uint8)


def overlay(image: np.ndarray, object_ids: np.ndarray, object_classes: np.ndarray,
            classes: ClassSet, *, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGB uint8: the micrograph with each object tinted in its class colour, outlined in full
    colour; not-segmented objects white. Built in row strips (no float image-size copies)."""

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

