"""MetalDAM objects: MVFCNN vs the four object-based baselines on the 6 folds (the paper's
Table 1 question on real micrographs), with each method's compute and the data behind the
minimum object area.

Usage: ``python benchmarks/metaldam_objects.py [--workdir DIR] [--run] [--configfile X.yaml ...]
[--out benchmarks/results/metaldam_objects.json]``.

Reads a finished MetalDAM workdir (``--run`` first runs the workflow there with
``config/config.yaml`` + ``config/metaldam.yaml`` [+ overlays], the objects table being one of
its targets) and records, beside the machine: the objects table (per fold and mean ± SE object
accuracy, mean class recall and per-class recall of every method, and of always answering the
most frequent class), MVFCNN's paired per-fold lead over each method and the verdict on the
paper's ordering, each method's job seconds from Snakemake's benchmark TSVs (summed over folds),
the component areas of every class over all label maps with the minimum area
:func:`mvfcnn.objects.components.min_area_for_area_loss` chooses at 1, 2 and 5 % area loss, and
MVFCNN's voted objects per true class and area bin (right, not segmented).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import _common
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LOSSES = (0.01, 0.02, 0.05)
#: object-area bins (px, lower edges) of MVFCNN's accuracy per class and size
AREA_BINS = (0, 30, 100, 300, 1000)
#: the job TSVs (results/benchmarks/<rule>/...) that make each method's number
METHOD_JOBS = {"mvfcnn": ("pretrain_trunk/", "tile_index/", "train_fcn/", "predict/", "vote/"),
               "crops (all baselines)": ("crop_objects/",)}


def method_seconds(job_s: dict[str, float], methods: list[str]) -> dict[str, float]:
    """Job seconds per method over all folds (the pretrained trunk counts for MVFCNN only,
    though the patch-initialised VGGs start from the same file)."""
    from mvfcnn.evaluation.crossval_objects import MAJORITY

    groups = {**METHOD_JOBS, **{m: (f"train_baseline/{m}_",) for m in methods
                                if m not in METHOD_JOBS and m != MAJORITY}}
    return {name: round(sum(s for job, s in job_s.items() if job.startswith(prefixes)), 1)
            for name, prefixes in groups.items()}


def area_record(workdir: Path, classes: Any) -> dict[str, Any]:
    """Component areas per class over the prepared label maps, and the data-chosen minimum."""
    from mvfcnn.core.io import read_labels
    from mvfcnn.objects.components import component_areas, min_area_for_area_loss

    areas: dict[str, list[np.ndarray]] = {}
    files = sorted((workdir / "results" / "prepared").glob("*/labels.tif"))
    for path in files:
        for name, values in component_areas(read_labels(path), classes).items():
            areas.setdefault(name, []).append(values)
    merged = {k: np.concatenate(v) for k, v in areas.items()}
    record: dict[str, Any] = {"label_maps": len(files), "per_class": {}, "chosen": {}}
    for name, values in merged.items():
        record["per_class"][name] = {
            "components": int(len(values)), "area_px": int(values.sum()),
            "median_px": float(np.median(values)) if len(values) else None,
            "quantiles_px": {q: float(np.quantile(values, q)) for q in (0.1, 0.25, 0.5, 0.75)}
            if len(values) else {}}
    for loss in LOSSES:
        area = min_area_for_area_loss(merged, loss)
        kept = {k: int((v >= area).sum()) for k, v in merged.items()}
        record["chosen"][f"{loss:g}"] = {
            "min_area_px": area, "components_kept": kept,
            "components_dropped_share": round(1 - sum(kept.values()) / max(
                1, sum(len(v) for v in merged.values())), 4),
            "area_dropped_share": {k: round(float(v[v < area].sum() / max(1, v.sum())), 4)
                                   for k, v in merged.items()}}
    return record


def mvfcnn_by_area(workdir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """MVFCNN's voted objects of every fold, per true class and area bin: how many, how many
    right and how many not segmented (no non-matrix pixel predicted), so the objects table's
    shortfall can be traced to the classes and sizes it comes from. Areas are in pixels of the
    prepared grid (``prepare.upscale`` enlarges them), as ``masking.min_object_area``."""
    from mvfcnn.core import layout
    from mvfcnn.core.io import read_labels
    from mvfcnn.core.runs import mvfcnn_runs
    from mvfcnn.evaluation.metrics import NOT_SEGMENTED_INDEX

    variant, modality = mvfcnn_runs(config)[0]  # the run the cross-validation table reports
    pattern = layout.under(workdir / "results", layout.run_dir(True), variant=variant,
                           modality=modality, fold="*")
    runs = sorted(pattern.parent.glob(pattern.name))
    frames = []
    for run in runs:
        objects = pd.read_csv(run / "objects.csv", dtype={"sample": str})
        for sample, rows in objects.groupby("sample"):
            ids = read_labels(layout.under(workdir / "results", layout.OBJECT_IDS, sample=sample))
            areas = np.bincount(np.asarray(ids).ravel())
            frames.append(rows.assign(area=areas[rows["object_id"].to_numpy()]))
    if not frames:
        return []
    table = pd.concat(frames, ignore_index=True)
    edges = [*AREA_BINS, np.inf]
    labels = [f"{lo}-{hi}" if np.isfinite(hi) else f">={lo}"
              for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    table["bin"] = pd.cut(table["area"], edges, right=False, labels=labels)
    out = []
    for (name, area_bin), rows in table.groupby(["true_class_name", "bin"], observed=True):
        out.append({"true_class": name, "area_px": str(area_bin), "objects": len(rows),
                    "right": int((rows["pred_class"] == rows["true_class"]).sum()),
                    "not_segmented": int((rows["pred_class"] == NOT_SEGMENTED_INDEX).sum())})
    return out


def summarize(workdir: Path, config: dict[str, Any]) -> dict[str, Any]:
    from mvfcnn.core import layout
    from mvfcnn.core.config import ClassSet
    from mvfcnn.evaluation.crossval_objects import SECONDARY, paired_differences, verdict

    paths = layout.crossval_table(layout.crossval_name(config["samples"]))
    table_path = layout.under(workdir / "results", paths["objects_csv"])
    if not table_path.is_file():
        raise SystemExit(f"{table_path}: no objects table; run the MetalDAM workflow with "
                         "run.baselines set (config/metaldam.yaml) first, or pass --run")
    table = pd.read_csv(table_path, dtype={"fold": str})
    differences = paired_differences(table)
    methods = list(dict.fromkeys(table["method"]))
    job_s = _common.job_times(workdir)
    means = table[table["fold"] == "mean"].set_index("method")
    ses = table[table["fold"] == "se"].set_index("method")
    metrics = ["object_accuracy", "mean_recall"]
    if SECONDARY in table.columns:
        metrics.append(SECONDARY)
    return {
        "table": json.loads(table.to_json(orient="records")),
        "secondary_exclude": config["crossval"]["secondary_mean_excludes"],
        "mean_se": {m: {k: [float(means.loc[m, k]), float(ses.loc[m, k])] for k in metrics}
                    for m in methods},
        "paired_differences": json.loads(differences.to_json(orient="records")),
        "paired_differences_secondary": json.loads(paired_differences(
            table, SECONDARY).to_json(orient="records")) if SECONDARY in table.columns else [],
        "verdict": verdict(differences),
        "method_job_s": method_seconds(job_s, methods),
        "job_s": job_s,
        "object_areas": area_record(workdir, ClassSet.from_config(config)),
        "mvfcnn_by_class_and_area": mvfcnn_by_area(workdir, config),
        "min_object_area": config["masking"]["min_object_area"],
    }


def main() -> int:
    import yaml

    from mvfcnn.core.settings import merge

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "benchmarks_metaldam")
    parser.add_argument("--run", action="store_true", help="run the workflow in --workdir first")
    parser.add_argument("--configfile", nargs="*", default=[], help="extra config overlays")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--note", action="append", default=[],
                        help="a remark recorded with the figures (e.g. where job times came from)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "metaldam_objects.json")
    args = parser.parse_args()
    configs = [str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "metaldam.yaml"),
               *[str(Path(c).resolve()) for c in args.configfile]]
    config: dict[str, Any] = {}
    for path in configs:
        config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
    report: dict[str, Any] = {"benchmark": "metaldam_objects",
                              "machine": _common.machine_info(("torch", "sklearn")),
                              "workdir": str(args.workdir),
                              "configs": [str(Path(c).relative_to(ROOT)) if c.startswith(
                                  str(ROOT)) else c for c in configs],
                              "notes": args.note}
    if args.run:
        args.workdir.mkdir(parents=True, exist_ok=True)
        dataset = (ROOT.parent / "shared" / "data" / "metaldam").resolve()
        proc, wall = _common.run_workflow(args.workdir, configs, cores=args.cores,
                                          extra=["--config", f"metaldam={{path: {dataset}}}"])
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        report["wall_s"] = round(wall, 1)
    report.update(summarize(args.workdir, config))
    _common.write_result(args.out, report)
    print(json.dumps({"verdict": report["verdict"], "method_job_s": report["method_job_s"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
