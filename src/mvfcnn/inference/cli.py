"""The command lines of ``mvfcnn predict`` and ``mvfcnn fit-class-offsets`` (the science is in
:mod:`~mvfcnn.inference.predict` and :mod:`~mvfcnn.inference.calibration`). torch is imported
when a verb runs, not when this module is."""

from __future__ import annotations

import sys
import time

import numpy as np

from mvfcnn.core.cli_args import verb_parser
from mvfcnn.core.config import json_arg
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, write_image, write_probabilities
from mvfcnn.inference.calibration import (
    OBJECTIVES,
    model_class_set,
    read_class_offsets,
    write_class_offsets,
)
from mvfcnn.inference.predict import inference_kwargs, predict_image


def _load_model(path: str):
    from mvfcnn.models.io import load_model  # lazy: torch

    return load_model(path)


def _parse_params(text: str) -> dict:
    return inference_kwargs(json_arg(text, "--params-json"))


def _threads_arg(parser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (e.g. {threads}; default: torch's, which an "
                             "inherited OMP_NUM_THREADS=1 would cut to one core)")


def _class_names(meta: dict, path: str) -> list[str]:
    return list(model_class_set(meta, path).names)


def predict(argv: list[str]) -> int:
    """`mvfcnn predict`: the stitched class map (and probabilities) of one micrograph."""
    parser = verb_parser(
        "predict",
        "Sliding-window FCN inference on one micrograph; writes the stitched uint8 "
        "class map (and optionally float16 (K, H, W) probabilities).", shared=("sample",))
    parser.add_argument("--model", required=True, help="model file (mvfcnn.models.save_model)")
    parser.add_argument("--image", required=True, help="SEM or registered LOM image")
    parser.add_argument("--params-json", required=True,
                        help="config 'inference' section as JSON: tile_size, overlap, batch_size, "
                             "precision (auto|fp32|bf16|fp16), tta_rotations, tta_flips, "
                             "fit_tiles")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    parser.add_argument("--out", required=True, help="class map TIFF to write (uint8)")
    parser.add_argument("--out-probs", default=None, help="optional float16 probabilities TIFF")
    parser.add_argument("--out-second-phase", default=None,
                        help="optional uint8 TIFF of each pixel's most probable non-matrix class "
                             "(what inference.object_vote second_phase votes on)")
    parser.add_argument("--class-offsets", default=None,
                        help="class offsets JSON (mvfcnn fit-class-offsets) added to the "
                             "log-probabilities before the argmax")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _threads_arg(parser)
    args = parser.parse_args(argv)
    from mvfcnn.core.runtime import announce, choose_precision, resolve_device, set_threads  # torch

    set_threads(args.threads)
    params = _parse_params(args.params_json)
    device = str(resolve_device(args.device))
    announce(f"predict {args.sample}", choose_precision(params["precision"], device), device)
    image = read_image(args.image, sample=args.sample, micrograph=True)
    model, meta = _load_model(args.model)
    offsets = (read_class_offsets(args.class_offsets, _class_names(meta, args.model))
               if args.class_offsets else None)
    second_phase = (np.empty(image.shape[:2], dtype=np.uint8) if args.out_second_phase
                    else None)
    start = time.perf_counter()
    try:
        result = predict_image(model, image, device=device, return_probs=bool(args.out_probs),
                               progress=not args.no_progress, decision_offsets=offsets,
                               second_phase_out=second_phase, **params)
    except InputError as err:
        raise InputError(str(err), sample=args.sample, path=args.image) from err
    seconds = time.perf_counter() - start
    class_map, probs = result if isinstance(result, tuple) else (result, None)
    write_image(args.out, class_map)
    if args.out_probs and probs is not None:
        write_probabilities(args.out_probs, probs)
    if second_phase is not None:
        write_image(args.out_second_phase, second_phase)
    megapixels = class_map.size / 1e6
    print(f"mvfcnn predict: {args.sample}: {megapixels:.2f} MP in {seconds:.1f} s "
          f"({megapixels / max(seconds, 1e-9):.3f} MP/s)", file=sys.stderr)
    return 0


def fit_class_offsets(argv: list[str]) -> int:
    """`mvfcnn fit-class-offsets`: per-class decision offsets of a trained FCN, fitted on the
    tile positions its training held out (:mod:`mvfcnn.inference.calibration`)."""
    parser = verb_parser("fit-class-offsets", fit_class_offsets.__doc__)
    parser.add_argument("--model", required=True, help="the run's final FCN stage")
    parser.add_argument("--tiles", required=True, help="the run's tile index (mvfcnn tile-index)")
    parser.add_argument("--params-json", required=True, help="config 'inference' section")
    parser.add_argument("--holdout-every", type=int, required=True,
                        help="fcn.val_holdout_every: which tile positions training held out "
                             "(0: none)")
    parser.add_argument("--objective", choices=OBJECTIVES, required=True)
    parser.add_argument("--out", required=True, help="class offsets JSON to write")
    _threads_arg(parser)
    args = parser.parse_args(argv)
    from mvfcnn.inference import held_out  # torch

    names, offsets, pixels = held_out.fit_offsets(
        args.model, args.tiles, inference=_parse_params(args.params_json),
        holdout_every=args.holdout_every, objective=args.objective, threads=args.threads)
    if pixels == 0:
        print(f"mvfcnn fit-class-offsets: {args.tiles}: no tile position was held out (every "
              f"{args.holdout_every}-th; 0 = validation off, or too few positions): offsets 0",
              file=sys.stderr)
    write_class_offsets(args.out, offsets, objective=args.objective, class_names=names,
                        fit_pixels=pixels)
    print(f"mvfcnn fit-class-offsets: {pixels} held-out pixels, offsets "
          + ", ".join(f"{n} {v:+.1f}" for n, v in zip(names, offsets, strict=True)),
          file=sys.stderr)
    return 0
