"""The command lines of the per-sample evaluation verbs: ``mvfcnn vote``, ``fit-object-offsets``
and ``evaluate``
(the science is in :mod:`~mvfcnn.evaluation.voting` and :mod:`~mvfcnn.evaluation.evaluate`).
They run once per sample, so they load no cross-validation or figure code
(:mod:`~mvfcnn.evaluation.crossval_cli` holds those verbs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mvfcnn.core.cli_args import verb_parser
from mvfcnn.core.config import classes_from_json
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, read_probabilities, write_table
from mvfcnn.evaluation.evaluate import PathLike, merge_votes, pixel_confusion, write_evaluation
from mvfcnn.evaluation.voting import (
    OBJECT_OFFSET_OBJECTIVES,
    object_evidence,
    object_scores,
    object_second_phase_map,
    offset_votes,
    read_object_offsets,
    second_phase_map,
    vote_table,
    write_object_offsets,
)
from mvfcnn.evaluation.voting import fit_object_offsets as fit_object_offsets_on


def vote(argv: list[str]) -> int:
    """`mvfcnn vote`: each object of one sample takes the class most of its pixels got."""
    parser = verb_parser(
        "vote",
        "Max-vote the predicted classes inside each object (matrix pixels do not "
        "vote; ties -> lowest class index; no non-matrix pixel -> not_segmented).",
        shared=("classes_json", "sample"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", help="stitched uint8 class map (TIFF)")
    source.add_argument("--probs", help="float16 (K, H, W) probabilities (mvfcnn predict "
                                        "--out-probs): vote each pixel's best non-matrix class "
                                        "after --object-offsets")
    parser.add_argument("--object-offsets", default=None,
                        help="object offsets JSON (mvfcnn fit-object-offsets); with --probs")
    parser.add_argument("--objects-ids", required=True, help="uint32 object-id image (TIFF)")
    parser.add_argument("--objects", required=True, help="objects table CSV (object_id column)")
    parser.add_argument("--out", required=True, help="votes CSV to write")
    args = parser.parse_args(argv)
    if args.object_offsets and not args.probs:
        parser.error("--object-offsets needs --probs")

    classes = classes_from_json(args.classes_json)
    ids = read_image(args.objects_ids, sample=args.sample)
    if args.probs:
        probs = read_probabilities(args.probs, num_classes=classes.num_classes,
                                   sample=args.sample)
        if args.object_offsets:
            table, edges = read_object_offsets(args.object_offsets, list(classes.names))
            pred = object_second_phase_map(probs, ids, table, edges)
        else:
            pred = second_phase_map(probs)
        pred_path = args.probs
    else:
        pred, pred_path = read_image(args.pred, sample=args.sample), args.pred
    if pred.ndim != 2 or ids.ndim != 2:
        raise InputError("prediction and object-id images must be 2-D", sample=args.sample)
    if pred.shape != ids.shape:
        raise InputError(f"prediction {pred.shape} and object ids {ids.shape} differ in size",
                         sample=args.sample, path=args.objects_ids)
    objects = _read_csv(args.objects, args.sample)
    try:
        votes = vote_table(pred, ids, objects, classes, sample=args.sample)
    except InputError as err:
        if err.sample is None:
            raise InputError(str(err), sample=args.sample, path=pred_path) from err
        raise
    write_table(args.out, votes)
    return 0


def fit_object_offsets(argv: list[str]) -> int:
    """`mvfcnn fit-object-offsets`: per-class offsets for the second-phase object vote, fitted
    on labelled objects (in the workflow: the other folds' test objects)."""
    parser = verb_parser("fit-object-offsets", fit_object_offsets.__doc__,
                         shared=("classes_json",))
    parser.add_argument("--samples", nargs="+", required=True)
    parser.add_argument("--probs", nargs="+", required=True,
                        help="per sample: float16 (K, H, W) probabilities (predict --out-probs)")
    parser.add_argument("--objects-ids", nargs="+", required=True,
                        help="per sample: uint32 object-id image")
    parser.add_argument("--objects", nargs="+", required=True,
                        help="per sample: objects table CSV (object_id, true_class)")
    parser.add_argument("--objective", choices=OBJECT_OFFSET_OBJECTIVES, required=True)
    parser.add_argument("--recall-slack", type=float, default=None,
                        help="accuracy_recall_floor: how far a class's recall may fall")
    parser.add_argument("--size-edges", nargs="*", type=float, default=[],
                        help="object areas (px) where a new row of offsets starts")
    parser.add_argument("--out", required=True, help="object offsets JSON to write")
    args = parser.parse_args(argv)
    lengths = {len(args.samples), len(args.probs), len(args.objects_ids), len(args.objects)}
    if len(lengths) != 1:
        raise InputError("--samples, --probs, --objects-ids and --objects need one entry per "
                         f"sample; got {len(args.samples)}, {len(args.probs)}, "
                         f"{len(args.objects_ids)} and {len(args.objects)}")

    classes = classes_from_json(args.classes_json)
    evidence = []
    for sample, probs_path, ids_path, objects_path in zip(
            args.samples, args.probs, args.objects_ids, args.objects, strict=True):
        probs = read_probabilities(probs_path, num_classes=classes.num_classes, sample=sample)
        ids = read_image(ids_path, sample=sample)
        evidence.append(object_evidence(probs, ids, _read_csv(objects_path, sample),
                                        sample=sample))
    edges = args.size_edges
    offsets = fit_object_offsets_on(evidence, args.objective, classes.num_classes,
                                    recall_slack=args.recall_slack, size_edges=edges)
    true, voted = offset_votes(evidence, offsets, edges)
    before = object_scores(*offset_votes(evidence, np.zeros_like(offsets), edges),
                           classes.num_classes)
    after = object_scores(true, voted, classes.num_classes)
    slack = args.recall_slack if args.objective == "accuracy_recall_floor" else None
    write_object_offsets(args.out, offsets, objective=args.objective, recall_slack=slack,
                         size_edges=edges, class_names=list(classes.names), extra={
                             "fit_samples": list(args.samples), "fit_objects": int(true.size),
                             "fit_accuracy": [round(before[0], 6), round(after[0], 6)],
                             "fit_mean_recall": [round(before[1], 6), round(after[1], 6)]})
    bounds = [0.0, *edges]
    rows = "; ".join(f"objects from {lo:g} px: " + ", ".join(
        f"{n} {v:+.1f}" for n, v in zip(classes.names, row, strict=True))
        for lo, row in zip(bounds, offsets, strict=True))
    print(f"mvfcnn fit-object-offsets: {true.size} objects of {len(args.samples)} sample(s); "
          f"offsets {rows}; accuracy {before[0]:.3f} -> {after[0]:.3f}, mean recall "
          f"{before[1]:.3f} -> {after[1]:.3f}", file=sys.stderr)
    return 0


def _read_csv(path: PathLike, sample: str) -> pd.DataFrame:
    if not Path(path).exists():
        raise InputError("file not found", sample=sample, path=path)
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"cannot read table ({err})", sample=sample, path=path) from err


