"""The paper's Tables 1-6 with our numbers beside the paper's, plus a one-page summary.

Inputs are the evaluation files of docs/CONTRACTS.md (metrics.json, confusion.csv per
method/variant/modality) and the paper's numbers from ``workflow/resources/paper_tables.yaml``
(the only place paper values live). Every table always carries all of the paper's rows: a run
that this configuration did not make (or that has not produced its metrics yet) shows an empty
``ours`` and the paper's value; runs the paper does not have (e.g. ``scratch_balanced_aug``)
are appended with an empty ``paper``.

Class-wise paper numbers (Tables 4 and 6) are matched to the configured classes BY INDEX
(paper's matrix/martensite/tempered martensite/bainite/pearlite = our indices 0..4); with a
different number of classes the paper's class-wise cells stay empty.

All values are percentages rounded to 2 decimals; empty cells are NaN in the frames and empty in
the CSV files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.config import ClassSet
from mvfcnn.errors import InputError
from mvfcnn.metrics import NOT_SEGMENTED_LABEL

PREFERRED_VARIANT = "ft_balanced_aug"
TABLE3_METHODS = ("cifarnet", "vgg19_svm", "vgg16", "mvfcnn")
PIXEL_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")
PIXEL_LABELS = {"pixel_accuracy": "pixel acc.", "mean_accuracy": "mean acc.",
                "mean_iu": "mean IU", "fw_iu": "f.w. IU"}
TITLES = {
    "table1": "Table 1. Object classification accuracy (%), SEM: object-based baselines vs MVFCNN",
    "table2": "Table 2. MVFCNN training data and strategy vs test object accuracy (%), SEM",
    "table3": "Table 3. Object classification accuracy (%), LOM vs SEM",
    "table4": "Table 4. Object confusion matrix of the best MVFCNN (rows predicted, columns "
              "actual)",
    "table5": "Table 5. Pixel-wise segmentation metrics (%) of the FCN configurations",
    "table6": "Table 6. Per-class pixel accuracy (%) of the FCN configurations",
}
TABLE_NAMES = tuple(TITLES)


# ----------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class Run:
    """One evaluated (method, variant, modality): its metrics and where it lives."""

    method: str
    variant: str | None
    modality: str
    directory: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return _pct(self.metrics.get("object_accuracy"))


def load_paper(path: str | Path) -> dict[str, Any]:
    """The paper's numbers (workflow/resources/paper_tables.yaml)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise InputError("paper tables file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML ({err})", path=path) from err
    missing = [k for k in ("table1", "table2", "table3", "table4", "table5", "table6")
               if k not in (data or {})]
    if missing:
        raise InputError(f"paper tables file lacks {missing}", path=path)
    return data


def mvfcnn_runs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(variant, modality) pairs the config runs; mirrors common.smk's ``mvfcnn_runs``."""
    run = config.get("run", {})
    combos = run.get("combinations")
    if combos:
        return [(c["variant"], c["modality"]) for c in combos]
    return [(v, m) for v in run.get("variants", []) for m in run.get("modalities", [])]


