"""The command lines of the data verbs: ``mvfcnn synthesize``, ``prepare`` and ``register``
(the science is in :mod:`~mvfcnn.data.synthetic`, :mod:`~mvfcnn.data.prepare` and
:mod:`~mvfcnn.data.registration`)."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from mvfcnn.core.cli_args import verb_parser
from mvfcnn.core.config import classes_from_json, json_arg
from mvfcnn.core.errors import InputError, warn
from mvfcnn.core.io import read_image, write_image, write_json
from mvfcnn.data import registration
from mvfcnn.data.prepare import prepare_sample
from mvfcnn.data.registration import (
    MIN_LOM_COVERAGE,
    MODELS,
    NoContrastError,
    footprint,
    read_truth,
    warp_to_grid,
)
from mvfcnn.data.registration_search import corner_rms_error
from mvfcnn.data.synthetic import generate_sample


def synthesize(argv: list[str]) -> int:
    """`mvfcnn synthesize`: one sample of the embedded synthetic dataset."""
    parser = verb_parser("synthesize", "The embedded synthetic dataset: SEM/LOM pairs of "
                         "ferrite + textured second-phase objects.",
                         shared=("sample", "classes_json"))
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--params-json", required=True, help="the config's `synthetic` section")
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)

    try:
        cfg = json_arg(args.params_json, "--params-json")
        classes = classes_from_json(args.classes_json)
    except InputError as err:
        raise InputError(str(err), sample=args.sample) from err
    start = time.perf_counter()
    generate_sample(args.sample, cfg, classes, args.seed, args.outdir)
    print(f"synthesize: wrote {args.outdir}/{{sem,lom,labels}}.tif + transform.json for "
          f"{args.sample!r} (seed {args.seed}) in {time.perf_counter() - start:.2f} s",
          file=sys.stderr)
    return 0


def prepare(argv: list[str]) -> int:
    """`mvfcnn prepare`: a released micrograph (and labels) as the workflow reads them."""
    parser = verb_parser("prepare", "Raw micrographs as the workflow needs them: grey, without "
                         "the information band, checked labels.",
                         shared=("sample", "classes_json"))
    parser.add_argument("--image", required=True, help="micrograph as released (any format)")
    parser.add_argument("--labels", default=None, help="label map as released (optional)")
    parser.add_argument("--crop-bottom", type=int, default=0, help="information band rows")
    parser.add_argument("--scale-bar-um", type=float, default=None,
                        help="length of the scale bar printed in the band (µm)")
    parser.add_argument("--upscale", type=int, default=1,
                        help="enlarge image (bilinear) and labels (replicated) by this factor")
    parser.add_argument("--intensity-percentiles", type=float, nargs=2, default=None,
                        metavar=("LOW", "HIGH"),
                        help="stretch these grey-value percentiles to the full range")
    parser.add_argument("--out-image", required=True)
    parser.add_argument("--out-labels", default=None,
                        help="checked labels; without --labels all pixels are ignore")
    parser.add_argument("--out-json", required=True)
    args = parser.parse_args(argv)
    if args.labels and not args.out_labels:
        raise InputError("--labels needs --out-labels", sample=args.sample)
    classes = classes_from_json(args.classes_json)
    image, labels, record = prepare_sample(args.sample, args.image, args.labels, classes,
                                           crop_bottom=args.crop_bottom,
                                           scale_bar_um=args.scale_bar_um,
                                           upscale=args.upscale,
                                           intensity_percentiles=args.intensity_percentiles)
    # uncompressed: the tile loader memory-maps these
    write_image(args.out_image, image, compression=None)
    if args.out_labels:
        if labels is None:  # unlabelled (split predict): every pixel is ignore
            labels = np.full(image.shape, classes.ignore_index, dtype=np.uint8)
        write_image(args.out_labels, labels, compression=None)
    write_json(args.out_json, asdict(record))
    return 0


def _registration_params(text: str, sample: str) -> dict[str, Any]:
    try:
        params = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise InputError(f"--params-json is not valid JSON ({err})", sample=sample) from err
    params = {"model": "similarity", "max_side": 1024, "max_rms_error_px": 1.0, **params}
    if params["model"] not in MODELS:
        raise InputError(f"registration.model must be one of {list(MODELS)}, got "
                         f"{params['model']!r}", sample=sample)
    return params


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def register(argv: list[str]) -> int:
    """`mvfcnn register`: the LOM -> SEM transform of one sample, its score, the warped LOM."""
    parser = verb_parser("register", "Register the LOM onto the SEM grid: estimate the LOM -> "
                         "SEM transform and warp the LOM.", shared=("sample",))
    parser.add_argument("--sem", required=True)
    parser.add_argument("--lom", required=True)
    parser.add_argument("--truth", help="transform.json with the true 'lom_to_sem' matrix")
    parser.add_argument("--params-json", default="{}", help="the config's registration section")
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-lom", required=True)
    args = parser.parse_args(argv)
    _setup_logging()
    log = registration.log  # the log lines name the registration module, as they always did
    sample = args.sample
    params = _registration_params(args.params_json, sample)
    sem = read_image(args.sem, sample=sample, gray=True, micrograph=True)
    lom = read_image(args.lom, sample=sample, micrograph=True)
    truth = read_truth(args.truth, sample) if args.truth else None
    if min(lom.shape[:2]) < 16 or min(sem.shape[:2]) < 16:
        raise InputError(f"image too small to register (SEM {sem.shape}, LOM {lom.shape})",
                         sample=sample, path=args.lom)
    try:
        reg = registration.register(sem, lom, model=params["model"],
                                    max_side=int(params["max_side"]))
    except NoContrastError as err:
        raise InputError(str(err), sample=sample,
                         path=args.sem if err.which == "sem" else args.lom) from err
    except ValueError as err:
        raise InputError(f"registration failed: {err}", sample=sample, path=args.lom) from err
    report: dict[str, Any] = {
        "sample": sample,
        "model": params["model"],
        "matrix": reg.matrix.tolist(),
        "score_before": round(reg.score_before, 6),
        "score_after": round(reg.score_after, 6),
        "contrast": "inverted" if reg.contrast_sign < 0 else "same",
        "sem_shape": list(sem.shape[:2]),
        "lom_shape": list(lom.shape[:2]),
        "coverage": round(float(footprint(reg.matrix, lom.shape, sem.shape).mean()), 6),
        "warnings": [],
    }
    if report["coverage"] < MIN_LOM_COVERAGE:
        report["warnings"].append(warn(
            "register", f"the registered LOM covers only {100 * report['coverage']:.1f} % of the "
            f"SEM (< {100 * MIN_LOM_COVERAGE:.0f} %): registration probably failed, or the LOM "
            "shows another area", sample=sample, path=args.lom))
    if truth is not None:
        rms = corner_rms_error(reg.matrix, truth, sem.shape)
        limit = float(params["max_rms_error_px"])
        report.update(rms_error_px=round(rms, 4), truth_matrix=truth.tolist(),
                      max_rms_error_px=limit, passed=bool(rms <= limit))
        if rms > limit:
            report["warnings"].append(warn(
                "register", f"registration corner RMS error {rms:.2f} px exceeds the limit "
                f"{limit:.2f} px (outputs written; check them)", sample=sample, path=args.lom))
        else:
            log.info("sample %r: corner RMS error %.3f px", sample, rms)
    log.info("sample %r: NCC %.3f -> %.3f", sample, reg.score_before, reg.score_after)
    warped = warp_to_grid(lom, reg.matrix, sem.shape)
    # The transform travels with the image, so masking can tell "no LOM data" from matrix.
    write_image(args.out_lom, warped, metadata={"sample": sample, "lom_to_sem": reg.matrix.tolist(),
                                                "lom_shape": list(lom.shape[:2])})
    write_json(args.out_json, report)
    return 0
