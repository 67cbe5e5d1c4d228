"""`mvfcnn classify`: what is in a new micrograph, and how much of each (paper §6's outlook).

The trained FCN-8s segments the image with the same sliding window as the workflow's
``predict`` rule (:func:`mvfcnn.inference.predict.predict_image`, settings from the model bundle),
and every object takes the max-voted class of its predicted pixels
(:func:`mvfcnn.evaluation.voting.vote`,
the ``vote`` rule's code; of each pixel's best non-matrix class under the bundle's
``inference.object_vote: second_phase``), so a sample classified here and in the workflow gets the
same classes.
Objects come from a supplied binary mask, from a registered LOM thresholded like the ``mask``
rule (:func:`mvfcnn.objects.masking.make_mask`), or, with neither, from the predicted second phase
itself (cleaned with the same opening/closing/minimum area).

Per image it writes, under ``OUT/<name>/``: ``objects.csv`` (one row per object),
``summary.csv`` (per class: count, area fraction, size quantiles), ``low_confidence.csv``
(objects whose vote share is below a threshold, least confident first, for expert review),
``overlay.png`` (full size) and ``overlay_preview.png`` (reduced, with a legend),
``classmap.ome.tif`` (tiled pyramidal OME-TIFF: pixel and object classes, pixel size in the
metadata, for napari / QuPath / Fiji), ``size_distribution.png`` and ``run.json`` (settings
and provenance), all by :mod:`mvfcnn.classify.outputs`. All inputs are checked before anything
is written.
"""


from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.classify.bundle import LoadedModel
from mvfcnn.classify.outputs import (
    Classification,
)
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image
from mvfcnn.data.prepare import stretch_intensity, stretch_range
from mvfcnn.data.registration import footprint, read_warp_metadata
from mvfcnn.evaluation.metrics import NOT_SEGMENTED_INDEX, NOT_SEGMENTED_LABEL, area_fractions
from mvfcnn.evaluation.voting import vote
from mvfcnn.inference.predict import predict_image
from mvfcnn.objects.components import find_objects
from mvfcnn.objects.components import object_table as geometry
from mvfcnn.objects.masking import gray_strips, make_mask

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
OBJECT_COLUMNS = ["object_id", "class", "class_name", "vote_share", "area_px", "area_um2",
                  "equivalent_diameter_px", "equivalent_diameter_um", "bbox_y0", "bbox_x0",
                  "bbox_y1", "bbox_x1", "centroid_y", "centroid_x", "n_foreground"]
QUANTILES = (10, 25, 50, 75, 90)
SUMMARY_COLUMNS = (["class", "class_name", "n_objects", "area_px", "area_um2", "area_fraction",
                    "pixel_fraction", "mean_vote_share"]
                   + [f"eqd_px_p{q}" for q in QUANTILES] + [f"eqd_um_p{q}" for q in QUANTILES])
#: predict_image arguments that are not inference settings
_RUNTIME_ARGS = {"model", "image", "device", "progress", "return_probs", "preprocess", "timings",
                 "second_phase_out"}


# ----------------------------------------------------------------------------------------------
# Inputs