def baseline_runs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, modality) pairs of the configured object-based baselines."""
    run = config.get("run", {})
    return [(b, m) for b in run.get("baselines", []) for m in run.get("baseline_modalities", [])]


def collect_runs(results_dir: str | Path, config: dict[str, Any]) -> dict[tuple, Run]:
    """Metrics of every configured run that exists, keyed (method, variant, modality).

    A configured run without metrics.json is left out (its rows print the paper value only);
    a metrics.json that cannot be parsed is an error, since it means a broken upstream job.
    """
    from mvfcnn.io import read_json

    results_dir = Path(results_dir)
    runs: dict[tuple, Run] = {}
    wanted = [("mvfcnn", v, m, results_dir / "mvfcnn" / v / m) for v, m in mvfcnn_runs(config)]
    wanted += [(b, None, m, results_dir / "baselines" / b / m) for b, m in baseline_runs(config)]
    for method, variant, modality, directory in wanted:
        path = directory / "metrics.json"
        if not path.exists():
            print(f"mvfcnn tables: no {path}; its rows show the paper's value only",
                  file=sys.stderr)
            continue
        runs[(method, variant, modality)] = Run(method, variant, modality, directory,
                                                read_json(path))
    return runs


def best_variant(runs: dict[tuple, Run], modality: str = "sem") -> tuple[str | None, str]:
    """The MVFCNN variant standing for "MVFCNN" in Tables 1, 3, 4: the paper's best
    configuration when it was run, else the highest object accuracy. Returns (variant, why)."""
    available = {k[1]: r for k, r in runs.items() if k[0] == "mvfcnn" and k[2] == modality}
    if not available:
        return None, f"no MVFCNN run on {modality.upper()}"
    if PREFERRED_VARIANT in available:
        return PREFERRED_VARIANT, f"{PREFERRED_VARIANT} (the paper's best configuration)"
    scored = sorted(available.items(),
                    key=lambda kv: (-_nan_to(kv[1].accuracy, -1.0), kv[0]))
    variant = scored[0][0]
    return variant, (f"{variant} (best object accuracy among the configured variants "
                     f"{sorted(available)}; {PREFERRED_VARIANT} was not run)")


def best_runs(runs: dict[tuple, Run]) -> dict[str, dict[str, str | None]]:
    """``best_variant`` for every modality that has MVFCNN runs: {modality: {variant, why}}."""
    modalities = sorted({key[2] for key in runs if key[0] == "mvfcnn"})
    return {m: dict(zip(("variant", "why"), best_variant(runs, m), strict=True))
            for m in modalities}


def read_best_run(path: str | Path, modality: str = "sem") -> tuple[str | None, str]:
    """(variant, why) from the ``best-run`` output (``results/best.json``)."""
    from mvfcnn.io import read_json

    entry = read_json(path).get(modality)
    if entry is None:
        return None, f"no MVFCNN run on {modality.upper()}"
    return entry["variant"], entry["why"]


def best_run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mvfcnn best-run",
        description="Decide once which MVFCNN variant stands for 'MVFCNN' in the report, per "
                    "modality (the paper's best configuration if run, else the best object "
                    "accuracy), and write it as JSON for the figure jobs.")
    add_report_args(parser)
    parser.add_argument("--out", required=True, help="output JSON (results/best.json)")
    args = parser.parse_args(argv)

    from mvfcnn.io import write_json

    runs = collect_runs(args.results_dir, load_config_arg(args.config_json))
    write_json(args.out, best_runs(runs))
    print(f"mvfcnn best-run: wrote {args.out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# Small helpers


def _pct(value: Any) -> float:
    """Fraction -> percent rounded to 2 decimals; None/nan -> nan."""
    if value is None:
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return round(100.0 * value, 2) if math.isfinite(value) else math.nan


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _nan_to(value: float, default: float) -> float:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _compact(value: Any) -> str:
    """A config value for prose: {32s: 1e-3, ...} -> "32s 0.001, 16s 0.0001"."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _iterations(fcn: dict[str, Any]) -> str:
    iters = fcn.get("iterations")
    if isinstance(iters, dict):
        stages = fcn.get("stages") or list(iters)
        return "/".join(str(iters.get(s, "?")) for s in stages) + f" ({'/'.join(stages)})"
    return "" if iters is None else str(iters)


def _train_info(directory: Path, variant: str | None, modality: str) -> str:
    """Training images and tile count, read from the tile index when it exists."""
    if variant is None:
        return ""
    tiles = directory.parent.parent.parent / "tiles" / variant / f"{modality}.csv"
    if not tiles.exists():
        return ""
    try:
        frame = pd.read_csv(tiles, usecols=["sample"])
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return ""
    return f"{frame['sample'].nunique()} train images ({len(frame)} tiles)"


def _test_info(run: Run) -> str:
    objects = run.directory / "objects.csv"
    parts = []
    if objects.exists():
        try:
            samples = pd.read_csv(objects, usecols=["sample"])["sample"].nunique()
            parts.append(f"{samples} test images")
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            pass
    if run.metrics.get("n_objects") is not None:
        parts.append(f"{run.metrics['n_objects']} test objects")
    return ", ".join(parts)


