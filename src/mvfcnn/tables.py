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
the CSV files. Markdown/HTML rendering lives in :mod:`mvfcnn.rendering`, the summary page's prose
in :mod:`mvfcnn.summary`. Functions here read a config filled from the schema
(:func:`filled_config`), so no setting has a fallback of its own.
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

from mvfcnn import layout
from mvfcnn.baselines import MATCH, PRETRAINED_METHODS
from mvfcnn.config import ClassSet
from mvfcnn.errors import InputError
from mvfcnn.io import read_json, write_json
from mvfcnn.metrics import NOT_SEGMENTED_LABEL
from mvfcnn.rendering import (  # noqa: F401  (re-exported: the table API stays in one place)
    PIXEL_LABELS,
    TITLES,
    markdown_table,
    render_html,
    render_markdown,
    table4_markdown,
    write_tables,
)
from mvfcnn.runs import (  # noqa: F401  (re-exported: the table API stays in one place)
    PREFERRED_VARIANT,
    baseline_init,
    baseline_runs,
    compared_variant,
    filled_config,
    mvfcnn_runs,
    variant_settings,
)
from mvfcnn.settings import with_defaults

TABLE3_METHODS = ("cifarnet", "vgg19_svm", "vgg16", "mvfcnn")
PIXEL_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")
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
    #: the results folder the run was found in (its tile index and trunk live there too)
    results_dir: Path = Path(layout.RESULTS)

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


def _class_words(name: str) -> str:
    return str(name).lower().replace("_", " ").strip()


def paper_classes_match(classes: ClassSet, paper: dict[str, Any]) -> bool:
    """Whether this run classifies the paper's classes (matrix, martensite, tempered martensite,
    bainite, pearlite, by name in the paper's order): only then do its numbers compare."""
    return ([_class_words(n) for n in classes.names]
            == [_class_words(n) for n in paper.get("table6_classes", [])])


