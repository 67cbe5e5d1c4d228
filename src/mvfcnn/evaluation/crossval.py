"""Cross-validation summary: per-fold pixel metrics, their mean ± standard error, the pooled
confusion matrix, and the published numbers beside ours (e.g. MetalDAM's 6 folds).

Per fold, the metrics are those of :func:`mvfcnn.evaluation.metrics.pixel_report` on that fold's
test confusion matrix (one matrix over the fold's test images, as Long et al.). The mean and the
standard error (sample standard deviation / sqrt(n folds)) are taken over folds; the pooled
matrix sums every fold's matrix, i.e. all test predictions of the study.

Phase fractions (the number a metallographer reports): per test image and class, the predicted
area fraction beside the truth's, in percentage points, over the image's labelled pixels
(:func:`mvfcnn.evaluation.metrics.phase_fractions`); per class, the mean and maximum absolute error
and the signed mean (bias) over all test predictions of all folds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, read_labels
from mvfcnn.evaluation.metrics import phase_fractions, pixel_report
from mvfcnn.fcn.curves import CURVE_COLUMNS
from mvfcnn.report.figure_kit import add_legend, colorize, display_gray, figure_grid
from mvfcnn.report.rendering import frame_html, html_page

SUMMARY_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")
PHASE_IMAGE_COLUMNS = ["fold", "sample", "class", "class_name", "n_labelled_px", "truth_pp",
                       "predicted_pp", "error_pp"]
PHASE_SUMMARY_COLUMNS = ["class", "class_name", "n_images", "truth_mean_pp", "predicted_mean_pp",
                         "mean_abs_error_pp", "max_abs_error_pp", "max_abs_error_sample",
                         "bias_pp"]


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


def mean_and_se(values: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per column: the mean over folds and its standard error (sample standard deviation /
    sqrt(folds)); NaN folds are left out, and the SE is NaN with fewer than two folds."""
    values = values.astype(float)
    counts = values.notna().sum()
    mean = values.mean(skipna=True)
    se = values.std(ddof=1, skipna=True) / np.sqrt(counts.clip(lower=1))
    se[counts < 2] = np.nan
    return mean, se


