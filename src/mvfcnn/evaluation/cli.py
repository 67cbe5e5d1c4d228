"""The command lines of the evaluation verbs: ``mvfcnn vote``, ``evaluate``, ``crossval``,
``crossval-objects``, ``crossval-curves`` and ``crossval-figure`` (the science is in
:mod:`~mvfcnn.evaluation.voting`, :mod:`~mvfcnn.evaluation.evaluate`,
:mod:`~mvfcnn.evaluation.crossval` and :mod:`~mvfcnn.evaluation.crossval_objects`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.cli_args import verb_parser
from mvfcnn.core.config import classes_from_json, json_arg
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, read_labels, read_tables, write_table, write_text
from mvfcnn.evaluation.crossval import (
    crossval_html,
    crossval_markdown,
    examples_figure,
    fold_learning_curves,
    fold_rows,
    learning_curves_figure,
    pct,
    phase_fraction_images,
    phase_fraction_markdown,
    phase_fraction_summary,
    pick_example,
    read_confusion,
    summarize,
)
from mvfcnn.evaluation.crossval_objects import (
    MVFCNN,
    add_accuracy_without,
    add_majority,
    budget_notes,
    check_same_objects,
    objects_html,
    objects_markdown,
    paired_differences,
    verdict,
)
from mvfcnn.evaluation.crossval_objects import fold_rows as object_fold_rows
from mvfcnn.evaluation.crossval_objects import summarize as summarize_objects
from mvfcnn.evaluation.evaluate import PathLike, merge_votes, pixel_confusion, write_evaluation
from mvfcnn.evaluation.voting import vote_table
from mvfcnn.report.figure_kit import save_figure


def vote(argv: list[str]) -> int:
    """`mvfcnn vote`: each object of one sample takes the class most of its pixels got."""
    parser = verb_parser(
        "vote",
        "Max-vote the predicted classes inside each object (matrix pixels do not "
        "vote; ties -> lowest class index; no non-matrix pixel -> not_segmented).",
        shared=("classes_json", "sample"))
    parser.add_argument("--pred", required=True, help="stitched uint8 class map (TIFF)")
    parser.add_argument("--objects-ids", required=True, help="uint32 object-id image (TIFF)")
    parser.add_argument("--objects", required=True, help="objects table CSV (object_id column)")
    parser.add_argument("--out", required=True, help="votes CSV to write")
    args = parser.parse_args(argv)

    classes = classes_from_json(args.classes_json)
    pred = read_image(args.pred, sample=args.sample)
    ids = read_image(args.objects_ids, sample=args.sample)
    if pred.ndim != 2 or ids.ndim != 2:
        raise InputError("prediction and object-id images must be 2-D", sample=args.sample)
    if pred.shape != ids.shape:
        raise InputError(f"prediction {pred.shape} and object ids {ids.shape} differ in size",
                         sample=args.sample, path=args.objects_ids)
    try:
        objects = pd.read_csv(args.objects)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"cannot read objects table ({err})", sample=args.sample,
                         path=args.objects) from err
    try:
        votes = vote_table(pred, ids, objects, classes, sample=args.sample)
    except InputError as err:
        if err.sample is None:
            raise InputError(str(err), sample=args.sample, path=args.pred) from err
        raise
    write_table(args.out, votes)
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


def crossval(argv: list[str]) -> int:
    """`mvfcnn crossval`: per-fold pixel metrics, mean ± SE, pooled confusion, literature."""
    import yaml

    parser = verb_parser("crossval", "Cross-validation summary: per-fold pixel metrics, "
                         "their mean ± standard error, the pooled confusion matrix, phase "
                         "fractions and the literature", shared=("classes_json",))
    parser.add_argument("--folds", nargs="+", required=True, help="fold names, in order")
    parser.add_argument("--confusions", nargs="+", required=True,
                        help="pixel confusion CSV of each fold (same order as --folds)")
    parser.add_argument("--literature", default=None,
                        help="YAML file with the published numbers, and the key to read")
    parser.add_argument("--literature-key", default=None)
    parser.add_argument("--secondary-exclude", nargs="*", default=[],
                        help="classes left out of a second mean IoU (e.g. unreliable labels)")
    parser.add_argument("--title", default="Cross-validation")
    parser.add_argument("--note", action="append", default=[], help="a note under the table")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-html", required=True)
    parser.add_argument("--out-confusion", required=True, help="pooled pixel confusion CSV")
    parser.add_argument("--test-pair", action="append", nargs=4, default=[],
                        metavar=("FOLD", "SAMPLE", "LABELS", "PRED"),
                        help="one test image of a fold for the phase fractions (repeat for "
                        "every test image)")
    parser.add_argument("--out-phase-fractions", default=None,
                        help="per-class phase-fraction errors CSV (with --test-pair)")
    parser.add_argument("--out-phase-fractions-per-image", default=None,
                        help="per-image, per-class phase fractions CSV (with --test-pair)")
    args = parser.parse_args(argv)
    phase_args = (args.test_pair, args.out_phase_fractions, args.out_phase_fractions_per_image)
    if any(phase_args) and not all(phase_args):
        raise InputError("--test-pair, --out-phase-fractions and --out-phase-fractions-per-image "
                         "go together")
    classes = classes_from_json(args.classes_json)
    if len(args.folds) != len(args.confusions):
        raise InputError(f"{len(args.folds)} folds but {len(args.confusions)} confusion files")
    unknown = sorted(set(args.secondary_exclude) - set(classes.names))
    if unknown:
        raise InputError(f"--secondary-exclude names unknown class(es) {unknown}")
    confusions = {fold: read_confusion(path, classes)
                  for fold, path in zip(args.folds, args.confusions, strict=True)}
    secondary = tuple(args.secondary_exclude)
    table = summarize(fold_rows(confusions, classes, secondary))
    literature: list[dict[str, Any]] = []
    notes = list(args.note)
    if args.literature and args.literature_key:
        # a dataset without published numbers in the file simply has none
        published = yaml.safe_load(Path(args.literature).read_text()).get(args.literature_key)
        if published:
            literature = published["results"]
            notes += published.get("notes", [])
    pooled = sum(confusions.values())
    pooled_frame = pd.DataFrame(pooled, index=pd.Index(classes.names, name="true"),
                                columns=classes.names).reset_index()
    markdown = crossval_markdown(table, classes, literature, title=args.title, notes=notes,
                               secondary_exclude=secondary)
    phase = None
    if args.test_pair:
        per_image = phase_fraction_images([tuple(t) for t in args.test_pair], classes)
        phase = phase_fraction_summary(per_image, classes)
        write_table(args.out_phase_fractions_per_image, per_image.round(4))
        write_table(args.out_phase_fractions, phase.round(4))
        markdown += "\n" + phase_fraction_markdown(phase)
    html = crossval_html(table, pooled_frame, literature, title=args.title, notes=notes,
                       phase=phase)
    write_table(args.out_csv, table)
    write_table(args.out_confusion, pooled_frame)
    write_text(args.out_md, markdown)
    write_text(args.out_html, html)
    mean = table[table["fold"] == "mean"].iloc[0]
    se = table[table["fold"] == "se"].iloc[0]
    print(f"mvfcnn crossval: {len(args.folds)} folds, mean IoU {pct(mean['mean_iu'])} ± "
          f"{pct(se['mean_iu'])} %", flush=True)
    return 0


def crossval_figure(argv: list[str]) -> int:
    """`mvfcnn crossval-figure`: one test image per fold, truth and prediction beside it."""
    parser = verb_parser("crossval-figure", "One test image per fold: image, truth, "
                                            "prediction in the class colours",
                         shared=("classes_json",))
    parser.add_argument("--test-image", action="append", nargs=5, required=True,
                        metavar=("FOLD", "SAMPLE", "IMAGE", "LABELS", "PRED"),
                        help="one test image of a fold (repeat for every test image)")
    parser.add_argument("--title", default="Cross-validation: one test image per fold")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    classes = classes_from_json(args.classes_json)
    by_fold: dict[str, list[tuple[str, str, str, str]]] = {}
    for fold, sample, image, labels, pred in args.test_image:
        by_fold.setdefault(fold, []).append((sample, image, labels, pred))
    rows = []
    for fold, triples in by_fold.items():
        labels = [np.asarray(read_labels(t[2], sample=t[0])) for t in triples]
        best = pick_example(labels, classes)
        sample, image_path, _, pred_path = triples[best]
        rows.append((fold, sample, np.asarray(read_image(image_path, sample=sample, gray=True)),
                     labels[best], np.asarray(read_image(pred_path, sample=sample))))
    save_figure(examples_figure(rows, classes, title=args.title), args.out)
    return 0


def crossval_curves(argv: list[str]) -> int:
    """`mvfcnn crossval-curves`: every fold's learning curve in one CSV and one figure."""
    parser = verb_parser("crossval-curves", crossval_curves.__doc__)
    parser.add_argument("--folds", nargs="+", required=True)
    parser.add_argument("--curves", nargs="+", required=True,
                        help="each fold's learning_curve.csv, in the order of --folds")
    parser.add_argument("--title", default="Learning curves, every fold")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-png", required=True)
    args = parser.parse_args(argv)
    curves = read_tables(args.folds, args.curves, what="learning curve")
    frame = fold_learning_curves(curves)
    write_table(args.out_csv, frame)
    save_figure(learning_curves_figure(frame, title=args.title), args.out_png)
    return 0