def variant_settings(config: dict[str, Any], variant: str) -> dict[str, Any]:
    return dict(config.get("variants", {}).get(variant, {}))


def describe_run(run: Run | None, config: dict[str, Any]) -> str:
    """The configuration that produced ``run``: variant, modality, init, network, tiles,
    iterations and image counts (from the config and the run's own files)."""
    if run is None:
        return ""
    parts = [f"{run.modality.upper()}"]
    if run.method == "mvfcnn" and run.variant is not None:
        settings = variant_settings(config, run.variant)
        fcn = config.get("fcn", {})
        parts[0] = f"{run.variant} / {run.modality.upper()}"
        parts.append(f"init={settings.get('pretrained', '?')}")
        parts.append(f"balanced={str(settings.get('balanced', '?')).lower()}")
        parts.append(f"augment={str(settings.get('augment', '?')).lower()}")
        parts.append(f"VGG16 width x{fcn.get('width', 1.0)}, fc {fcn.get('fc_channels', 4096)}")
        parts.append(f"tile {config.get('tiles', {}).get('size', '?')} px")
        parts.append(f"iterations {_iterations(fcn)}")
        parts.append(_train_info(run.directory, run.variant, run.modality))
    else:
        settings = baseline_settings(config, run.method)
        parts += [f"{k}={settings[k]}" for k in BASELINE_KEYS if k in settings]
        info = run.directory / "info.json"
        if info.exists():
            try:
                n_train = json.loads(info.read_text()).get("n_train")
            except (OSError, json.JSONDecodeError):
                n_train = None
            if n_train is not None:
                parts.append(f"{n_train} train objects")
    parts.append(_test_info(run))
    return "; ".join(p for p in parts if p)


BASELINE_KEYS = ("pretrained", "crop_size", "epochs", "init")


def baseline_settings(config: dict[str, Any], method: str) -> dict[str, Any]:
    """The effective settings of one baseline: its defaults (mvfcnn.baselines.run) updated by
    the config's ``baselines`` section, flattened to the top level plus the method's section."""
    base = dict(config.get("baselines") or {})
    try:
        from mvfcnn.baselines.run import merged_params

        base = merged_params(base)
    except ImportError:  # the baselines package is optional for the tables
        pass
    flat = {k: v for k, v in base.items() if not isinstance(v, dict | list)}
    flat.update({k: v for k, v in (base.get(method) or {}).items()
                 if not isinstance(v, dict | list)})
    return flat


def _strategy_words(settings: dict[str, Any]) -> str:
    pretrained = str(settings.get("pretrained", "none"))
    if pretrained == "none":
        return "from scratch"
    if pretrained == "patches":
        return "fine tuning (trunk pretrained on labelled training patches, ImageNet stand-in)"
    return f"fine tuning ({pretrained} init)"


