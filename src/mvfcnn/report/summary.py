"""The summary page (``results/tables/summary.md``): the key numbers, ours beside the paper's,
and what differs from the paper's setup, in prose; plus the notes on how the paper's class-wise
columns map onto the configured classes.

The numbers come from the table frames of :mod:`mvfcnn.report.tables`; this module only words them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.runs import (
    PREFERRED_VARIANT,
    baseline_runs,
    filled_config,
    mvfcnn_runs,
    variant_settings,
)
from mvfcnn.evaluation.metrics import NOT_SEGMENTED_LABEL
from mvfcnn.report.collect import (
    Run,
    best_variant,
    collect_runs,
    paper_classes_match,
)
from mvfcnn.report.describe import (
    baseline_init_text,
    baseline_settings,
    hms_text,
    iterations_text,
    test_info,
    train_info,
)
from mvfcnn.report.rendering import PIXEL_LABELS, cell
from mvfcnn.report.tables import PIXEL_METRICS, TABLE_NAMES


def _compact(value: Any) -> str:
    """A config value for prose: {32s: 1e-3, ...} -> "32s 0.001, 16s 0.0001"."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)



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


def _summary_without_paper(tables: dict[str, pd.DataFrame], classes: ClassSet,
                           paper: dict[str, Any], class_text: str, why: str,
                           best: str | None) -> str:
    """The summary of a dataset that is not the paper's: our numbers only, and why."""
    paper_classes = ", ".join(paper.get("table6_classes", []))
    lines = ["# MVFCNN on this dataset", "", class_text, "",
             f"The paper's numbers (Azimi et al. 2018) are left out: its classes ({paper_classes})"
             f" are not this dataset's ({', '.join(classes.names)}), so a difference would "
             "compare unrelated tasks.", "",
             "## Object classification accuracy (Table 1 layout, SEM)", "",
             "| method | ours |", "|---|---:|"]
    lines += [f"| {row['label']} | {_fmt(row['ours'])} |"
              for _, row in tables["table1"].iterrows()]
    lines += ["", f"MVFCNN row = {why}.", "", "## Best MVFCNN pixel metrics (Table 5 layout)", "",
              "| metric | ours |", "|---|---:|"]
    t5 = tables["table5"]
    ours_rows = t5[(t5["variant"] == best) & (t5["modality"] == "sem")] if best else t5.iloc[:0]
    for metric in PIXEL_METRICS:
        ours = ours_rows[f"{metric}_ours"].iloc[0] if len(ours_rows) else math.nan
        lines.append(f"| {PIXEL_LABELS[metric]} | {_fmt(ours)} |")
    return "\n".join(lines) + "\n"