def evaluate(argv: list[str]) -> int:
    """`mvfcnn evaluate`: a run's pixel and object metrics over its test samples."""
    parser = verb_parser(
        "evaluate",
        "Pixel metrics (one confusion matrix over all test images) and object "
        "metrics (max-voted objects) of one MVFCNN model over the test samples. "
        "Every per-sample list (--labels, --preds, --votes, --objects) follows the "
        "order of --samples; instead of a list, --pred-dir/--votes-dir/--objects-dir "
        "name a folder holding {sample}.tif / {sample}.csv.", shared=("classes_json",))
    parser.add_argument("--method", default="mvfcnn", help="method name (default mvfcnn)")
    parser.add_argument("--variant", default=None, help="training variant, e.g. ft_balanced_aug")
    parser.add_argument("--modality", required=True, help="sem | lom")
    parser.add_argument("--samples", nargs="+", required=True, help="test sample ids")
    parser.add_argument("--labels", nargs="+", required=True,
                        help="label images (uint8, 255 = ignore), one per sample, same order")
    for flag, dest, what, suffix in (("preds", "pred", "stitched class maps", "tif"),
                                     ("votes", "votes", "vote tables", "csv"),
                                     ("objects", "objects", "ground-truth objects tables", "csv")):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument(f"--{flag}", dest=f"{dest}_files", nargs="+", metavar="F",
                           help=f"{what}, one per sample, same order as --samples")
        group.add_argument(f"--{dest}-dir", dest=f"{dest}_dir", metavar="D",
                           help=f"or: folder holding {{sample}}.{suffix} {what}")
    parser.add_argument("--out-metrics", required=True, help="metrics.json")
    parser.add_argument("--out-objects", required=True, help="objects.csv")
    parser.add_argument("--out-confusion", required=True, help="object confusion.csv (Table 4)")
    parser.add_argument("--out-pixel-confusion", default=None,
                        help="optional pixel confusion CSV (rows true, columns predicted)")
    args = parser.parse_args(argv)

    classes = classes_from_json(args.classes_json)
    if len(args.labels) != len(args.samples):
        raise InputError(f"{len(args.samples)} samples but {len(args.labels)} label images")
    if len(set(args.samples)) != len(args.samples):
        raise InputError(f"duplicate sample ids in --samples: {args.samples}")
    n = len(args.samples)
    paths: dict[str, list[Path]] = {}
    for dest, suffix in (("pred", "tif"), ("votes", "csv"), ("objects", "csv")):
        files, folder = getattr(args, f"{dest}_files"), getattr(args, f"{dest}_dir")
        if files is not None and len(files) != n:
            raise InputError(f"{n} samples but {len(files)} {dest} file(s)")
        paths[dest] = ([Path(f) for f in files] if files is not None
                       else [Path(folder) / f"{s}.{suffix}" for s in args.samples])
    confusion = pixel_confusion(zip(args.samples, paths["pred"], args.labels, strict=True),
                                classes)
    frames = [merge_votes(_read_csv(obj, s), _read_csv(vts, s), s)
              for s, obj, vts in zip(args.samples, paths["objects"], paths["votes"], strict=True)]
    frame = pd.concat(frames, ignore_index=True)
    metrics = write_evaluation(
        frame, classes, method=args.method, modality=args.modality, variant=args.variant,
        out_metrics=args.out_metrics, out_objects=args.out_objects,
        out_confusion=args.out_confusion, pixel_confusion=confusion,
        out_pixel_confusion=args.out_pixel_confusion)
    acc = metrics["object_accuracy"]
    pix = metrics["pixel"]["pixel_accuracy"]
    print(f"mvfcnn evaluate: {args.method}/{args.variant}/{args.modality}: "
          f"{metrics['n_objects']} objects, accuracy "
          f"{'n/a' if acc is None else f'{acc:.4f}'}, pixel accuracy "
          f"{'n/a' if pix is None else f'{pix:.4f}'}", file=sys.stderr)
    return 0
