"""The command lines of the object verbs: ``mvfcnn mask`` and ``objects`` (the science is in
:mod:`~mvfcnn.objects.masking` and :mod:`~mvfcnn.objects.components`)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mvfcnn.core.cli_args import verb_parser
from mvfcnn.core.config import classes_from_json
from mvfcnn.core.errors import InputError, warn
from mvfcnn.core.io import read_image, read_labels, write_image, write_json, write_table
from mvfcnn.core.settings import with_defaults
from mvfcnn.data.registration import MIN_LOM_COVERAGE, footprint, read_warp_metadata
from mvfcnn.objects.components import (
    LABEL_OBJECTS,
    check_labels,
    count_objects,
    find_objects,
    label_objects,
    object_table,
    read_mask,
)
from mvfcnn.objects.masking import (
    MAX_FOREGROUND_FRACTION,
    gray_strips,
    iou_undefined_reason,
    make_mask,
    mask_iou,
)


def _masking_params(text: str, sample: str) -> dict[str, Any]:
    try:
        given = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise InputError(f"--params-json is not valid JSON ({err})", sample=sample) from err
    params = with_defaults("masking", given)
    t = params["threshold"]
    if t is not None and not (isinstance(t, int | float) and 0 <= t <= 1):
        raise InputError(f"masking.threshold must be null or in [0, 1], got {t!r}", sample=sample)
    return params


def mask(argv: list[str]) -> int:
    """`mvfcnn mask`: the binary second-phase mask of one sample, and its report."""
    parser = verb_parser("mask", "Binary second-phase mask: threshold the registered LOM (paper "
                         "section 4.1, \"Masking\").", shared=("sample",))
    parser.add_argument("--sem", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--lom", help="LOM registered onto the SEM grid")
    source.add_argument("--mask", help="a supplied binary mask on the SEM grid (> 0 = phase)")
    parser.add_argument("--labels", help="ground truth, to report the mask's IoU")
    parser.add_argument("--ignore-index", type=int, default=255)
    parser.add_argument("--params-json", default="{}", help="the config's masking section")
    parser.add_argument("--out-mask", required=True)
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-masked-sem", required=True)
    args = parser.parse_args(argv)
    sample = args.sample
    params = _masking_params(args.params_json, sample)
    sem = read_image(args.sem, sample=sample, gray=True, micrograph=True)
    src_path = args.lom or args.mask
    image = gray_strips(read_image(src_path, sample=sample, micrograph=bool(args.lom)))
    if image.shape[:2] != sem.shape[:2]:
        what = "registered LOM" if args.lom else "mask"
        raise InputError(f"{what} size {image.shape[0]}x{image.shape[1]} differs from the SEM "
                         f"size {sem.shape[0]}x{sem.shape[1]} ({args.sem})", sample=sample,
                         path=src_path)
    valid = None
    if args.lom:
        meta = read_warp_metadata(src_path)
        if meta is not None:
            valid = footprint(np.asarray(meta["lom_to_sem"], dtype=np.float64),
                              meta["lom_shape"], sem.shape)
        try:
            mask, threshold = make_mask(
                image, threshold=params["threshold"],
                dark_is_foreground=bool(params["dark_is_foreground"]),
                opening_radius=int(params["opening_radius"]),
                closing_radius=int(params["closing_radius"]),
                min_object_area=int(params["min_object_area"]), valid=valid)
        except ValueError as err:
            raise InputError(str(err), sample=sample, path=src_path) from err
        if not mask.any():
            raise InputError(f"empty mask: no second-phase pixel after thresholding at "
                             f"{threshold:.4f} and removing objects < "
                             f"{params['min_object_area']} px", sample=sample, path=src_path)
    else:
        mask, threshold = np.asarray(image) > 0, None
        if not mask.any():
            raise InputError("empty mask: the supplied mask has no pixel > 0", sample=sample,
                             path=src_path)
    del image
    fraction = float(np.count_nonzero(mask)) / mask.size
    coverage = None if valid is None else float(valid.mean())
    report: dict[str, Any] = {
        "sample": sample,
        "source": "lom" if args.lom else "mask",
        "threshold": None if threshold is None else round(threshold, 6),
        "foreground_fraction": round(fraction, 6),
        "n_components": count_objects(mask),
        "lom_coverage": None if coverage is None else round(coverage, 6),
        "warnings": [],
    }
    if fraction > MAX_FOREGROUND_FRACTION:
        report["warnings"].append(warn(
            "mask", f"the mask covers {100 * fraction:.1f} % of the image (second phase "
            "expected to be the minority: inverted threshold/dark_is_foreground, or a mask "
            "with 0 and 1 swapped?)", sample=sample, path=src_path))
    if coverage is not None and coverage < MIN_LOM_COVERAGE:
        report["warnings"].append(warn(
            "mask", f"the registered LOM covers only {100 * coverage:.1f} % of the SEM "
            f"(< {100 * MIN_LOM_COVERAGE:.0f} %): registration probably failed; no objects are "
            "found outside it", sample=sample, path=src_path))
    if args.labels:
        labels = read_labels(args.labels, sample=sample)
        if labels.shape[:2] != sem.shape[:2]:
            raise InputError(f"labels size {labels.shape[0]}x{labels.shape[1]} differs from the "
                             f"SEM size {sem.shape[0]}x{sem.shape[1]} ({args.sem})",
                             sample=sample, path=args.labels)
        # "iou" where the LOM has data (elsewhere no mask can be right); "iou_all" everywhere;
        # null with a reason when undefined
        for key, where in (("iou", valid), ("iou_all", None)):
            value = mask_iou(mask, labels, args.ignore_index, where)
            report[key] = None if np.isnan(value) else round(value, 6)
            if report[key] is None:
                report[f"{key}_undefined"] = iou_undefined_reason(mask, labels,
                                                                  args.ignore_index, where)
    masked = np.where(mask, sem, np.zeros((), dtype=sem.dtype))
    write_image(args.out_mask, mask.astype(np.uint8))
    write_image(args.out_masked_sem, masked)
    write_json(args.out_json, report)
    return 0


def objects(argv: list[str]) -> int:
    """`mvfcnn objects`: the objects table and object-id image of one sample."""
    parser = verb_parser("objects", "Second-phase objects: connected components of the mask, "
                         "with their ground-truth class.", shared=("sample", "classes_json"))
    parser.add_argument("--mask", help="binary second-phase mask; without it, objects are the "
                        "connected components of each second-phase class of --labels")
    parser.add_argument("--labels", help="ground-truth label image on the SEM grid")
    parser.add_argument("--min-area", type=int, default=0,
                        help="objects from labels: drop components smaller than this (px)")
    parser.add_argument("--label-objects", choices=LABEL_OBJECTS, default="per_class",
                        help="objects from labels: components per class, or of all second-phase "
                        "pixels together (majority class)")
    parser.add_argument("--image-class", help="class name every object of this image gets")
    parser.add_argument("--out-table", required=True)
    parser.add_argument("--out-ids", required=True)
    args = parser.parse_args(argv)
    sample = args.sample
    try:
        classes = classes_from_json(args.classes_json)
    except InputError as err:
        raise InputError(str(err), sample=sample) from err
    if args.image_class:
        try:
            classes.index_of(args.image_class)
        except InputError as err:
            raise InputError(f"--image-class: {err}", sample=sample) from err
    if not args.mask and not args.labels:
        raise InputError("objects need a --mask or --labels", sample=sample)
    labels: Any = None
    mask = read_mask(args.mask, sample) if args.mask else None
    if args.labels:
        labels = read_labels(args.labels, sample=sample)
        check_labels(labels, classes, sample=sample, path=args.labels,
                     shape=None if mask is None else mask.shape)
    ids = find_objects(mask) if mask is not None else label_objects(
        labels, classes, min_area=args.min_area, mode=args.label_objects)
    del mask
    table = object_table(ids, labels, classes, image_class=args.image_class or None)
    write_image(args.out_ids, ids)
    write_table(args.out_table, table)
    return 0
