"""Cross-validation summary: per-fold pixel metrics, their mean ± standard error, the pooled
confusion matrix, and the published numbers beside ours (e.g. MetalDAM's 6 folds).

Per fold, the metrics are those of :func:`mvfcnn.metrics.pixel_report` on that fold's test
confusion matrix (one matrix over the fold's test images, as Long et al.). The mean and the
standard error (sample standard deviation / sqrt(n folds)) are taken over folds; the pooled
matrix sums every fold's matrix, i.e. all test predictions of the study.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.config import ClassSet
from mvfcnn.errors import InputError
from mvfcnn.metrics import pixel_report

SUMMARY_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")


def read_confusion(path: str | Path, classes: ClassSet) -> np.ndarray:
    """A pixel confusion CSV (rows true, columns predicted, class names as written)."""
    frame = pd.read_csv(path)
    names = list(classes.names)
    if list(frame.columns[1:]) != names or list(frame.iloc[:, 0]) != names:
        raise InputError(f"confusion matrix classes {list(frame.columns[1:])} differ from the "
                         f"configured {names}", path=path)
    return frame.iloc[:, 1:].to_numpy(dtype=np.int64)


def fold_rows(confusions: dict[str, np.ndarray], classes: ClassSet,
              secondary_exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per fold: the four summary metrics, per-class IoU, and the secondary mean IoU."""
    rows = []
    keep = [n for n in classes.names if n not in secondary_exclude]
    for fold, confusion in confusions.items():
        report = pixel_report(confusion, classes)
        row: dict[str, Any] = {"fold": fold}
        row.update({m: report[m] for m in SUMMARY_METRICS})
        if secondary_exclude:
            row["mean_iu_secondary"] = float(np.nanmean(
                [report["per_class_iu"][n] for n in keep]))
        row.update({f"iu_{n}": report["per_class_iu"][n] for n in classes.names})
        row["n_pixels"] = report["n_pixels"]
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Append the mean and the standard error over folds (NaN folds, e.g. a class absent from a
    fold's test images, are left out of that column's statistics)."""
    values = per_fold.drop(columns=["fold", "n_pixels"])
    counts = values.notna().sum()
    mean = values.mean(skipna=True)
    se = values.std(ddof=1, skipna=True) / np.sqrt(counts.clip(lower=1))
    se[counts < 2] = np.nan
    extra = pd.DataFrame([{"fold": "mean", **mean.to_dict(),
                           "n_pixels": int(per_fold["n_pixels"].sum())},
                          {"fold": "se", **se.to_dict(), "n_pixels": np.nan}])
    return pd.concat([per_fold, extra], ignore_index=True)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.1f}"


def render_markdown(table: pd.DataFrame, classes: ClassSet, literature: list[dict[str, Any]],
                    *, title: str, notes: list[str], secondary_exclude: tuple[str, ...] = ()
                    ) -> str:
    """Ours per fold and mean ± SE (percent), then the published results and the notes."""
    metric_names = {"pixel_accuracy": "pixel acc.", "mean_accuracy": "mean acc.",
                    "mean_iu": "mean IoU", "fw_iu": "f.w. IoU"}
    columns = list(SUMMARY_METRICS)
    if secondary_exclude:
        metric_names["mean_iu_secondary"] = f"mean IoU w/o {', '.join(secondary_exclude)}"
        columns.append("mean_iu_secondary")
    columns += [f"iu_{n}" for n in classes.names]
    header = ["fold"] + [metric_names.get(c, c.replace("iu_", "IoU ")) for c in columns]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" + "---:|" * len(columns)]
    body = table[~table["fold"].isin(["mean", "se"])]
    for row in body.to_dict("records"):
        lines.append("| " + " | ".join([str(row["fold"])] + [_pct(row[c]) for c in columns])
                     + " |")
    mean = table[table["fold"] == "mean"].iloc[0]
    se = table[table["fold"] == "se"].iloc[0]
    cells = [f"**{_pct(mean[c])} ± {_pct(se[c])}**" for c in columns]
    lines.append("| **mean ± SE** | " + " | ".join(cells) + " |")
    if literature:
        lines += ["", "Published results on the same data (as reported by each paper):", "",
                  "| source | method | metric | value | protocol |", "|---|---|---|---:|---|"]
        for entry in literature:
            lines.append(f"| {entry['source']} | {entry['method']} | {entry['metric']} | "
                         f"{_pct(entry['value'])} | {entry.get('protocol', '')} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def cli(argv: list[str]) -> int:
    import yaml

    from mvfcnn.config import classes_from_json
    from mvfcnn.io import write_table, write_text

    parser = argparse.ArgumentParser(prog="mvfcnn crossval", description=__doc__.split("\n")[0])
    parser.add_argument("--folds", nargs="+", required=True, help="fold names, in order")
    parser.add_argument("--confusions", nargs="+", required=True,
                        help="pixel confusion CSV of each fold (same order as --folds)")
    parser.add_argument("--classes-json", required=True)
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
    args = parser.parse_args(argv)
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
    markdown = render_markdown(table, classes, literature, title=args.title, notes=notes,
                               secondary_exclude=secondary)
    html = render_html(table, pooled_frame, literature, title=args.title, notes=notes)
    write_table(args.out_csv, table)
    write_table(args.out_confusion, pooled_frame)
    write_text(args.out_md, markdown)
    write_text(args.out_html, html)
    mean = table[table["fold"] == "mean"].iloc[0]
    se = table[table["fold"] == "se"].iloc[0]
    print(f"mvfcnn crossval: {len(args.folds)} folds, mean IoU {_pct(mean['mean_iu'])} ± "
          f"{_pct(se['mean_iu'])} %", flush=True)
    return 0


def render_html(table: pd.DataFrame, pooled: pd.DataFrame, literature: list[dict[str, Any]],
                *, title: str, notes: list[str]) -> str:
    """The report page: ours per fold (percent), the published results, the pooled confusion
    and the notes, as tables by the shared :mod:`mvfcnn.rendering`."""
    import html

    from mvfcnn.rendering import frame_html, html_page

    shown = table.copy()
    for column in shown.columns:
        if column not in ("fold", "n_pixels"):
            shown[column] = [_pct(v) for v in shown[column]]
    return html_page(
        f"<h3>{html.escape(title)}</h3>" + frame_html(shown)
        + "<h4>Published</h4>" + frame_html(pd.DataFrame(literature))
        + "<h4>Pooled pixel confusion (rows true, columns predicted)</h4>" + frame_html(pooled)
        + "<h4>Notes</h4><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")


def pick_example(labels: list[np.ndarray], classes: ClassSet) -> int:
    """The test image showing the most classes (ties: the first), for the per-fold figure."""
    present = [len(set(np.unique(lab).tolist()) & set(classes.indices)) for lab in labels]
    return int(np.argmax(present))


def examples_figure(rows: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]],
                    classes: ClassSet, *, title: str):
    """One row per fold: micrograph | truth | prediction, in the configured class colours."""
    from mvfcnn.figures import _grid, add_legend, colorize, display_gray

    fig, axes, grid = _grid(len(rows), 3, cell=2.6, title=title)
    for r, (fold, sample, image, truth, pred) in enumerate(rows):
        axes[r, 0].imshow(display_gray(image), cmap="gray", vmin=0, vmax=1)
        axes[r, 1].imshow(colorize(truth, classes))
        axes[r, 2].imshow(colorize(pred, classes))
        axes[r, 0].set_ylabel(f"fold {fold}\n{sample}", fontsize=9)
        if r == len(rows) - 1:
            for c, name in enumerate(("micrograph", "truth", "prediction")):
                axes[r, c].set_xlabel(name, fontsize=9)
    add_legend(fig, grid, classes, [("ignore", (128, 128, 128))])
    return fig


def figure_cli(argv: list[str]) -> int:
    from mvfcnn.config import classes_from_json
    from mvfcnn.figures import save_figure
    from mvfcnn.io import read_image, read_labels

    parser = argparse.ArgumentParser(prog="mvfcnn crossval-figure",
                                     description="One test image per fold: image, truth, "
                                     "prediction in the class colours")
    parser.add_argument("--test-image", action="append", nargs=5, required=True,
                        metavar=("FOLD", "SAMPLE", "IMAGE", "LABELS", "PRED"),
                        help="one test image of a fold (repeat for every test image)")
    parser.add_argument("--classes-json", required=True)
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