def read_micrograph(path: str | Path, *, gray: bool = False,
                    value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A micrograph as (H, W) or (H, W, 3); unsupported formats and pixel values are InputErrors
    (accepted pixel values: :func:`mvfcnn.core.io.check_pixels` and
    :func:`mvfcnn.core.io.check_micrograph_integers`; ``value_range`` rescales to [0, 1])."""

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"unsupported image format {path.suffix or '(no suffix)'!r} "
                         f"(expected one of {list(IMAGE_SUFFIXES)})", path=path)
    image = read_image(path, gray=gray, value_range=value_range, micrograph=True)
    if image.dtype == bool:
        raise InputError("unsupported pixel type bool (a 1-bit image is a mask, not a "
                         "micrograph; expected 8/16-bit or float)", path=path)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    return image


def training_prepare(loaded: LoadedModel) -> dict[str, Any]:
    """The ``prepare`` settings the model's training images went through (the bundle's training
    record; empty for a bare model file or an older bundle)."""
    return dict((loaded.extra.get("training") or {}).get("prepare") or {})


def training_stretch(loaded: LoadedModel) -> tuple[float, float] | None:
    """The grey-value percentiles the model's SEM training images were stretched by
    (``prepare.intensity_percentiles``), or None. The ``prepare`` rule handles SEM images only
    (:func:`mvfcnn.core.layout.needs_prepare` routes them), so a LOM model saw none."""
    if loaded.modality == "lom":
        return None
    percentiles = training_prepare(loaded).get("intensity_percentiles")
    return None if percentiles is None else (float(percentiles[0]), float(percentiles[1]))


def _check_scale(loaded: LoadedModel, path: str | Path) -> None:
    upscale = int(training_prepare(loaded).get("upscale") or 1)
    if upscale != 1 and loaded.modality != "lom":
        raise InputError(f"the model was trained on images enlarged {upscale}x "
                         "(prepare.upscale): enlarge this image the same way (bilinear) and crop "
                         "any information band first, then pass --prepared", path=path)


def check_as_trained(image: np.ndarray, loaded: LoadedModel, path: str | Path) -> None:
    """Refuse an image :func:`as_trained` cannot make look like the training images: the model
    learned on images enlarged by ``prepare.upscale`` (classify would see structures at another
    scale), or the stretch meets a flat image."""
    _check_scale(loaded, path)
    percentiles = training_stretch(loaded)
    if percentiles is not None:
        stretch_range(image, percentiles, path=str(path))


def as_trained(image: np.ndarray, loaded: LoadedModel, path: str | Path
               ) -> tuple[np.ndarray, list[float] | None]:
    """``image`` with the grey-value stretch of the model's training images (``prepare``), and
    the two grey values stretched (None when the training images were not stretched). The
    information band is not cropped here: the caller gives the sample alone
    (:func:`check_as_trained` refuses what cannot be matched)."""
    _check_scale(loaded, path)  # the stretch refuses a flat image itself
    percentiles = training_stretch(loaded)
    if percentiles is None:
        return image, None
    return stretch_intensity(image, percentiles, path=str(path))


def read_mask_for(path: str | Path, shape: tuple[int, int], image_path: str | Path) -> np.ndarray:
    """A binary mask (> 0 = second phase) that must lie on the image's pixel grid."""

    mask = read_image(path, gray=True)
    if mask.shape[:2] != tuple(shape):
        raise InputError(f"mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size "
                         f"{shape[0]}x{shape[1]} ({image_path})", path=path)
    return np.asarray(mask) > 0


def read_lom_for(path: str | Path, shape: tuple[int, int],
                 image_path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey LOM, footprint or None) of a LOM registered onto the image grid (mvfcnn register)."""

    lom = gray_strips(read_image(path, micrograph=True))
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

    return find_objects(mask)


def objects_from_lom(lom_gray: np.ndarray, masking: dict[str, Any], *,
                     threshold: float | None, valid: np.ndarray | None = None,
                     path: str | Path | None = None) -> np.ndarray:
    """Threshold a registered LOM with the ``mask`` rule's clean-up, then label the objects.

    ``threshold`` None means Otsu, as ``masking.threshold: null`` does.
    """

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

    The binary prediction goes through :func:`mvfcnn.objects.masking.make_mask` (threshold between 0
    and 1), so speckle and pin holes are treated exactly as in a LOM mask.
    """

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
    """One row per object: max-voted class (``mvfcnn.evaluation.voting.vote``) and geometry in px
    and µm
    (``OBJECT_COLUMNS``); built on :func:`mvfcnn.objects.components.object_table`, the geometry
    table.

    µm columns are empty (NaN) without a pixel size.
    """

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