def summary_markdown(tables: dict[str, pd.DataFrame], results_dir: str | Path,
                     classes: ClassSet, config: dict[str, Any], paper: dict[str, Any], *,
                     runs: dict[tuple, Run] | None = None) -> str:
    """The page a reader opens first: key numbers ours vs paper and what differs."""
    config = filled_config(config)
    if runs is None:
        runs = collect_runs(results_dir, config)
    best, why = best_variant(runs, "sem")
    setup = paper.get("setup", {})
    fcn = config["fcn"]
    compare = "paper" in tables["table1"].columns  # False: not the paper's classes
    class_text = "Classes (from config): " + ", ".join(
        f"{i} {n} ({c})" for i, n, c in zip(classes.indices, classes.names, classes.colors,
                                            strict=True))
    if not compare:
        return _summary_without_paper(tables, classes, paper, class_text, why, best)
    lines = ["# MVFCNN reproduction: ours vs Azimi et al. (2018)", ""]
    lines += [f"Paper numbers: {paper.get('source', 'paper_tables.yaml').strip()}", "",
              class_text, ""]
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
    missed = {source: cell(single.get((source, NOT_SEGMENTED_LABEL)), integer=True) or "n/a"
              for source in ("ours", "paper")}
    lines += ["", f"Table 4 total accuracy (segmented objects only): ours "
              f"{_fmt(single.get(('ours', 'total_accuracy'), math.nan))}, paper "
              f"{_fmt(single.get(('paper', 'total_accuracy'), math.nan))}; not-segmented "
              f"objects: ours {missed['ours']}, paper {missed['paper']}.",
              ""]

    lines += ["## What differs from the paper", ""]
    samples = config["samples"]
    best_run = runs.get(("mvfcnn", best, "sem")) if best else None
    if samples == "synthetic":
        syn = config["synthetic"]
        data = (f"synthetic micrographs generated from seed {config['seed']} "
                f"({syn['height']}x{syn['width']} px, textured constituents in "
                f"a ferrite-like matrix, a degraded and displaced LOM view)")
    else:
        data = f"the sample sheet {samples}"
    counts = "; ".join(p for p in (train_info(best_run.results_dir, best, "sem") if best_run
                                   else "", test_info(best_run) if best_run else "") if p)
    lines.append(f"- **Data**: ours: {data}" + (f" ({counts})" if counts else "")
                 + f". Paper: {setup.get('images', '?')} real LOM/SEM pairs of "
                 f"~{'x'.join(str(v) for v in setup.get('image_size_px', []))} px, "
                 f"{setup.get('train_images', '?')} train / {setup.get('test_images', '?')} test "
                 f"images, {setup.get('train_objects', '?')} train / "
                 f"{setup.get('test_objects', '?')} test objects.")
    width, fc = fcn["width"], fcn["fc_channels"]
    net = ("the full VGG16 widths" if float(width) == 1.0 and int(fc) == 4096 else
           f"a width-reduced VGG16 (channels x{width}, fc6/fc7 {fc} channels) sized for a CPU")
    lines.append(f"- **Network**: ours: FCN-{' -> '.join(fcn['stages'])} on {net}. "
                 f"Paper: {setup.get('network', 'full VGG16')}.")
    init = variant_settings(config, best)["pretrained"] if best else "n/a"
    init_words = {"none": "random initialisation (training from scratch, the offline default: "
                          "ImageNet weights need a download)",
                  "imagenet": "ImageNet VGG16 weights from torchvision",
                  "patches": "the trunk pretrained on labelled patches of the training images "
                             "(pretrain_trunk rule; the offline stand-in for ImageNet, which "
                             "cannot be downloaded here)"}.get(str(init),
                                                                         f"weights from {init}")
    lines.append(f"- **Pretraining**: ours ({best or 'no run'}): {init_words}. "
                 f"Paper: {setup.get('init', 'ImageNet')}.")
    lines.append(f"- **Iterations**: ours: {iterations_text(fcn)}, batch "
                 f"{fcn['batch_size']}, loss {fcn['loss']}, lr "
                 f"{_compact(fcn['lr'])}. Paper: {setup.get('iterations', '?')} "
                 f"iterations, batch {setup.get('batch_size', '?')}, lr "
                 f"{_compact(setup.get('learning_rates', '?'))}, loss summed over pixels "
                 f"({setup.get('training_time', '')}).")
    lines.append(f"- **Tile size**: ours: training {config['tiles']['size']} px, "
                 f"inference {config['inference']['tile_size']} px. Paper: "
                 f"{setup.get('tile_size', '?')} px.")
    methods = [b for b in dict.fromkeys(b for b, _ in baseline_runs(config))]
    if methods:
        described = []
        for method in methods:
            settings = baseline_settings(config, method)
            words = [baseline_init_text(config, method)] if "pretrained" in settings else []
            words += [f"epochs={settings['epochs']}"] if "epochs" in settings else []
            described.append(method + (" (" + ", ".join(words) + ")" if words else ""))
        crop = baseline_settings(config, methods[0])["crop_size"]
        lines.append(f"- **Object baselines**: ours: crops warped to {crop} px; "
                     f"{'; '.join(described)}. Paper: {setup.get('baseline_crop_size', '?')} px; "
                     f"{setup.get('baselines', '')}.")
    seconds, jobs = benchmark_seconds(results_dir)
    if jobs:
        lines.append(f"- **Wall time**: {hms_text(seconds)} (h:m:s) summed over {jobs} benchmarked "
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



def class_match_notes(paper: dict[str, Any], classes: ClassSet) -> dict[str, str]:
    """How the paper's class-wise columns (Tables 4 and 6) map onto the configured classes."""
    if not paper_classes_match(classes, paper):
        theirs = ", ".join(paper.get("table6_classes", []))
        note = (f"No paper columns: the paper's classes ({theirs}) are not the configured ones "
                f"({', '.join(classes.names)}).\n")
        return {"table4": note, "table6": note}
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
