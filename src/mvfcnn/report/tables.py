"""The paper's Tables 1-6 with our numbers beside the paper's: the frames, and the
``mvfcnn tables`` / ``mvfcnn best-run`` commands.

Inputs are the evaluation files of docs/CONTRACTS.md (metrics.json, confusion.csv per
method/variant/modality) and the paper's numbers from ``workflow/resources/paper_tables.yaml``
(the only place paper values live). Every table always carries all of the paper's rows: a run
that this configuration did not make (or that has not produced its metrics yet) shows an empty
``ours`` and the paper's value; runs the paper does not have (e.g. ``scratch_balanced_aug``)
are appended with an empty ``paper``.

The paper's numbers appear only when the configured classes are the paper's by name
(:func:`paper_classes_match`; ``_`` = space, any case): on another dataset (e.g.
background/oxide/crack) ``mvfcnn tables`` drops every paper column, Table 4's paper block and the
rows only the paper fills (:func:`without_paper`), and summary.md says why.
Class-wise paper numbers (Tables 4 and 6) are matched to the configured classes BY INDEX
(paper's matrix/martensite/tempered martensite/bainite/pearlite = our indices 0..4); with a
different number of classes the paper's class-wise cells stay empty.

All values are percentages rounded to 2 decimals; empty cells are NaN in the frames and empty in
the CSV files. Markdown/HTML rendering lives in :mod:`mvfcnn.report.rendering`, the summary
page's prose in :mod:`mvfcnn.report.summary`, the words about each run's budget in
:mod:`mvfcnn.report.describe`, and which runs exist in :mod:`mvfcnn.report.collect`. Functions
here read a config filled from the schema (:func:`filled_config`), so no setting has a fallback
of its own.
"""


from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.runs import (
    PREFERRED_VARIANT,
    filled_config,
    mvfcnn_runs,
    variant_settings,
)
from mvfcnn.evaluation.metrics import NOT_SEGMENTED_LABEL
from mvfcnn.report.collect import Run, as_percent, best_variant, collect_runs, number_or_nan
from mvfcnn.report.describe import data_words, describe_run, strategy_words
from mvfcnn.report.rendering import (
    TITLES,
)

TABLE3_METHODS = ("cifarnet", "vgg19_svm", "vgg16", "mvfcnn")
PIXEL_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")
TABLE_NAMES = tuple(TITLES)


# ----------------------------------------------------------------------------------------------
# The tables


def table1(runs: dict[tuple, Run], config: dict[str, Any], paper: dict[str, Any]) -> pd.DataFrame:
    """Methods x object accuracy on SEM; MVFCNN is the best configured variant."""
    best, why = best_variant(runs, "sem")
    rows = []
    for entry in paper["table1"]:
        method = entry["method"]
        run = runs.get(("mvfcnn", best, "sem")) if method == "mvfcnn" else runs.get(
            (method, None, "sem"))
        config_text = describe_run(run, config)
        if method == "mvfcnn":
            config_text = f"best variant: {why}" + (f"; {config_text}" if config_text else "")
        rows.append({"method": method, "label": entry["label"], "type": entry["type"],
                     "strategy": entry["strategy"],
                     "ours": run.accuracy if run else math.nan,
                     "paper": float(entry["accuracy"]), "configuration": config_text})
    return pd.DataFrame(rows)