def class_summary(objects: pd.DataFrame, class_map: np.ndarray, classes: ClassSet,
                  pixel_size_um: float | None = None) -> pd.DataFrame:
    """Per class (matrix first, then each constituent, then not_segmented).

    ``area_fraction`` is object area / image area (the matrix row holds the pixels in no object,
    so the column sums to 1); ``pixel_fraction`` is the FCN's pixel share of that class (sums to
    1 over the classes; :func:`mvfcnn.evaluation.metrics.area_fractions` over every pixel, the
    function the
    cross-validation compares with the truth). Size quantiles are of the equivalent diameter.
    """
    total = int(class_map.shape[0] * class_map.shape[1])
    pixel_fraction = area_fractions(class_map, classes.num_classes)
    scale = np.nan if pixel_size_um is None else float(pixel_size_um)
    rows = []
    groups = [(i, classes.names[i]) for i in classes.foreground]
    groups.append((NOT_SEGMENTED_INDEX, NOT_SEGMENTED_LABEL))
    in_objects = int(objects["area_px"].sum())
    rows.append({"class": 0, "class_name": classes.names[0], "n_objects": 0,
                 "area_px": total - in_objects, "pixel_fraction": pixel_fraction[0]})
    for index, name in groups:
        part = objects[objects["class"] == index]
        eqd = equivalent_diameter(part["area_px"])  # unrounded
        row: dict[str, Any] = {
            "class": index, "class_name": name, "n_objects": len(part),
            "area_px": int(part["area_px"].sum()),
            "pixel_fraction": pixel_fraction[index] if index >= 0 else np.nan,
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


# ----------------------------------------------------------------------------------------------
# The whole analysis


def predict_class_map(image: np.ndarray, loaded: LoadedModel, *,
                      inference: dict[str, Any] | None = None, device: str = "auto",
                      progress: bool = True, second_phase_out: np.ndarray | None = None
                      ) -> np.ndarray:
    """The stitched class map, through the workflow's own inference function and settings
    (``second_phase_out``: see :func:`~mvfcnn.inference.predict.predict_image`)."""

    params = {**loaded.inference, **(inference or {})}
    # every setting of the config's `inference` section that predict_image knows (as the
    # predict rule passes them), so new options reach both the same way
    accepted = set(inspect.signature(predict_image).parameters) - _RUNTIME_ARGS
    settings = {k: v for k, v in params.items() if k in accepted}
    class_map = predict_image(loaded.model, image, device=device, progress=progress,
                              second_phase_out=second_phase_out, **settings)
    assert isinstance(class_map, np.ndarray)
    if int(class_map.max(initial=0)) >= loaded.classes.num_classes:
        raise InputError(f"model predicted class {int(class_map.max())} but its class set has "
                         f"only {loaded.classes.num_classes}", path=loaded.path)
    return class_map


def analyse(class_map: np.ndarray, object_ids: np.ndarray, classes: ClassSet, *,
            name: str = "image", object_source: str = "mask",
            pixel_size_um: float | None = None,
            low_confidence_threshold: float = 0.6,
            vote_map: np.ndarray | None = None) -> Classification:
    """Tables of one image from its class map and object ids (no network involved); objects
    vote on ``vote_map`` when given (``inference.object_vote: second_phase``), else on the
    class map."""
    if class_map.shape != object_ids.shape:
        raise InputError(f"class map {class_map.shape} and object ids {object_ids.shape} differ")
    voted = class_map if vote_map is None else vote_map
    if voted.shape != class_map.shape:
        raise InputError(f"vote map {voted.shape} and class map {class_map.shape} differ")
    objects = voted_object_table(voted, object_ids, classes, pixel_size_um)
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
    # loaded.inference holds every schema default, so the rule is always there
    vote_rule = {**loaded.inference, **(inference or {})}["object_vote"]
    vote_map = (np.empty(image.shape[:2], dtype=np.uint8) if vote_rule == "second_phase"
                else None)
    class_map = predict_class_map(image, loaded, inference=inference, device=device,
                                  progress=progress, second_phase_out=vote_map)
    if mask is not None:
        ids, source = objects_from_mask(mask), "mask"
    elif lom is not None:
        ids = objects_from_lom(lom, loaded.masking, threshold=threshold, valid=lom_valid)
        source = "lom"
    else:
        ids, source = objects_from_prediction(class_map, loaded.masking), "prediction"
    result = analyse(class_map, ids, loaded.classes, name=name, object_source=source,
                     pixel_size_um=pixel_size_um,
                     low_confidence_threshold=low_confidence_threshold, vote_map=vote_map)
    result.seconds = time.perf_counter() - start
    return result
