"""The paper's central comparison on cross-validation folds: MVFCNN against the object-based
baselines, on the same test objects of every fold (e.g. MetalDAM's 6 folds).

Objects are the test images' second-phase objects (for MetalDAM the connected components of each
non-matrix class of the labels, ``masking.min_object_area`` up). MVFCNN gives each the majority
class of its predicted pixels (``vote``/``evaluate``; of their best non-matrix classes under
``inference.object_vote: second_phase``); every baseline classifies the object's
crop, trained on the crops of the fold's training images (``train_baseline``). Each run's
``metrics.json`` (the shared evaluation format) gives its object accuracy and per-class recall.

Per method: accuracy and mean class recall (balanced accuracy over the classes with test objects)
per fold, their mean ± standard error (sample standard deviation / sqrt(folds)), and per-class
recall (mean ± SE over the folds with objects of that class; over ALL of the class's objects,
so an object MVFCNN left unsegmented counts as missed, as in the accuracy). Beside them: the
accuracy of always answering the most frequent class (how much of "accuracy" a class imbalance
gives away) and the paper's Table 1. The verdict on the paper's ordering uses the paired per-fold
differences MVFCNN - baseline: it "holds beyond one SE" for a baseline when their mean exceeds
their SE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.evaluation.crossval import mean_and_se, pct
from mvfcnn.report.describe import (
    baseline_budget_words,
    baseline_init_text,
    csv_seconds,
    iterations_text,
    seconds_text,
)
from mvfcnn.report.rendering import as_text, frame_html, html_page, text_html

MVFCNN = "mvfcnn"
MAJORITY = "majority"
LABELS = {MVFCNN: "MVFCNN", "handcrafted_svm": "hand-crafted features + SVM",
          "cifarnet": "CIFARNet", "vgg19_svm": "VGG19 features + SVM", "vgg16": "VGG16",
          MAJORITY: "always the most frequent class"}
SUMMARY = ("mean", "se")


def class_recall(entry: dict[str, Any]) -> tuple[float, int]:
    """(recall, objects) of one class over ALL its test objects: an object MVFCNN left
    unsegmented (``not_segmented``, no predicted second-phase pixel) counts as missed, as in the
    object accuracy; the evaluation's own recall is over segmented objects (Table 4)."""
    segmented = int(entry["support"])
    total = segmented + int(entry.get("not_segmented") or 0)
    if not total:
        return float("nan"), 0
    hits = round(float(entry["recall"]) * segmented) if segmented else 0
    return hits / total, total


def fold_rows(metrics: dict[tuple[str, str], dict[str, Any]], classes: ClassSet
              ) -> pd.DataFrame:
    """One row per (method, fold) from each run's ``metrics.json``: objects, accuracy, mean
    class recall and per-class recall (NaN for a class without test objects in that fold)."""
    names = list(classes.foreground_names)
    rows = []
    for (method, fold), report in metrics.items():
        per_class = report.get("per_class", {})
        missing = [n for n in names if n not in per_class]
        if missing:
            raise InputError(f"{method} fold {fold}: metrics lack class(es) {missing}")
        recalls = {n: class_recall(per_class[n]) for n in names}
        present = [r for r, total in recalls.values() if total]
        row: dict[str, Any] = {
            "method": method, "fold": str(fold), "n_objects": int(report["n_objects"]),
            "n_correct": int(report["n_correct"]),
            "object_accuracy": float(report["object_accuracy"]),
            "mean_recall": float(np.mean(present)) if present else float("nan")}
        row.update({f"recall_{n}": recalls[n][0] for n in names})
        row.update({f"support_{n}": recalls[n][1] for n in names})
        rows.append(row)
    return pd.DataFrame(rows)


def check_same_objects(rows: pd.DataFrame) -> None:
    """Every method of a fold must be scored on the same objects (same count per class)."""
    support = [c for c in rows.columns if c.startswith("support_")]
    for fold, part in rows.groupby("fold", sort=False):
        distinct = part[["n_objects", *support]].drop_duplicates()
        if len(distinct) > 1:
            counts = dict(zip(part["method"], part["n_objects"], strict=True))
            raise InputError(f"fold {fold}: the methods were scored on different test objects "
                             f"({counts}); rerun them on the same objects table")


def add_majority(rows: pd.DataFrame, classes: ClassSet) -> pd.DataFrame:
    """The reference rows: always answer the class with the most test objects over all folds."""
    names = list(classes.foreground_names)
    first = rows.drop_duplicates("fold")
    totals = {n: int(first[f"support_{n}"].sum()) for n in names}
    top = max(names, key=lambda n: totals[n])
    extra = []
    for row in first.to_dict("records"):
        n = row["n_objects"]
        present = [m for m in names if row[f"support_{m}"] > 0]
        new = {**row, "method": MAJORITY, "n_correct": row[f"support_{top}"],
               "object_accuracy": row[f"support_{top}"] / n if n else float("nan"),
               "mean_recall": (1.0 if top in present else 0.0) / len(present) if present
               else float("nan")}
        new.update({f"recall_{m}": (float(m == top) if row[f"support_{m}"] else float("nan"))
                    for m in names})
        extra.append(new)
    return pd.concat([rows, pd.DataFrame(extra)], ignore_index=True)