def table2(runs: dict[tuple, Run], config: dict[str, Any], paper: dict[str, Any]) -> pd.DataFrame:
    """MVFCNN variants x test object accuracy (SEM); extra configured variants appended."""
    rows = []
    seen = set()
    for entry in paper["table2"]:
        run = runs.get(("mvfcnn", entry["variant"], "sem"))
        seen.add(entry["variant"])
        rows.append({"variant": entry["variant"], "training_data": entry["data"],
                     "strategy": entry["strategy"], "ours": run.accuracy if run else math.nan,
                     "paper": float(entry["accuracy"]), "configuration": describe_run(run, config)})
    for variant, modality in mvfcnn_runs(config):
        if modality != "sem" or variant in seen:
            continue
        seen.add(variant)
        settings = variant_settings(config, variant)
        run = runs.get(("mvfcnn", variant, "sem"))
        rows.append({"variant": variant, "training_data": data_words(settings, "sem"),
                     "strategy": strategy_words(settings),
                     "ours": run.accuracy if run else math.nan, "paper": math.nan,
                     "configuration": describe_run(run, config)})
    return pd.DataFrame(rows)


def _mvfcnn_for(runs: dict[tuple, Run], modality: str, preferred: str | None) -> Run | None:
    """The MVFCNN run shown for ``modality``: the preferred (SEM-best) variant when it ran on
    that modality, else the best variant there."""
    if preferred is not None and ("mvfcnn", preferred, modality) in runs:
        return runs[("mvfcnn", preferred, modality)]
    variant, _ = best_variant(runs, modality)
    return runs.get(("mvfcnn", variant, modality)) if variant else None


def table3(runs: dict[tuple, Run], config: dict[str, Any], paper: dict[str, Any]) -> pd.DataFrame:
    """LOM vs SEM per method. Paper LOM values from Table 3; paper SEM values from Table 3
    (MVFCNN) or Table 1 (baselines, which Table 3 does not repeat)."""
    lom_paper = {(e["method"], e["modality"]): e for e in paper["table3"]}
    sem_paper = {e["method"]: e for e in paper["table1"]}
    best_sem, _ = best_variant(runs, "sem")
    preferred = PREFERRED_VARIANT if ("mvfcnn", PREFERRED_VARIANT, "lom") in runs else best_sem
    rows = []
    for method in TABLE3_METHODS:
        entry = lom_paper.get((method, "lom"), {})
        row: dict[str, Any] = {"method": method, "label": entry.get("label", method),
                               "input": entry.get("input", ""),
                               "strategy": entry.get("strategy", "")}
        configs = []
        for modality in ("lom", "sem"):
            if method == "mvfcnn":
                run = _mvfcnn_for(runs, modality, preferred if modality == "lom" else best_sem)
            else:
                run = runs.get((method, None, modality))
            if modality == "sem" and method == "mvfcnn":
                value = lom_paper.get(("mvfcnn", "sem"), {}).get("accuracy")
            elif modality == "sem":
                value = sem_paper.get(method, {}).get("accuracy")
            else:
                value = entry.get("accuracy")
            row[f"{modality}_ours"] = run.accuracy if run else math.nan
            row[f"{modality}_paper"] = number_or_nan(value)
            if run is not None:
                configs.append(describe_run(run, config))
        row["configuration"] = " | ".join(configs)
        rows.append(row)
    return pd.DataFrame(rows)


def _read_confusion(path: Path, classes: ClassSet) -> pd.DataFrame | None:
    """confusion.csv -> counts indexed by predicted name, columns = foreground class names."""
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path, index_col=0)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"cannot read confusion table ({err})", path=path) from err
    frame.index = frame.index.astype(str)
    names = list(classes.foreground_names)
    frame = frame.reindex(index=[*names, NOT_SEGMENTED_LABEL], columns=names)
    return frame.fillna(0).astype(np.int64)