def summarize(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Append the mean and the standard error over folds (NaN folds, e.g. a class absent from a
    fold's test images, are left out of that column's statistics)."""
    mean, se = mean_and_se(per_fold.drop(columns=["fold", "n_pixels"]))
    extra = pd.DataFrame([{"fold": "mean", **mean.to_dict(),
                           "n_pixels": int(per_fold["n_pixels"].sum())},
                          {"fold": "se", **se.to_dict(), "n_pixels": np.nan}])
    return pd.concat([per_fold, extra], ignore_index=True)


def phase_image_rows(fold: str, sample: str, labels: np.ndarray, pred: np.ndarray,
                     classes: ClassSet) -> list[dict[str, Any]]:
    """One row per class of one test image: truth and predicted area fraction in percent and
    their difference (predicted - truth) in percentage points, over the labelled pixels."""
    try:
        truth, predicted, n = phase_fractions(labels, pred, classes)
    except InputError as err:
        raise InputError(str(err), sample=sample) from err
    return [{"fold": fold, "sample": sample, "class": index, "class_name": name,
             "n_labelled_px": n, "truth_pp": 100 * truth[index],
             "predicted_pp": 100 * predicted[index],
             "error_pp": 100 * (predicted[index] - truth[index])}
            for index, name in zip(classes.indices, classes.names, strict=True)]


def phase_fraction_images(tests: list[tuple[str, str, str, str]],
                          classes: ClassSet) -> pd.DataFrame:
    """PHASE_IMAGE_COLUMNS for (fold, sample, labels file, prediction file) test images; the
    prediction must lie on the labels' grid (as for the pixel confusion of ``evaluate``)."""

    rows: list[dict[str, Any]] = []
    for fold, sample, labels_path, pred_path in tests:
        labels = np.asarray(read_labels(labels_path, sample=sample))
        pred = np.asarray(read_image(pred_path, sample=sample))
        if labels.shape != pred.shape:
            raise InputError(f"labels {labels.shape} and prediction {pred.shape} differ in size",
                             sample=sample, path=pred_path)
        rows += phase_image_rows(fold, sample, labels, pred, classes)
    return pd.DataFrame(rows, columns=PHASE_IMAGE_COLUMNS)


def phase_fraction_summary(per_image: pd.DataFrame, classes: ClassSet) -> pd.DataFrame:
    """Per class over all test images: mean truth and predicted fraction, mean and maximum
    |error| (with the image of the maximum) and bias (signed mean error), in percentage points.
    Images without labelled pixels (NaN fractions) are left out and not counted in n_images."""
    rows = []
    for index, name in zip(classes.indices, classes.names, strict=True):
        part = per_image[(per_image["class"] == index) & per_image["error_pp"].notna()]
        error = part["error_pp"].abs()
        worst = part.loc[error.idxmax(), "sample"] if len(part) else ""
        rows.append({"class": index, "class_name": name, "n_images": len(part),
                     "truth_mean_pp": part["truth_pp"].mean(),
                     "predicted_mean_pp": part["predicted_pp"].mean(),
                     "mean_abs_error_pp": error.mean(), "max_abs_error_pp": error.max(),
                     "max_abs_error_sample": worst, "bias_pp": part["error_pp"].mean()})
    return pd.DataFrame(rows, columns=PHASE_SUMMARY_COLUMNS)


def _pp(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.2f}"


def phase_fraction_markdown(summary: pd.DataFrame) -> str:
    """The phase-fraction section of the cross-validation markdown."""
    n = int(summary["n_images"].max()) if len(summary) else 0
    lines = ["## Phase fractions", "",
             f"Area fraction of each class, predicted vs truth, per test image ({n} test "
             "predictions over all folds), in percentage points (pp); both fractions over the "
             "image's labelled pixels (ignore pixels left out of both); error = predicted - "
             "truth, bias = mean error.", "",
             "| class | truth mean % | predicted mean % | mean abs. error (pp) | "
             "max abs. error (pp) | image of max | bias (pp) |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for row in summary.to_dict("records"):
        lines.append(f"| {row['class_name']} | {_pp(row['truth_mean_pp'])} | "
                     f"{_pp(row['predicted_mean_pp'])} | {_pp(row['mean_abs_error_pp'])} | "
                     f"{_pp(row['max_abs_error_pp'])} | {row['max_abs_error_sample']} | "
                     f"{_pp(row['bias_pp'])} |")
    return "\n".join(lines) + "\n"


def pct(value: Any, se: Any = None) -> str:
    """A fraction as a percent cell (1 decimal, "–" when missing), with "± SE" when given."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * float(value):.1f}"
    if se is not None and not (isinstance(se, float) and math.isnan(se)):
        text += f" ± {100 * float(se):.1f}"
    return text


def crossval_markdown(table: pd.DataFrame, classes: ClassSet, literature: list[dict[str, Any]],
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
        lines.append("| " + " | ".join([str(row["fold"])] + [pct(row[c]) for c in columns])
                     + " |")
    mean = table[table["fold"] == "mean"].iloc[0]
    se = table[table["fold"] == "se"].iloc[0]
    cells = [f"**{pct(mean[c])} ± {pct(se[c])}**" for c in columns]
    lines.append("| **mean ± SE** | " + " | ".join(cells) + " |")
    if literature:
        lines += ["", "Published results on the same data (as reported by each paper):", "",
                  "| source | method | metric | value | protocol |", "|---|---|---|---:|---|"]
        for entry in literature:
            lines.append(f"| {entry['source']} | {entry['method']} | {entry['metric']} | "
                         f"{pct(entry['value'])} | {entry.get('protocol', '')} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def crossval_html(table: pd.DataFrame, pooled: pd.DataFrame, literature: list[dict[str, Any]],
                *, title: str, notes: list[str], phase: pd.DataFrame | None = None) -> str:
    """The report page: ours per fold (percent), the published results, the pooled confusion,
    the phase-fraction errors (when given) and the notes, as tables by the shared
    :mod:`mvfcnn.report.rendering`."""
    import html

    shown = table.copy()
    for column in shown.columns:
        if column not in ("fold", "n_pixels"):
            shown[column] = [pct(v) for v in shown[column]]
    phase_html = ""
    if phase is not None:
        phase_shown = phase.drop(columns=["class"]).copy()
        for column in phase_shown.columns:
            if column.endswith("_pp"):
                phase_shown[column] = [_pp(v) for v in phase_shown[column]]
        phase_html = ("<h4>Phase fractions per class over all test images (percentage points; "
                      "error = predicted - truth, over each image's labelled pixels)</h4>"
                      + frame_html(phase_shown))
    return html_page(
        f"<h3>{html.escape(title)}</h3>" + frame_html(shown)
        + "<h4>Published</h4>" + frame_html(pd.DataFrame(literature))
        + "<h4>Pooled pixel confusion (rows true, columns predicted)</h4>" + frame_html(pooled)
        + phase_html
        + "<h4>Notes</h4><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")


def pick_example(labels: list[np.ndarray], classes: ClassSet) -> int:
    """The test image showing the most classes (ties: the first), for the per-fold figure."""
    present = [len(set(np.unique(lab).tolist()) & set(classes.indices)) for lab in labels]
    return int(np.argmax(present))


def examples_figure(rows: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]],
                    classes: ClassSet, *, title: str):
    """One row per fold: micrograph | truth | prediction, in the configured class colours."""

    fig, axes, grid = figure_grid(len(rows), 3, cell=2.6, title=title)
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


# ----------------------------------------------------------------------------------------------
# learning curves of every fold (issue 22: saturation visible, not assumed)


def fold_learning_curves(curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every fold's ``learning_curve.csv`` (:func:`mvfcnn.fcn.curves.learning_curve`) in one
    table with a leading ``fold`` column."""

    frames = [curve.assign(fold=str(fold))[["fold", *CURVE_COLUMNS]]
              for fold, curve in curves.items() if len(curve)]
    if not frames:
        return pd.DataFrame(columns=["fold", *CURVE_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def learning_curves_figure(frame: pd.DataFrame, *, title: str):
    """Validation mean IU against training steps, one line per fold, stage ends marked: where
    the folds' curves still rise at the end of a stage, more iterations would pay."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    for i, (fold, part) in enumerate(frame.groupby("fold", sort=False)):
        for j, (_, stage) in enumerate(part.groupby("stage", sort=False)):
            ax.plot(stage["step"], stage["mean_iu"], "o-", ms=2.5, lw=1, color=f"C{i % 10}",
                    label=f"fold {fold}" if j == 0 else None)
    if len(frame):
        first = frame[frame["fold"] == frame["fold"].iloc[0]]
        for stage, part in first.groupby("stage", sort=False):
            end = part["step"].max()
            ax.axvline(end, color="0.75", lw=0.8, zorder=0)
            ax.annotate(f"end of FCN-{stage}", (end, 0.98), rotation=90, va="top", ha="right",
                        fontsize=7, color="0.4")
    ax.set(xlabel="training step (stages in order)", ylabel="validation mean IU (held-out tiles)",
           ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=3)
    return fig