def _data_words(settings: dict[str, Any], modality: str) -> str:
    balanced, augment = settings.get("balanced"), settings.get("augment")
    words = ("Balanced and augmented" if balanced and augment else "Balanced" if balanced
             else "Augmented unbalanced" if augment else "Unbalanced")
    return f"{words} {modality.upper()}"


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
        rows.append({"variant": variant, "training_data": _data_words(settings, "sem"),
                     "strategy": _strategy_words(settings),
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
            row[f"{modality}_paper"] = _num(value)
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
    names = [classes.names[i] for i in classes.foreground]
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
    names = [classes.names[i] for i in classes.foreground]
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
                          list(not_seg), _num(run.metrics.get("not_segmented")),
                          _pct(run.metrics.get("object_accuracy_segmented")),
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
            "balanced": bool(settings.get("balanced", False)),
            "augmented": bool(settings.get("augment", False)),
            "strategy": "scratch" if str(settings.get("pretrained", "none")) == "none"
            else "fine tuning", "variant": variant, "modality": modality}


def table5(runs: dict[tuple, Run], config: dict[str, Any], paper: dict[str, Any]) -> pd.DataFrame:
    """FCN configurations x pixel acc., mean acc., mean IU, f.w. IU (percent)."""
    rows = []
    for entry, variant, modality in _config_rows(paper["table5"], config):
        run = runs.get(("mvfcnn", variant, modality))
        pixel = (run.metrics.get("pixel") or {}) if run else {}
        row = _key_columns(entry, variant, modality, config)
        for metric in PIXEL_METRICS:
            row[f"{metric}_ours"] = _pct(pixel.get(metric))
            row[f"{metric}_paper"] = _num(entry.get(metric)) if entry else math.nan
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
            row[f"{name}_ours"] = _pct(per_class.get(name))
            row[f"{name}_paper"] = (_num(entry["per_class"][index]) if entry and match
                                    else math.nan)
        row["configuration"] = describe_run(run, config)
        rows.append(row)
    return pd.DataFrame(rows)


def build_tables(results_dir: str | Path, classes: ClassSet, config: dict[str, Any],
                 paper: dict[str, Any], *, runs: dict[tuple, Run] | None = None
                 ) -> dict[str, pd.DataFrame]:
    """All six tables, keyed "table1".."table6"; never fails on missing runs."""
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


# ----------------------------------------------------------------------------------------------
# Rendering


def _cell(value: Any, *, integer: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "✓" if value else "-"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        return f"{value:.0f}" if integer else f"{value:.2f}"
    if isinstance(value, int | np.integer):
        return str(value)
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, *, integer_rows: pd.Series | None = None) -> str:
    """A GitHub-markdown table; empty cells for NaN, 2 decimals, ✓/- for booleans."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    align = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c])
                           and not pd.api.types.is_bool_dtype(frame[c]) else "---"
                           for c in frame.columns) + "|"
    lines = [header, align]
    for pos, (_, row) in enumerate(frame.iterrows()):
        integer = bool(integer_rows.iloc[pos]) if integer_rows is not None else False
        lines.append("| " + " | ".join(_cell(v, integer=integer) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _configuration_notes(frame: pd.DataFrame, key: list[str]) -> str:
    lines = []
    for _, row in frame.iterrows():
        text = row.get("configuration", "")
        if isinstance(text, str) and text:
            label = " / ".join(str(row[k]) for k in key if k in row)
            lines.append(f"- **{label}**: {text}")
    if not lines:
        return "Configuration of ours: no run of this table exists yet in this configuration.\n"
    return "Configuration that produced ours:\n\n" + "\n".join(lines) + "\n"


def _pretty(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    return frame[list(columns)].rename(columns=columns)


def _pair_columns(frame: pd.DataFrame, keys: list[str], labels: dict[str, str]
                  ) -> dict[str, str]:
    out = {k: k for k in keys}
    for stem, label in labels.items():
        out[f"{stem}_ours"] = f"{label} (ours)"
        out[f"{stem}_paper"] = f"{label} (paper)"
    return {k: v for k, v in out.items() if k in frame.columns}


def table4_markdown(frame: pd.DataFrame) -> str:
    """Table 4 as the paper prints it: count and column percentage in one cell, one block per
    source (ours, paper)."""
    names = [c for c in frame.columns
             if c not in ("source", "predicted", "quantity", "class_precision", "overall")]
    parts = []
    for source in ("ours", "paper"):
        block = frame[frame["source"] == source]
        title = "Ours" if source == "ours" else "Paper (Azimi et al. 2018, Table 4)"
        lines = [f"**{title}**", "",
                 "| predicted \\ actual | " + " | ".join(names) + " | class precision |",
                 "|---|" + "---:|" * (len(names) + 1)]
        for name in names:
            count = block[(block["predicted"] == name) & (block["quantity"] == "count")].iloc[0]
            pct = block[(block["predicted"] == name) & (block["quantity"] == "percent")].iloc[0]
            cells = []
            for n in names:
                c, p = _cell(count[n], integer=True), _cell(pct[n])
                cells.append(f"{c} ({p}%)" if c and p else c or (f"({p}%)" if p else ""))
            prec = _cell(pct["class_precision"])
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {prec + '%' if prec else ''} |")
        recall = block[block["predicted"] == "class_recall"].iloc[0]
        lines.append("| class recall | " + " | ".join(
            (_cell(recall[n]) + "%") if _cell(recall[n]) else "" for n in names) + " | |")
        single = {r["predicted"]: r["overall"] for _, r in block.iterrows()
                  if r["predicted"] in (NOT_SEGMENTED_LABEL, "total_accuracy", "object_accuracy")}
        lines += ["",
                  f"- total accuracy (segmented objects only): "
                  f"{_cell(single.get('total_accuracy')) or 'n/a'}%",
                  f"- not-segmented objects (excluded above): "
                  f"{_cell(single.get(NOT_SEGMENTED_LABEL), integer=True) or 'n/a'}",
                  f"- object accuracy (not-segmented counted wrong, = Table 1): "
                  f"{_cell(single.get('object_accuracy')) or 'n/a'}%"]
        not_seg = block[block["predicted"] == NOT_SEGMENTED_LABEL].iloc[0]
        per_class = [f"{n} {_cell(not_seg[n], integer=True)}" for n in names
                     if _cell(not_seg[n], integer=True)]
        if per_class:
            lines.append("- not-segmented per actual class: " + ", ".join(per_class))
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def render_markdown(name: str, frame: pd.DataFrame, notes: str = "") -> str:
    """One table file: title, the table (ours beside the paper), the configuration notes."""
    title = f"# {TITLES[name]}\n\n"
    if name == "table4":
        body = table4_markdown(frame)
    elif name == "table1":
        body = markdown_table(_pretty(frame, {"label": "method", "type": "type",
                                              "strategy": "training strategy", "ours": "ours",
                                              "paper": "paper"}))
        body += "\n" + _configuration_notes(frame, ["method"])
    elif name == "table2":
        body = markdown_table(_pretty(frame, {"variant": "variant",
                                              "training_data": "training data",
                                              "strategy": "training strategy", "ours": "ours",
                                              "paper": "paper"}))
        body += "\n" + _configuration_notes(frame, ["variant"])
    elif name == "table3":
        body = markdown_table(_pretty(frame, _pair_columns(
            frame, ["label", "input", "strategy"], {"lom": "LOM", "sem": "SEM"})))
        body += ("\nPaper SEM values of the object-based methods are from Table 1 (Table 3 "
                 "prints only MVFCNN on SEM).\n\n" + _configuration_notes(frame, ["method"]))
    elif name == "table5":
        body = markdown_table(_pretty(frame, _pair_columns(
            frame, ["data", "balanced", "augmented", "strategy", "variant"], PIXEL_LABELS)))
        body += "\n" + _configuration_notes(frame, ["variant", "modality"])
    else:
        stems = {c[:-len("_ours")]: c[:-len("_ours")] for c in frame.columns
                 if c.endswith("_ours")}
        body = markdown_table(_pretty(frame, _pair_columns(
            frame, ["data", "balanced", "augmented", "strategy", "variant"], stems)))
        body += "\n" + _configuration_notes(frame, ["variant", "modality"])
    return title + body + ("\n" + notes if notes else "")


def _md_to_html(markdown: str) -> str:
    """Tiny markdown -> HTML for the tables we write (headings, pipe tables, bullets, bold),
    so the Snakemake report can display them without extra dependencies."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text).replace("\\|", "|")
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)

    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [re.split(r"(?<!\\)\|", r.strip())[1:-1] for r in block]
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{inline(c.strip())}</th>" for c in rows[0])
                       + "</tr>")
            for row in rows[2:]:
                out.append("<tr>" + "".join(f"<td>{inline(c.strip())}</td>" for c in row)
                           + "</tr>")
            out.append("</table>")
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;"
             "margin:8px 0}th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}"
             "th{background:#eee}td:first-child,th:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head>"
            f"<body>{''.join(out)}</body></html>\n")


