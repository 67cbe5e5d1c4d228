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
and provenance), all by :mod:`mvfcnn.classify_outputs`. All inputs are checked before anything
is written.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.bundle import LoadedModel, load_for_inference
from mvfcnn.classify_outputs import (  # noqa: F401  (re-exported: output names tests use)
    NOT_SEGMENTED_VALUE,
    OUTPUT_FILES,
    Classification,
    pyramid_levels,
    write_ome_tiff,
    write_outputs,
)
from mvfcnn.config import ClassSet, classes_from_json
from mvfcnn.errors import InputError
from mvfcnn.inference import predict_image
from mvfcnn.io import check_writable, read_image
from mvfcnn.masking import gray_strips, make_mask
from mvfcnn.metrics import NOT_SEGMENTED_INDEX, NOT_SEGMENTED_LABEL, area_fractions
from mvfcnn.objects import find_objects
from mvfcnn.objects import object_table as geometry
from mvfcnn.progress import progress
from mvfcnn.registration import footprint, read_warp_metadata
from mvfcnn.runtime import announce, choose_precision, resolve_device, set_threads
from mvfcnn.voting import vote

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
OBJECT_COLUMNS = ["object_id", "class", "class_name", "vote_share", "area_px", "area_um2",
                  "equivalent_diameter_px", "equivalent_diameter_um", "bbox_y0", "bbox_x0",
                  "bbox_y1", "bbox_x1", "centroid_y", "centroid_x", "n_foreground"]
QUANTILES = (10, 25, 50, 75, 90)
SUMMARY_COLUMNS = (["class", "class_name", "n_objects", "area_px", "area_um2", "area_fraction",
                    "pixel_fraction", "mean_vote_share"]
                   + [f"eqd_px_p{q}" for q in QUANTILES] + [f"eqd_um_p{q}" for q in QUANTILES])
#: predict_image arguments that are not inference settings
_RUNTIME_ARGS = {"model", "image", "device", "progress", "return_probs", "preprocess", "timings"}


# ----------------------------------------------------------------------------------------------
# Inputs


def read_micrograph(path: str | Path, *, gray: bool = False,
                    value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A micrograph as (H, W) or (H, W, 3); unsupported formats and pixel values are InputErrors
    (accepted pixel values: :func:`mvfcnn.io.check_pixels` and
    :func:`mvfcnn.io.check_micrograph_integers`; ``value_range`` rescales to [0, 1])."""

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

    The binary prediction goes through :func:`mvfcnn.masking.make_mask` (threshold between 0
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
    """One row per object: max-voted class (``mvfcnn.voting.vote``) and geometry in px and µm
    (``OBJECT_COLUMNS``); built on :func:`mvfcnn.objects.object_table`, the geometry table.

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
    1 over the classes; :func:`mvfcnn.metrics.area_fractions` over every pixel, the function the
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
                      progress: bool = True) -> np.ndarray:
    """The stitched class map, through the workflow's own inference function and settings."""

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
    bad = [n for n in chosen if not n or "/" in n or n in (".", "..")
           or any(ord(c) < 32 or ord(c) == 127 for c in n)]  # a newline names no folder
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
                        help="value range of the images, rescaled to [0, 1] (default: floats "
                             "must be in [0, 1], 8/16-bit integers use their bit depth, other "
                             "integer types are refused)")
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
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation: average the softmax over the 8 flips and "
                             "rotations of each window (8x the network time); --no-tta turns "
                             "it off (default: the bundle's inference.tta_rotations/tta_flips)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; an inherited "
                             "OMP_NUM_THREADS=1 would cut it to one core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)

    set_threads(args.threads)

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
    if args.tta is not None:
        overrides.update(tta_rotations=args.tta, tta_flips=args.tta)
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