SECONDARY = "object_accuracy_secondary"


def add_accuracy_without(rows: pd.DataFrame, exclude: tuple[str, ...]) -> pd.DataFrame:
    """``object_accuracy_secondary``: the accuracy over the objects of the other classes (as
    the pixel table's second mean IoU, e.g. without MetalDAM's mostly unannotated precipitate),
    from each row's per-class recall over all objects and supports."""
    if not exclude:
        return rows
    kept = [c.removeprefix("support_") for c in rows.columns
            if c.startswith("support_") and c.removeprefix("support_") not in exclude]
    hits = sum(rows[f"recall_{n}"].fillna(0.0) * rows[f"support_{n}"] for n in kept)
    total = sum(rows[f"support_{n}"] for n in kept)
    out = rows.copy()
    out[SECONDARY] = (hits / total.where(total > 0)).astype(float)
    return out


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Append, per method, a ``mean`` and an ``se`` row over its folds (counts are summed)."""
    metric_columns = ["object_accuracy", "mean_recall",
                      *[c for c in rows.columns if c.startswith("recall_") or c == SECONDARY]]
    count_columns = ["n_objects", "n_correct", *[c for c in rows.columns
                                                  if c.startswith("support_")]]
    out = []
    for method, part in rows.groupby("method", sort=False):
        out.append(part)
        mean, se = mean_and_se(part[metric_columns])
        out.append(pd.DataFrame([
            {"method": method, "fold": "mean", **mean.to_dict(),
             **{c: int(part[c].sum()) for c in count_columns}},
            {"method": method, "fold": "se", **se.to_dict()}]))
    return pd.concat(out, ignore_index=True)[rows.columns]


def paired_differences(rows: pd.DataFrame, metric: str = "object_accuracy") -> pd.DataFrame:
    """MVFCNN minus each other method, paired by fold: mean ± SE of the differences, and whether
    MVFCNN is ahead by more than one SE (the paper's ordering, within this study's noise)."""
    per_fold = rows[~rows["fold"].isin(SUMMARY)]
    ours = per_fold[per_fold["method"] == MVFCNN].set_index("fold")[metric]
    out = []
    for method in per_fold["method"].unique():
        if method == MVFCNN:
            continue
        theirs = per_fold[per_fold["method"] == method].set_index("fold")[metric]
        diff = (ours - theirs).dropna()
        means, ses = mean_and_se(diff.to_frame())
        mean, se = float(means.iloc[0]), float(ses.iloc[0])
        margin = 0.0 if math.isnan(se) else se
        standing = "ahead" if mean > margin else "behind" if mean < -margin else "within 1 SE"
        out.append({"method": method, "metric": metric, "folds": len(diff),
                    "mvfcnn_minus_method": mean, "se": se,
                    "mvfcnn_ahead_beyond_1se": standing == "ahead", "mvfcnn_standing": standing,
                    "folds_mvfcnn_ahead": int((diff > 0).sum())})
    return pd.DataFrame(out)


def _stat(table: pd.DataFrame, method: str, which: str, column: str) -> Any:
    part = table[(table["method"] == method) & (table["fold"] == which)]
    return part.iloc[0][column] if len(part) else float("nan")


def objects_markdown(table: pd.DataFrame, differences: pd.DataFrame, classes: ClassSet, *,
                    title: str, paper: dict[str, float], notes: list[str],
                    secondary_exclude: tuple[str, ...] = ()) -> str:
    """Accuracy (also without ``secondary_exclude``) and mean class recall per fold, mean ± SE;
    per-class recall; MVFCNN's paired lead and the verdict."""
    names = list(classes.foreground_names)
    methods = list(dict.fromkeys(table["method"]))
    folds = [f for f in dict.fromkeys(table["fold"]) if f not in SUMMARY]
    lines = [f"# {title}", ""]
    blocks = [("object_accuracy", "Object accuracy (%)")]
    if SECONDARY in table.columns:
        blocks.append((SECONDARY, "Object accuracy without "
                       f"{', '.join(secondary_exclude)} objects (%)"))
    blocks.append(("mean_recall", "Mean class recall (%, balanced accuracy over the classes "
                   "with test objects)"))
    for metric, heading in blocks:
        lines += [f"## {heading}", "", "| fold | objects | "
                  + " | ".join(LABELS.get(m, m) for m in methods) + " |",
                  "|---|---:|" + "---:|" * len(methods)]
        def objects(fold: str, metric: str = metric) -> int:
            n = _stat(table, methods[0], fold, "n_objects")
            if metric == SECONDARY:
                n -= sum(_stat(table, methods[0], fold, f"support_{c}")
                         for c in secondary_exclude)
            return int(n)

        for fold in folds:
            n = objects(fold)
            lines.append(f"| {fold} | {int(n)} | "
                         + " | ".join(pct(_stat(table, m, fold, metric)) for m in methods)
                         + " |")
        n = objects("mean")
        lines.append(f"| **mean ± SE** | {int(n)} | " + " | ".join(
            f"**{pct(_stat(table, m, 'mean', metric), _stat(table, m, 'se', metric))}**"
            for m in methods) + " |")
        if metric == "object_accuracy" and paper:
            lines.append("| paper, Table 1 (steel SEM) | 2262 | " + " | ".join(
                f"{paper[m]:.2f}" if m in paper else "" for m in methods) + " |")
        lines.append("")
    lines += ["## Recall per class (%, mean ± SE over the folds with test objects of the class)",
              "", "| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for method in methods:
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(
            pct(_stat(table, method, "mean", f"recall_{n}"),
                 _stat(table, method, "se", f"recall_{n}")) for n in names) + " |")
    lines.append("| test objects (all folds) | " + " | ".join(
        str(int(_stat(table, methods[0], "mean", f"support_{n}"))) for n in names) + " |")
    lines += ["", "## MVFCNN minus each method, paired by fold (object accuracy)", "",
              "| method | difference (pp, mean ± SE) | folds MVFCNN ahead | MVFCNN (beyond 1 SE) |",
              "|---|---:|---:|---|"]
    for row in differences.to_dict("records"):
        lines.append(f"| {LABELS.get(row['method'], row['method'])} | "
                     f"{pct(row['mvfcnn_minus_method'], row['se'])} | "
                     f"{row['folds_mvfcnn_ahead']} of {row['folds']} | "
                     f"{row['mvfcnn_standing']} |")
    if SECONDARY in table.columns:
        second = paired_differences(table, SECONDARY).set_index("method")
        lines += ["", f"Without {', '.join(secondary_exclude)} objects: " + "; ".join(
            f"{LABELS.get(m, m)} {pct(r['mvfcnn_minus_method'], r['se'])} pp "
            f"({r['mvfcnn_standing']})" for m, r in second.iterrows()) + "."]
    lines += ["", verdict(differences)]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def verdict(differences: pd.DataFrame) -> str:
    """One sentence: does MVFCNN beat every object-based method by more than one SE?"""
    baselines = differences[differences["method"] != MAJORITY]
    if not len(baselines):
        return "No object-based baseline was run: the paper's ordering is not tested."
    groups = {standing: [LABELS.get(m, m) for m in
                         baselines.loc[baselines["mvfcnn_standing"] == standing, "method"]]
              for standing in ("behind", "within 1 SE")}
    if not groups["behind"] and not groups["within 1 SE"]:
        return ("The paper's ordering holds here: MVFCNN's object accuracy is above every "
                "object-based method's by more than one standard error of the paired "
                "per-fold differences.")
    parts = []
    if groups["behind"]:
        parts.append(f"below {', '.join(groups['behind'])} by more than one standard error")
    if groups["within 1 SE"]:
        parts.append(f"within one standard error of {', '.join(groups['within 1 SE'])}")
    return ("The paper's ordering does not hold here: MVFCNN's object accuracy is "
            + " and ".join(parts) + " (paired per-fold differences).")