# ----------------------------------------------------------------------------------------------
# Summary page


def benchmark_seconds(results_dir: str | Path) -> tuple[float, int]:
    """Sum of the ``s`` column over every Snakemake benchmark TSV under results/benchmarks."""
    total, count = 0.0, 0
    for path in sorted(Path(results_dir, "benchmarks").rglob("*.tsv")):
        try:
            frame = pd.read_csv(path, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        if "s" in frame.columns:
            total += float(pd.to_numeric(frame["s"], errors="coerce").fillna(0).sum())
            count += 1
    return total, count


def _fmt(value: float, suffix: str = "%") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.2f}{suffix}"


def _delta(ours: float, paper: float) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (ours, paper)):
        return ""
    return f"{ours - paper:+.2f}"


def _hms(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


def summary_markdown(tables: dict[str, pd.DataFrame], results_dir: str | Path,
                     classes: ClassSet, config: dict[str, Any], paper: dict[str, Any], *,
                     runs: dict[tuple, Run] | None = None) -> str:
    """The page a reader opens first: key numbers ours vs paper and what differs."""
    if runs is None:
        runs = collect_runs(results_dir, config)
    best, why = best_variant(runs, "sem")
    setup = paper.get("setup", {})
    fcn = config.get("fcn", {})
    lines = ["# MVFCNN reproduction: ours vs Azimi et al. (2018)", ""]
    lines += [f"Paper numbers: {paper.get('source', 'paper_tables.yaml').strip()}", "",
              "Classes (from config): " + ", ".join(
                  f"{i} {n} ({c})" for i, n, c in zip(classes.indices, classes.names,
                                                      classes.colors, strict=True)), ""]
    lines += ["## Object classification accuracy (Table 1, SEM)", "",
              "| method | ours | paper | ours - paper |", "|---|---:|---:|---:|"]
    for _, row in tables["table1"].iterrows():
        lines.append(f"| {row['label']} | {_fmt(row['ours'])} | {_fmt(row['paper'])} | "
                     f"{_delta(row['ours'], row['paper'])} |")
    lines += ["", f"MVFCNN row = {why}.", ""]

    lines += ["## Best MVFCNN pixel metrics (Table 5)", ""]
    t5 = tables["table5"]
    ours_rows = t5[(t5["variant"] == best) & (t5["modality"] == "sem")] if best else t5.iloc[:0]
    paper_row = t5[(t5["variant"] == PREFERRED_VARIANT) & (t5["modality"] == "sem")]
    lines += ["| metric | ours | paper (ft_balanced_aug, SEM) |", "|---|---:|---:|"]
    for metric in PIXEL_METRICS:
        ours = ours_rows[f"{metric}_ours"].iloc[0] if len(ours_rows) else math.nan
        pap = paper_row[f"{metric}_paper"].iloc[0] if len(paper_row) else math.nan
        lines.append(f"| {PIXEL_LABELS[metric]} | {_fmt(ours)} | {_fmt(pap)} |")
    t4 = tables["table4"]
    single = {(r["source"], r["predicted"]): r["overall"] for _, r in t4.iterrows()}
    missed = {source: _cell(single.get((source, NOT_SEGMENTED_LABEL)), integer=True) or "n/a"
              for source in ("ours", "paper")}
    lines += ["", f"Table 4 total accuracy (segmented objects only): ours "
              f"{_fmt(single.get(('ours', 'total_accuracy'), math.nan))}, paper "
              f"{_fmt(single.get(('paper', 'total_accuracy'), math.nan))}; not-segmented "
              f"objects: ours {missed['ours']}, paper {missed['paper']}.",
              ""]

    lines += ["## What differs from the paper", ""]
    samples = config.get("samples", "synthetic")
    best_run = runs.get(("mvfcnn", best, "sem")) if best else None
    if samples == "synthetic":
        syn = config.get("synthetic", {})
        data = (f"synthetic micrographs generated from seed {config.get('seed', 0)} "
                f"({syn.get('height', '?')}x{syn.get('width', '?')} px, textured constituents in "
                f"a ferrite-like matrix, a degraded and displaced LOM view)")
    else:
        data = f"the sample sheet {samples}"
    counts = "; ".join(p for p in (_train_info(best_run.directory, best, "sem") if best_run
                                   else "", _test_info(best_run) if best_run else "") if p)
    lines.append(f"- **Data**: ours: {data}" + (f" ({counts})" if counts else "")
                 + f". Paper: {setup.get('images', '?')} real LOM/SEM pairs of "
                 f"~{'x'.join(str(v) for v in setup.get('image_size_px', []))} px, "
                 f"{setup.get('train_images', '?')} train / {setup.get('test_images', '?')} test "
                 f"images, {setup.get('train_objects', '?')} train / "
                 f"{setup.get('test_objects', '?')} test objects.")
    width, fc = fcn.get("width", 1.0), fcn.get("fc_channels", 4096)
    net = ("the full VGG16 widths" if float(width) == 1.0 and int(fc) == 4096 else
           f"a width-reduced VGG16 (channels x{width}, fc6/fc7 {fc} channels) sized for a CPU")
    lines.append(f"- **Network**: ours: FCN-{' -> '.join(fcn.get('stages', []))} on {net}. "
                 f"Paper: {setup.get('network', 'full VGG16')}.")
    variant_cfg = variant_settings(config, best) if best else {}
    init = variant_cfg.get("pretrained", "n/a")
    init_words = {"none": "random initialisation (training from scratch, the offline default: "
                          "ImageNet weights need a download)",
                  "imagenet": "ImageNet VGG16 weights from torchvision",
                  "patches": "the trunk pretrained on labelled patches of the training images "
                             "(pretrain_trunk rule; the offline stand-in for ImageNet, which "
                             "cannot be downloaded here)"}.get(str(init),
                                                                         f"weights from {init}")
    lines.append(f"- **Pretraining**: ours ({best or 'no run'}): {init_words}. "
                 f"Paper: {setup.get('init', 'ImageNet')}.")
    lines.append(f"- **Iterations**: ours: {_iterations(fcn) or 'n/a'}, batch "
                 f"{fcn.get('batch_size', '?')}, loss {fcn.get('loss', '?')}, lr "
                 f"{_compact(fcn.get('lr', '?'))}. Paper: {setup.get('iterations', '?')} "
                 f"iterations, batch {setup.get('batch_size', '?')}, lr "
                 f"{_compact(setup.get('learning_rates', '?'))}, loss summed over pixels "
                 f"({setup.get('training_time', '')}).")
    lines.append(f"- **Tile size**: ours: training {config.get('tiles', {}).get('size', '?')} px, "
                 f"inference {config.get('inference', {}).get('tile_size', '?')} px. Paper: "
                 f"{setup.get('tile_size', '?')} px.")
    methods = [b for b in dict.fromkeys(b for b, _ in baseline_runs(config))]
    if methods:
        described = []
        for method in methods:
            settings = baseline_settings(config, method)
            keys = [k for k in ("pretrained", "epochs") if k in settings]
            described.append(method + (" (" + ", ".join(f"{k}={settings[k]}" for k in keys) + ")"
                                       if keys else ""))
        crop = baseline_settings(config, methods[0]).get("crop_size", "?")
        lines.append(f"- **Object baselines**: ours: crops warped to {crop} px; "
                     f"{'; '.join(described)}. Paper: {setup.get('baseline_crop_size', '?')} px; "
                     f"{setup.get('baselines', '')}.")
    seconds, jobs = benchmark_seconds(results_dir)
    if jobs:
        lines.append(f"- **Wall time**: {_hms(seconds)} (h:m:s) summed over {jobs} benchmarked "
                     f"jobs (results/benchmarks). Paper: {setup.get('training_time', '?')} "
                     f"training, {setup.get('inference_time_s_per_1000px_tile', '?')} s per "
                     f"1000x1000 tile inference.")
    missing = [f"{m}/{v or '-'}/{mod}" for m, v, mod in
               [("mvfcnn", v, m) for v, m in mvfcnn_runs(config)]
               + [(b, None, m) for b, m in baseline_runs(config)]
               if (m, v, mod) not in runs]
    if missing:
        lines.append(f"- **Missing runs** (configured, no metrics.json yet): {', '.join(missing)}.")
    lines += ["", "Full tables: " + ", ".join(f"[{n}]({n}.md)" for n in TABLE_NAMES)
              + ". Paper rows that this configuration did not run have an empty *ours*.",
              "Figures (results/figures): fig4_examples, fig6_segmentation, fig7_maxvoting, "
              "fig8a_lom_vs_sem, fig8b_noise (PNG); `snakemake --report results/report.html` "
              "collects tables and figures with captions.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Writing and CLI


def class_match_notes(paper: dict[str, Any], classes: ClassSet) -> dict[str, str]:
    """How the paper's class-wise columns (Tables 4 and 6) map onto the configured classes."""
    notes = {}
    for name, paper_names, ours in (
            ("table4", paper["table4"].get("classes", []),
             [classes.names[i] for i in classes.foreground]),
            ("table6", paper.get("table6_classes", []), list(classes.names))):
        if len(paper_names) == len(ours):
            pairs = ", ".join(f"{p} -> {o}" for p, o in zip(paper_names, ours, strict=True))
            notes[name] = (f"The paper's class columns are matched to the configured classes by "
                           f"index: {pairs}.\n")
        else:
            notes[name] = (f"The configured classes ({', '.join(ours)}) differ in number from the "
                           f"paper's ({', '.join(paper_names)}), so the paper's class-wise cells "
                           f"are empty.\n")
    return notes


def write_tables(tables: dict[str, pd.DataFrame], outdir: str | Path, *, html: bool = True,
                 notes: dict[str, str] | None = None) -> list[Path]:
    """table{N}.csv + .md (+ .html for the Snakemake report), each written atomically;
    ``notes`` adds a footer per table name."""
    from mvfcnn.io import write_table, write_text

    outdir = Path(outdir)
    written = []
    for name, frame in tables.items():
        write_table(outdir / f"{name}.csv", frame)
        markdown = render_markdown(name, frame, (notes or {}).get(name, ""))
        write_text(outdir / f"{name}.md", markdown)
        written += [outdir / f"{name}.csv", outdir / f"{name}.md"]
        if html:
            write_text(outdir / f"{name}.html", _md_to_html(markdown))
            written.append(outdir / f"{name}.html")
    return written


def load_config_arg(text: str) -> dict[str, Any]:
    """--config-json: inline JSON, or a path to a JSON/YAML file."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"--config-json is not valid JSON ({err})") from err
    path = Path(text)
    if not path.exists():
        raise InputError("config file not found", path=path)
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"cannot parse config ({err})", path=path) from err


def add_report_args(parser: argparse.ArgumentParser) -> None:
    """The inputs every report CLI (tables, figures) reads: --results-dir and --config-json."""
    parser.add_argument("--results-dir", default="results", help="workflow results folder")
    parser.add_argument("--config-json", required=True,
                        help="the resolved workflow config as JSON (or a JSON/YAML file path)")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mvfcnn tables",
        description="Tables 1-6 of the paper with our numbers beside the paper's, and "
                    "summary.md. Missing runs give rows with an empty 'ours'.")
    add_report_args(parser)
    parser.add_argument("--paper", default="workflow/resources/paper_tables.yaml",
                        help="the paper's numbers (YAML)")
    parser.add_argument("--outdir", default="results/tables", help="output folder")
    parser.add_argument("--no-html", action="store_true", help="skip the .html renderings")
    args = parser.parse_args(argv)

    from mvfcnn.io import write_text

    config = load_config_arg(args.config_json)
    classes = ClassSet.from_config(config)
    paper = load_paper(args.paper)
    runs = collect_runs(args.results_dir, config)
    tables = build_tables(args.results_dir, classes, config, paper, runs=runs)
    written = write_tables(tables, args.outdir, html=not args.no_html,
                           notes=class_match_notes(paper, classes))
    summary = summary_markdown(tables, args.results_dir, classes, config, paper, runs=runs)
    write_text(Path(args.outdir) / "summary.md", summary)
    if not args.no_html:
        write_text(Path(args.outdir) / "summary.html", _md_to_html(summary))
    print(f"mvfcnn tables: wrote {len(written)} table files and summary.md to {args.outdir}",
          file=sys.stderr)
    return 0