def _t4_block(source: str, names: list[str], counts: np.ndarray | None,
              percent: np.ndarray | None, recall: list | None, precision: list | None,
              not_seg: list | None, not_seg_total: float, total_acc: float,
              overall: float) -> list[dict[str, Any]]:
    k = len(names)
    empty = [math.nan] * k
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        counts_row = list(counts[i]) if counts is not None else empty
        pct_row = list(percent[i]) if percent is not None else empty
        prec = precision[i] if precision is not None else math.nan
        rows.append({"source": source, "predicted": name, "quantity": "count",
                     **dict(zip(names, counts_row, strict=True)),
                     "class_precision": math.nan, "overall": math.nan})
        rows.append({"source": source, "predicted": name, "quantity": "percent",
                     **dict(zip(names, pct_row, strict=True)),
                     "class_precision": prec, "overall": math.nan})
    rows.append({"source": source, "predicted": NOT_SEGMENTED_LABEL, "quantity": "count",
                 **dict(zip(names, not_seg if not_seg is not None else empty, strict=True)),
                 "class_precision": math.nan, "overall": not_seg_total})
    rows.append({"source": source, "predicted": "class_recall", "quantity": "percent",
                 **dict(zip(names, recall if recall is not None else empty, strict=True)),
                 "class_precision": math.nan, "overall": math.nan})
    rows.append({"source": source, "predicted": "total_accuracy", "quantity": "percent",
                 **dict(zip(names, empty, strict=True)), "class_precision": math.nan,
                 "overall": total_acc})
    rows.append({"source": source, "predicted": "object_accuracy", "quantity": "percent",
                 **dict(zip(names, empty, strict=True)), "class_precision": math.nan,
                 "overall": overall})
    return rows


def table4(runs: dict[tuple, Run], config: dict[str, Any], paper: dict[str, Any],
           classes: ClassSet) -> pd.DataFrame:
    """Object confusion matrix of the best SEM MVFCNN and the paper's, in one long frame.

    ``source`` is ours/paper; ``predicted`` is a predicted class (a count row and a
    column-normalised percent row, precision on the percent row), ``not_segmented``,
    ``class_recall``, ``total_accuracy`` (segmented objects only, Table 4) and
    ``object_accuracy`` (not-segmented counted wrong, Table 1); the last three put their single
    value in ``overall``.
    """
    names = list(classes.foreground_names)
    best, _ = best_variant(runs, "sem")
    run = runs.get(("mvfcnn", best, "sem")) if best else None
    rows: list[dict[str, Any]] = []
    confusion = _read_confusion(run.directory / "confusion.csv", classes) if run else None
    if confusion is not None:
        segmented = confusion.loc[names].to_numpy(dtype=np.float64)
        col_sum = segmented.sum(axis=0)
        row_sum = segmented.sum(axis=1)
        diag = np.diag(segmented)
        with np.errstate(divide="ignore", invalid="ignore"):
            percent = np.where(col_sum > 0, 100.0 * segmented / np.where(col_sum > 0, col_sum, 1),
                               np.nan)
            recall = np.where(col_sum > 0, 100.0 * diag / np.where(col_sum > 0, col_sum, 1),
                              np.nan)
            precision = np.where(row_sum > 0, 100.0 * diag / np.where(row_sum > 0, row_sum, 1),
                                 np.nan)
        not_seg = confusion.loc[NOT_SEGMENTED_LABEL].to_numpy(dtype=np.float64)
        rows += _t4_block("ours", names, segmented, np.round(percent, 2),
                          list(np.round(recall, 2)), list(np.round(precision, 2)),
                          list(not_seg), number_or_nan(run.metrics.get("not_segmented")),
                          as_percent(run.metrics.get("object_accuracy_segmented")),
                          run.accuracy)
    else:
        rows += _t4_block("ours", names, None, None, None, None, None, math.nan, math.nan,
                          run.accuracy if run else math.nan)
    p4 = paper["table4"]
    match = len(p4["classes"]) == len(names)
    rows += _t4_block(
        "paper", names,
        np.asarray(p4["counts"], dtype=np.float64) if match else None,
        np.asarray(p4["percent"], dtype=np.float64) if match else None,
        [float(v) for v in p4["recall"]] if match else None,
        [float(v) for v in p4["precision"]] if match else None,
        None, float(p4["not_segmented"]), float(p4["total_accuracy"]),
        float(p4["overall_accuracy"]))
    return pd.DataFrame(rows)


