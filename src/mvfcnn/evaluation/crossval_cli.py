"""The command lines of the cross-validation verbs: ``mvfcnn crossval``, ``crossval-objects``,
``crossval-curves`` and ``crossval-figure`` (the science is in
:mod:`~mvfcnn.evaluation.crossval` and :mod:`~mvfcnn.evaluation.crossval_objects`)."""

from __future__ import annotations

import json
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
from mvfcnn.report.figure_kit import save_figure


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
