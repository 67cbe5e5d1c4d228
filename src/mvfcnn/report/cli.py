"""The command lines of the report verbs: ``mvfcnn best-run``, ``tables``, ``figures`` and
``compare-tables`` (the science is in :mod:`~mvfcnn.report.collect`,
:mod:`~mvfcnn.report.summary`, :mod:`~mvfcnn.report.figures` and :mod:`~mvfcnn.report.compare`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mvfcnn.core.cli_args import report_parser, verb_parser
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_json, write_text
from mvfcnn.report import compare
from mvfcnn.report.collect import (
    best_runs,
    collect_runs,
    load_config_arg,
    load_paper,
    paper_classes_match,
    without_paper,
)
from mvfcnn.report.figure_kit import PATCH, make_context
from mvfcnn.report.figures import FIGURES, write_figures
from mvfcnn.report.rendering import markdown_page_html, write_tables
from mvfcnn.report.summary import class_match_notes, summary_markdown
from mvfcnn.report.tables import build_tables


def best_run(argv: list[str]) -> int:
    """`mvfcnn best-run`: the MVFCNN variant the report shows, per modality (JSON)."""
    parser = report_parser(
        "best-run", "Decide once which MVFCNN variant stands for 'MVFCNN' in the report, "
                           "per modality (the paper's best configuration if run, else the best "
                           "object accuracy), and write it as JSON for the figure jobs.")
    parser.add_argument("--out", required=True, help="output JSON (results/best.json)")
    args = parser.parse_args(argv)

    runs = collect_runs(args.results_dir, load_config_arg(args.config_json), args.runs)
    write_json(args.out, best_runs(runs))
    print(f"mvfcnn best-run: wrote {args.out}", file=sys.stderr)
    return 0


def tables(argv: list[str]) -> int:
    """`mvfcnn tables`: Tables 1-6 and summary.md (their HTML renderings too)."""
    parser = report_parser(
        "tables", "Tables 1-6 of the paper with our numbers beside the paper's, and "
                         "summary.md. Missing runs give rows with an empty 'ours'.")
    parser.add_argument("--paper", default="workflow/resources/paper_tables.yaml",
                        help="the paper's numbers (YAML)")
    parser.add_argument("--outdir", default="results/tables", help="output folder")
    parser.add_argument("--no-html", action="store_true", help="skip the .html renderings")
    args = parser.parse_args(argv)

    config = load_config_arg(args.config_json)
    classes = ClassSet.from_config(config)
    paper = load_paper(args.paper)
    runs = collect_runs(args.results_dir, config, args.runs)
    tables = build_tables(args.results_dir, classes, config, paper, runs=runs)
    if not paper_classes_match(classes, paper):
        tables = without_paper(tables)
    written = write_tables(tables, args.outdir, html=not args.no_html,
                           notes=class_match_notes(paper, classes))
    summary = summary_markdown(tables, args.results_dir, classes, config, paper, runs=runs)
    write_text(Path(args.outdir) / "summary.md", summary)
    if not args.no_html:
        write_text(Path(args.outdir) / "summary.html", markdown_page_html(summary))
    print(f"mvfcnn tables: wrote {len(written)} table files and summary.md to {args.outdir}",
          file=sys.stderr)
    return 0


def figures(argv: list[str]) -> int:
    """`mvfcnn figures`: the paper's figures 4, 6, 7, 8a and 8b as PNGs."""
    parser = report_parser(
        "figures", "The paper's Figures 4, 6, 7, 8a, 8b as PNGs (class names and colours "
                          "from the config). Missing inputs give a placeholder PNG with a note.")
    parser.add_argument("--outdir", default="results/figures", help="output folder")
    parser.add_argument("--which", nargs="+", choices=list(FIGURES), default=None,
                        help="figures to make (default: all)")
    parser.add_argument("--model", default=None,
                        help="model file for fig8b (default: the best SEM variant's final stage)")
    parser.add_argument("--patch", type=int, default=PATCH, help="patch size of the crops, px")
    parser.add_argument("--best-run", default=None,
                        help="`mvfcnn best-run` output (default: decide from the metrics)")
    args = parser.parse_args(argv)
    config = load_config_arg(args.config_json)
    ctx = make_context(args.results_dir, config, best_run=args.best_run,
                       declared_runs=args.runs)
    written = write_figures(ctx, args.outdir, args.which, model=args.model, patch=args.patch)
    for path in written:
        print(f"mvfcnn figures: wrote {path}", file=sys.stderr)
    return 0


def compare_tables(argv: list[str]) -> int:
    """`mvfcnn compare-tables`: two runs' tables, the same but for measured times?"""
    parser = verb_parser("compare-tables", "Two runs' tables (csv, md): identical, the same "
                         "but for measured times, or different (exit status 1).")
    parser.add_argument("old", help="a results/tables folder")
    parser.add_argument("new", help="the results/tables folder to compare with it")
    args = parser.parse_args(argv)
    comparisons = compare.compare_tables(args.old, args.new)
    if not comparisons:
        raise InputError(f"no tables ({', '.join(compare.PATTERNS)}) in {args.old} or {args.new}")
    for item in comparisons:
        print(f"{item.verdict:<12} {item.name}" + (f"  ({item.first_difference})"
                                                  if item.first_difference else ""))
    same = all(item.verdict in {"identical", "times only"} for item in comparisons)
    print(f"{len(comparisons)} files: " + ("the same numbers and words (measured times aside)"
                                          if same else "DIFFERENT"), file=sys.stderr)
    return 0 if same else 1