def _config_rows(paper_rows: list[dict[str, Any]], config: dict[str, Any]
                 ) -> list[tuple[dict[str, Any] | None, str, str]]:
    """(paper entry or None, variant, modality) for Tables 5/6: the paper's rows, then the
    configured MVFCNN runs the paper does not have."""
    out: list[tuple[dict[str, Any] | None, str, str]] = []
    seen = set()
    for entry in paper_rows:
        out.append((entry, entry["variant"], entry["modality"]))
        seen.add((entry["variant"], entry["modality"]))
    for variant, modality in mvfcnn_runs(config):
        if (variant, modality) not in seen:
            seen.add((variant, modality))
            out.append((None, variant, modality))
    return out


def _key_columns(entry: dict[str, Any] | None, variant: str, modality: str,
                 config: dict[str, Any]) -> dict[str, Any]:
    if entry is not None:
        return {"network": "FCNN", "data": entry["data"], "balanced": bool(entry["balanced"]),
                "augmented": bool(entry["augmented"]), "strategy": entry["strategy"],
                "variant": variant, "modality": modality}
    settings = variant_settings(config, variant)
    return {"network": "FCNN", "data": modality.upper(),
            "balanced": bool(settings["balanced"]),
            "augmented": bool(settings["augment"]),
            "strategy": "scratch" if str(settings["pretrained"]) == "none"
            else "fine tuning", "variant": variant, "modality": modality}


def table5(runs: dict[tuple, Run], config: dict[str, Any], paper: dict[str, Any]) -> pd.DataFrame:
    """FCN configurations x pixel acc., mean acc., mean IU, f.w. IU (percent)."""
    rows = []
    for entry, variant, modality in _config_rows(paper["table5"], config):
        run = runs.get(("mvfcnn", variant, modality))
        pixel = (run.metrics.get("pixel") or {}) if run else {}
        row = _key_columns(entry, variant, modality, config)
        for metric in PIXEL_METRICS:
            row[f"{metric}_ours"] = as_percent(pixel.get(metric))
            row[f"{metric}_paper"] = number_or_nan(entry.get(metric)) if entry else math.nan
        row["configuration"] = describe_run(run, config)
        rows.append(row)
    return pd.DataFrame(rows)


def table6(runs: dict[tuple, Run], config: dict[str, Any], paper: dict[str, Any],
           classes: ClassSet) -> pd.DataFrame:
    """FCN configurations x per-class pixel accuracy; class columns named from the config."""
    match = len(paper.get("table6_classes", [])) == classes.num_classes
    rows = []
    for entry, variant, modality in _config_rows(paper["table6"], config):
        run = runs.get(("mvfcnn", variant, modality))
        per_class = ((run.metrics.get("pixel") or {}).get("per_class_accuracy") or {}) if run \
            else {}
        row = _key_columns(entry, variant, modality, config)
        for index, name in zip(classes.indices, classes.names, strict=True):
            row[f"{name}_ours"] = as_percent(per_class.get(name))
            row[f"{name}_paper"] = (number_or_nan(entry["per_class"][index]) if entry and match
                                    else math.nan)
        row["configuration"] = describe_run(run, config)
        rows.append(row)
    return pd.DataFrame(rows)


def build_tables(results_dir: str | Path, classes: ClassSet, config: dict[str, Any],
                 paper: dict[str, Any], *, runs: dict[tuple, Run] | None = None
                 ) -> dict[str, pd.DataFrame]:
    """All six tables, keyed "table1".."table6"; never fails on missing runs."""
    config = filled_config(config)
    if runs is None:
        runs = collect_runs(results_dir, config)
    return {
        "table1": table1(runs, config, paper),
        "table2": table2(runs, config, paper),
        "table3": table3(runs, config, paper),
        "table4": table4(runs, config, paper, classes),
        "table5": table5(runs, config, paper),
        "table6": table6(runs, config, paper, classes),
    }