def objects_html(table: pd.DataFrame, differences: pd.DataFrame, markdown: str) -> str:
    """The report page: the markdown as written, then the full per-fold table."""

    return html_page(text_html(markdown) + "<h4>Per fold and method</h4>"
                     + frame_html(as_text(table)) + "<h4>Paired differences</h4>"
                     + frame_html(as_text(differences)))


def budget_notes(config: dict[str, Any], runs: list[tuple[str, str, Path]]) -> list[str]:
    """One note per method: its initialisation and training budget (iterations or epochs, the
    SVM's grid) and the mean training wall time per fold, from the files each run wrote beside
    its metrics.json (MVFCNN: the stages' training CSVs; a baseline: its info.json)."""

    by_method: dict[str, list[Path]] = {}
    for method, _, path in runs:
        by_method.setdefault(method, []).append(Path(path).parent)
    notes = []
    for method, directories in by_method.items():
        seconds: list[float] = []
        info: dict[str, Any] = {}
        if method == MVFCNN:
            fcn = config["fcn"]
            text = (f"FCN iterations {iterations_text(fcn)}, batch {fcn['batch_size']} "
                    f"{config['tiles']['size']} px tiles, from its fold's trunk (pretraining "
                    f"{config['pretrain']['iterations']} iterations x "
                    f"{config['pretrain']['batch_size']} patches)")
            for directory in directories:
                stages = [csv_seconds(directory / f"train_{s}.csv") for s in fcn["stages"]]
                if all(t is not None for t in stages):
                    seconds.append(sum(t for t in stages if t is not None))
        else:
            for directory in directories:
                info_path = directory / "info.json"
                if info_path.is_file():
                    info = json.loads(info_path.read_text())
                    if info.get("train_seconds") is not None:
                        seconds.append(float(info["train_seconds"]))
            text = (f"{baseline_budget_words(config, method)}; "
                    f"{baseline_init_text(config, method, info)}")
        if seconds:
            text += f"; training {seconds_text(float(np.mean(seconds)))} per fold (mean)"
        notes.append(f"{LABELS.get(method, method)}: {text}")
    return notes