def crossval_objects(argv: list[str]) -> int:
    """`mvfcnn crossval-objects`: MVFCNN against the object-based baselines on every fold."""
    import yaml

    parser = verb_parser("crossval-objects", "The paper's central comparison on "
                         "cross-validation folds: MVFCNN against the object-based baselines on "
                         "the same test objects",
                         shared=("classes_json",))
    parser.add_argument("--run", action="append", nargs=3, default=[], required=True,
                        metavar=("METHOD", "FOLD", "METRICS_JSON"),
                        help="one method's metrics.json on one fold (repeat; MVFCNN as mvfcnn)")
    parser.add_argument("--paper", default=None, help="paper_tables.yaml: Table 1 beside ours")
    parser.add_argument("--config-json", default=None,
                        help="the workflow config (report view): each method's budget as notes")
    parser.add_argument("--secondary-exclude", nargs="*", default=[],
                        help="classes left out of a second object accuracy (e.g. classes whose "
                        "labels are unreliable)")
    parser.add_argument("--title", default="Object classification on the cross-validation folds")
    parser.add_argument("--note", action="append", default=[], help="a note under the tables")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-html", required=True)
    args = parser.parse_args(argv)
    classes = classes_from_json(args.classes_json)
    metrics: dict[tuple[str, str], dict[str, Any]] = {}
    for method, fold, path in args.run:
        if not Path(path).is_file():
            raise InputError("metrics file not found", path=path)
        try:
            metrics[(method, fold)] = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"not valid JSON ({err})", path=path) from err
    if MVFCNN not in {m for m, _ in metrics}:
        raise InputError("no MVFCNN run given (--run mvfcnn FOLD METRICS_JSON)")
    rows = object_fold_rows(metrics, classes)
    check_same_objects(rows)
    unknown = sorted(set(args.secondary_exclude) - set(classes.foreground_names))
    if unknown:
        raise InputError(f"--secondary-exclude names unknown second-phase class(es) {unknown}")
    secondary = tuple(args.secondary_exclude)
    rows = add_accuracy_without(add_majority(rows, classes), secondary)
    table = summarize_objects(rows)
    differences = paired_differences(table)
    paper: dict[str, float] = {}
    if args.paper:
        paper = {e["method"]: float(e["accuracy"])
                 for e in yaml.safe_load(Path(args.paper).read_text())["table1"]}
    notes = list(args.note)
    if args.config_json:
        notes += budget_notes(json_arg(args.config_json, "--config-json"),
                              [(m, f, Path(p)) for m, f, p in args.run])
    markdown = objects_markdown(table, differences, classes, title=args.title, paper=paper,
                               notes=notes, secondary_exclude=secondary)
    write_table(args.out_csv, table)
    write_text(args.out_md, markdown)
    write_text(args.out_html, objects_html(table, differences, markdown))
    print("mvfcnn crossval-objects: " + verdict(differences), flush=True)
    return 0