def without_paper(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables of a dataset that is not the paper's: no paper columns, no paper block in
    Table 4, and no row that only the paper fills (e.g. a variant this run did not train)."""
    out = {}
    for name, frame in tables.items():
        if name == "table4":
            out[name] = frame[frame["source"] != "paper"].reset_index(drop=True)
            continue
        ours = [c for c in frame.columns if c == "ours" or c.endswith("_ours")]
        kept = frame[frame[ours].notna().any(axis=1)] if ours else frame
        out[name] = kept.drop(columns=[c for c in frame.columns
                                       if c == "paper" or c.endswith("_paper")]
                              ).reset_index(drop=True)
    return out


def collect_runs(results_dir: str | Path, config: dict[str, Any]) -> dict[tuple, Run]:
    """Metrics of every configured run that exists, keyed (method, variant, modality).

    A configured run without metrics.json is left out (its rows print the paper value only);
    a metrics.json that cannot be parsed is an error, since it means a broken upstream job.
    """

    config = filled_config(config)
    results_dir = Path(results_dir)
    runs: dict[tuple, Run] = {}
    wanted = [("mvfcnn", v, m, layout.under(results_dir, layout.run_dir(False), variant=v,
                                            modality=m)) for v, m in mvfcnn_runs(config)]
    wanted += [(b, None, m, layout.under(results_dir, layout.BASELINE_DIR, method=b, modality=m))
               for b, m in baseline_runs(config)]
    for method, variant, modality, directory in wanted:
        path = directory / "metrics.json"
        if not path.exists():
            print(f"mvfcnn tables: no {path}; its rows show the paper's value only",
                  file=sys.stderr)
            continue
        runs[(method, variant, modality)] = Run(method, variant, modality, directory,
                                                read_json(path), results_dir)
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

    entry = read_json(path).get(modality)
    if entry is None:
        return None, f"no MVFCNN run on {modality.upper()}"
    return entry["variant"], entry["why"]


def best_run_cli(argv: list[str]) -> int:
    parser = report_parser(
        "mvfcnn best-run", "Decide once which MVFCNN variant stands for 'MVFCNN' in the report, "
                           "per modality (the paper's best configuration if run, else the best "
                           "object accuracy), and write it as JSON for the figure jobs.")
    parser.add_argument("--out", required=True, help="output JSON (results/best.json)")
    args = parser.parse_args(argv)

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


def iterations_text(fcn: dict[str, Any]) -> str:
    """Iterations per FCN stage for prose: "300/150/150 (32s/16s/8s)"."""
    stages = fcn["stages"]
    return "/".join(str(fcn["iterations"][s]) for s in stages) + f" ({'/'.join(stages)})"


def train_info(results_dir: Path, variant: str | None, modality: str) -> str:
    """Training images and tile count, read from the tile index when it exists."""
    if variant is None:
        return ""
    tiles = layout.under(results_dir, layout.tiles_stem(False) + ".csv", variant=variant,
                         modality=modality)
    if not tiles.exists():
        return ""
    try:
        frame = pd.read_csv(tiles, usecols=["sample"])
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return ""
    return f"{frame['sample'].nunique()} train images ({len(frame)} tiles)"


def test_info(run: Run) -> str:
    """Test images and objects of a run, read from its own files."""
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


def describe_run(run: Run | None, config: dict[str, Any]) -> str:
    """The configuration that produced ``run``: variant, modality, init, network, tiles,
    iterations and image counts (from the config and the run's own files)."""
    if run is None:
        return ""
    parts = [f"{run.modality.upper()}"]
    if run.method == "mvfcnn" and run.variant is not None:
        settings = variant_settings(config, run.variant)
        fcn = config["fcn"]
        parts[0] = f"{run.variant} / {run.modality.upper()}"
        parts.append(f"init={settings['pretrained']}")
        parts.append(f"balanced={str(settings['balanced']).lower()}")
        parts.append(f"augment={str(settings['augment']).lower()}")
        parts.append(f"VGG16 width x{fcn['width']}, fc {fcn['fc_channels']}")
        parts.append(f"tile {config['tiles']['size']} px")
        parts.append(f"budget: {mvfcnn_budget(run, config)}")
        parts.append(train_info(run.results_dir, run.variant, run.modality))
    else:
        settings = baseline_settings(config, run.method)
        info = _read_info(run.directory)
        parts.append(baseline_init_text(config, run.method, info))
        parts.append(f"crop {settings['crop_size']} px")
        parts.append(f"budget: {baseline_budget(config, run, info)}")
        if info.get("n_train") is not None:
            parts.append(f"{info['n_train']} train objects")
    parts.append(test_info(run))
    return "; ".join(p for p in parts if p)


def _read_info(directory: Path) -> dict[str, Any]:
    """A baseline's info.json (timings, init, training summary); {} when absent or unreadable."""
    path = directory / "info.json"
    try:
        info = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def seconds_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def csv_seconds(path: Path) -> float | None:
    """Sum of the ``seconds`` column of a training CSV (the iterations' wall time)."""
    if not path.exists():
        return None
    try:
        return float(pd.read_csv(path, usecols=["seconds"])["seconds"].sum())
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _pretrain_text(config: dict[str, Any], results_dir: Path, modality: str) -> str:
    """The trunk pretraining a ``patches`` init costs: iterations x batch, and its wall time."""
    pretrain = config["pretrain"]
    text = (f"trunk pretraining {pretrain['iterations']} iterations x {pretrain['batch_size']} "
            f"patches")
    seconds = csv_seconds(layout.under(results_dir, layout.trunk_dir(False), modality=modality)
                           / "pretrain.csv")
    return text + (f" ({seconds_text(seconds)})" if seconds is not None else "")


def mvfcnn_budget(run: Run, config: dict[str, Any]) -> str:
    """Iterations per FCN stage (plus the trunk pretraining of a ``patches`` init) and the
    training wall time summed from the stages' CSVs when they exist."""
    fcn = config["fcn"]
    text = f"FCN iterations {iterations_text(fcn)}, batch {fcn['batch_size']}"
    times = [csv_seconds(run.directory / f"train_{stage}.csv") for stage in fcn["stages"]]
    if all(t is not None for t in times):
        text += f" ({seconds_text(sum(t for t in times if t is not None))})"
    if run.variant is not None and str(variant_settings(config, run.variant)["pretrained"]) \
            == "patches":
        text += " + " + _pretrain_text(config, run.results_dir, run.modality)
    return text


def baseline_init_text(config: dict[str, Any], method: str,
                       info: dict[str, Any] | None = None) -> str:
    """How a baseline's network starts, named for the tables: ``init=<resolved>``, what
    ``match`` matched, and the network it implies (from info.json when the run recorded it)."""

    info = info or {}
    if method == "handcrafted_svm":
        return "init=none (no network: hand-crafted features)"
    if method not in PRETRAINED_METHODS:
        init = baseline_settings(config, method).get("init", "torch")
        return f"init=none (from scratch, {init} random init)"
    setting = str(config["baselines"][method]["pretrained"])
    init = baseline_init(config, method)
    text = f"init={init}"
    if setting == MATCH:
        text += f" (match: as {compared_variant(config) or 'no MVFCNN run'})"
    trunk = _uses_trunk(info, init)
    fcn = config["fcn"]
    layout = f"width x{fcn['width']}, fc {fcn['fc_channels']}"
    if method == "vgg16":
        return text + (f", the FCN's VGG16 trunk ({layout}) + GAP pool5 + new linear layer"
                       if trunk else ", torchvision VGG16 with a new fc8")
    return text + (f", SVM on GAP pool5 of the FCN's VGG16 trunk ({layout}), not VGG19 fc7"
                   if trunk else ", SVM on VGG19 fc7 (DeCAF)")


def _uses_trunk(info: dict[str, Any], init: str) -> bool:
    """Whether a baseline ran on the FCN's trunk: as its info.json says, else by its init."""
    if "network" in info or "features" in info:
        return (info.get("network") == "vgg16_trunk_classifier"
                or info.get("features") == "vgg16_trunk_pool5_gap")
    return init == "patches"


def baseline_budget_words(config: dict[str, Any], method: str) -> str:
    """What a baseline trains for: its epochs and batch, or the SVM's grid search."""
    settings = with_defaults("baselines", config["baselines"])
    if method in ("handcrafted_svm", "vgg19_svm"):
        svm = settings["svm"]
        return (f"RBF SVM grid {len(svm['C'])} C x {len(svm['gamma_factor'])} gamma, "
                f"{svm['folds']}-fold CV, no network training")
    return f"{settings[method]['epochs']} epochs, batch {settings[method]['batch_size']}"


def baseline_budget(config: dict[str, Any], run: Run, info: dict[str, Any]) -> str:
    """Epochs (networks) or the SVM's grid search, the training wall time info.json records
    (``train_seconds``), and the shared trunk pretraining when the network starts from it."""
    method = run.method
    text = baseline_budget_words(config, method)
    if info.get("train_seconds") is not None:
        text += f" ({seconds_text(float(info['train_seconds']))})"
    if method in ("vgg16", "vgg19_svm") and _uses_trunk(info, baseline_init(config, method)):
        text += " + the FCN's " + _pretrain_text(config, run.results_dir, run.modality)
    return text


def baseline_settings(config: dict[str, Any], method: str) -> dict[str, Any]:
    """The effective settings of one baseline: the config's ``baselines`` section over the
    schema's defaults, flattened to the top level plus the method's section (handcrafted_svm
    has no section of its own)."""
    base = with_defaults("baselines", config["baselines"])
    flat = {k: v for k, v in base.items() if not isinstance(v, dict | list)}
    flat.update({k: v for k, v in (base.get(method) or {}).items()
                 if not isinstance(v, dict | list)})
    return flat


def _strategy_words(settings: dict[str, Any]) -> str:
    pretrained = str(settings["pretrained"])
    if pretrained == "none":
        return "from scratch"
    if pretrained == "patches":
        return "fine tuning (trunk pretrained on labelled training patches, ImageNet stand-in)"
    return f"fine tuning ({pretrained} init)"


def _data_words(settings: dict[str, Any], modality: str) -> str:
    balanced, augment = settings["balanced"], settings["augment"]
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



def load_config_arg(text: str) -> dict[str, Any]:
    """--config-json: inline JSON, or a path to a JSON/YAML file; schema defaults filled in."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return filled_config(json.loads(text))
        except json.JSONDecodeError as err:
            raise InputError(f"--config-json is not valid JSON ({err})") from err
    path = Path(text)
    if not path.exists():
        raise InputError("config file not found", path=path)
    import yaml

    try:
        return filled_config(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as err:
        raise InputError(f"cannot parse config ({err})", path=path) from err


def report_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a report CLI (tables, best-run, figures) with the inputs every one reads:
    --results-dir and --config-json (read it with :func:`load_config_arg`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--results-dir", default="results", help="workflow results folder")
    parser.add_argument("--config-json", required=True,
                        help="the resolved workflow config as JSON (or a JSON/YAML file path)")
    return parser
