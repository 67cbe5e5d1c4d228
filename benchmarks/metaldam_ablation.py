"""Issue 22's ablation table: each training lever on MetalDAM folds 0-2, mean ± SE; and every
lever measured on all 6 folds, over the 6.

Usage: ``python benchmarks/metaldam_ablation.py [--out benchmarks/results/metaldam_ablation.json]``.

Reads what ``benchmarks/metaldam.py --folds ...`` wrote for each lever (the overlay in
``benchmarks/overlays/metaldam_lever_<lever>.yaml``, layered on the former default, FCN-8s on
2x images: ``benchmarks/overlays/metaldam_former_default.yaml``, which ``baseline`` is alone)
from ``benchmarks/results/metaldam_fold*_<lever>_<tag>.json``, per fold: the 5-class mean IoU
as the workflow's metrics.json computes it (Long et al.: a class neither labelled nor predicted
in a fold's test images is left out, one predicted but absent counts 0), the 4-class mean
without precipitate, M/A, defect and precipitate IoU; and the minutes per fold (the run's time
/ its folds, so shared steps are spread: the larger of its wall time and its summed jobs, the
object baselines left out of both, as ``benchmarks/metaldam.py`` judges a run). Folds come
from several runs of the same lever (fold 0 earlier, then 1 and 2, or 0-2 and 3-5) only when
they used the same configs.
Whether a lever is in the committed default: its overlays (a run's /tmp copy read as
``benchmarks/overlays/metaldam_lever_<name>.yaml``; the former default left out, it is what the
early levers were layered on) change nothing when layered on ``config/config.yaml`` +
``config/metaldam.yaml``. Writes the JSON (``levers``: folds 0-2; ``six_folds``) and prints the
README's markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import _common

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OVERLAYS = ROOT / "benchmarks" / "overlays"
FORMER_DEFAULT = "metaldam_former_default.yaml"
FOLDS = ("0", "1", "2")
ALL_FOLDS = tuple(str(f) for f in range(6))
#: lever -> what it changes (whether the default holds it: in_default)
LEVERS = {
    "baseline": "the former default alone (FCN-8s on 2x images, patch pretraining)",
    "rare": "tiles.rare_share 0.1 (rare-class-centred tiles)",
    "dice": "fcn.dice_weight 0.5 (cross-entropy + soft Dice)",
    "aug": "fcn.augmentation (flips, brightness, contrast, gamma, blur, noise)",
    "levers": "rare + Dice + augmentation (the first fold-0 trial)",
    "rare_dice": "rare-class tiles + Dice",
    "schedule": "rare + Dice + poly learning rate + keep best validated weights",
    "fcn4s": "rare + Dice + FCN-4s at native scale (no 2x enlargement)",
    "ssl": "rare + Dice + SSL (masked-image modelling) before the patch pretraining",
    "fcn4s_bn": "fcn4s + BatchNorm trunk (fcn.batch_norm, overlays fcn4s + bn)",
    "fcn4s_tta": "fcn4s's models + test-time augmentation (the 8 flips and rotations)",
    "fcn4s_schedule": "fcn4s + poly learning rate + keep best validated weights",
    "fcn4s_recipe": "fcn4s + poly rate + best weights + rare tiles for M/A and precipitate only",
    "fcn4s_ssl": "fcn4s + SSL (masked-image modelling on the training images) before the patches",
    "fcn2s": "fcn4s + an FCN-2s stage (pool1 skip, output stride 2), 800 iterations",
    "fcn4s_lr": "fcn4s_tta + Adam 3e-4 decaying (poly) in each stage",
    "fcn2s_tta": "fcn2s + test-time augmentation: one 6-fold job (a 2s stage on the 6-fold "
                 "fcn4s_tta job's models, with its baselines)",
    "ema": "fcn2s_tta + an exponential moving average of each stage's weights (ema_decay 0.995)",
    "same": "fcn2s_tta with size-keeping convolutions (fcn.padding same: no 100-px conv1_1 "
            "margin, a 256-px tile is 256 px at conv1 instead of 454)",
    "same_ema": "same + an exponential moving average of each stage's weights (ema_decay 0.995)",
    "same_ema_stretch": "same_ema + each image's grey percentiles 1/99 stretched to 0..255 "
                        "(prepare.intensity_percentiles)",
    "same_ema_pretrain": "same_ema + 5x longer patch pretraining (pretrain.iterations 2000 "
                         "instead of 400)",
    "pretrain": "same_ema_pretrain as one 6-fold job with the object baselines, on 2 AMD Zen 4 "
                "cores (the same_ema_pretrain folds ran on Intel AMX)",
    "pretrain_long": "pretrain with 6000 patch-pretraining steps instead of 2000: one 6-fold "
                     "job with the object baselines on 2 AMD Zen 4 cores (folds 0-2 equal to the "
                     "last digit to the 3-fold run before it)",
    "pretrain_cosine": "pretrain_long with the pretraining rate decaying as half a cosine to 0 "
                       "(pretrain.lr_schedule cosine)",
    "same_ema_width": "same_ema + a trunk twice as wide (fcn.width 0.5)",
    "pretrain_patch64": "pretrain_long with 64-px pretraining patches instead of 48 "
                        "(pretrain.patch_size 64)",
    "pretrain_12k": "pretrain_long with 12000 patch-pretraining steps instead of 6000 (its "
                    "minutes include a 20.5-min pause and other jobs on the 2 cores; quiet, "
                    "fold 1's pretraining took 6.9 min against ~3.5 for 6000 steps)",
    "fine_long": "pretrain_long with twice the iterations in the two finest stages (fcn."
                 "iterations 4s and 2s 1600 instead of 800; their validation mean IoU was still "
                 "rising); its minutes include the test suite on the same 2 cores",
    "tiles384": "pretrain_long with 384-px training tiles in batches of 2 instead of 256-px "
                "tiles in batches of 4 (tiles.size 384, stride 192, fcn.batch_size 2): more "
                "context per tile, about the same pixels per step",
    "lovasz": "pretrain_long with a Lovász-softmax term instead of the soft-Dice term, same "
              "weight (fcn.dice_weight 0, fcn.lovasz_weight 0.5)",
    "seed1": "pretrain_long with seed 1 instead of 0 (initialisation, sampling, augmentation): "
             "the run-to-run spread a lever must clear, not a lever",
    "freeze": "pretrain_long with the pretrained trunk fixed up to pool2 while the FCN stages "
              "train (fcn.freeze pool2)",
    "class_weights": "pretrain_long + median-frequency class weights clipped to [1/2, 2] "
                     "(fcn.class_weighting, fcn.class_weight_cap 2) beside the Dice term",
    "same_ema_aug": "same_ema + fcn.augmentation (flips, brightness, contrast, gamma, blur, "
                    "noise)",
    "same_ema_iters": "same_ema with 150 of FCN-32s's and 150 of FCN-16s's iterations moved to "
                      "FCN-2s (50/150/800/800/1100, the same 2900)",
}
#: object-baseline jobs: not part of a lever's cost (only the 6-fold jobs with the objects
#: table run them)
_BASELINE_JOBS = ("train_baseline/", "crop_objects/")
#: a job of one fold (train_fcn/<variant>_sem_fold2_8s): counted only for the folds reported
_FOLD_JOB = re.compile(r"fold(\d+)")
_NAME = re.compile(r"metaldam_folds?(\d+)_(\w+?)_(amx|avx2|zen\w*)\.json$")


def _job_fold(job: str) -> str | None:
    """The fold a job belongs to, or None for a job all folds share (prepare, objects)."""
    match = _FOLD_JOB.search(job)
    return match.group(1) if match else None


def _nan_mean(values: list[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def fold_record(metrics: dict[str, Any]) -> dict[str, float]:
    """The figures of one fold from benchmarks/metaldam.py's ``per_fold`` entry."""
    per_class = {k: (math.nan if v is None else float(v))
                 for k, v in metrics["per_class_iu"].items()}
    return {"mean_iu": float(metrics["mean_iu"]),
            "mean_iu_without_precipitate": _nan_mean(
                [v for k, v in per_class.items() if k != "precipitate"]),
            **{f"iu_{k}": v for k, v in per_class.items()}}


def mean_se(values: list[float]) -> tuple[float, float, int]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan, 0
    mean = sum(kept) / len(kept)
    if len(kept) < 2:
        return mean, math.nan, len(kept)
    var = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    return mean, math.sqrt(var / len(kept)), len(kept)


def _overlay_path(config: str) -> Path | None:
    """The committed overlay a run's config entry stands for, relative to the repository (None:
    a committed config, or the fold-subset overlay benchmarks/metaldam.py --folds adds)."""
    if config.startswith("config/") or Path(config).name == _common.FOLDS_SUBSET_OVERLAY:
        return None
    name = Path(config).name
    if config.startswith("/tmp/lev_"):  # the first fold-0 levers ran from copies in /tmp
        name = "metaldam_lever_" + name[len("lev_"):]
    return OVERLAYS.relative_to(ROOT) / name


def in_default(configs: list[str], root: Path = ROOT) -> bool | None:
    """True when the lever's overlays change nothing on the committed MetalDAM default; None when
    an overlay is not in the repository (it cannot be judged)."""
    import yaml

    from mvfcnn.core.settings import merge

    def load(path: Path) -> dict[str, Any]:
        return yaml.safe_load(path.read_text()) or {}

    overlays = [p for p in map(_overlay_path, configs)
                if p is not None and p.name != FORMER_DEFAULT]
    if not overlays:  # the former default alone
        return False
    overlays = [root / p for p in overlays]
    if not all(p.exists() for p in overlays):
        return None
    default = merge(load(root / "config" / "config.yaml"), load(root / "config" / "metaldam.yaml"))
    layered = default
    for path in overlays:
        layered = merge(layered, load(path))
    return layered == default


def collect(results: Path) -> dict[str, dict[str, Any]]:
    levers: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("metaldam_fold*_*.json")):
        match = _NAME.search(path.name)
        if not match:
            continue
        lever = match.group(2)
        report = json.loads(path.read_text())
        entry = levers.setdefault(lever, {"folds": {}, "minutes_per_fold": [], "sources": [],
                                          "configs": None, "machine": None})
        # the committed configs must agree; an overlay's file name may differ (fold 0 of the
        # first levers ran from copies in /tmp before the overlays were committed)
        configs = [str(c) for c in report["configs"]]
        base = [c for c in configs if c.startswith("config/")]
        if entry["configs"] is not None and [c for c in entry["configs"]
                                             if c.startswith("config/")] != base:
            print(f"{path.name}: other committed configs than the lever's first file; skipped",
                  file=sys.stderr)
            continue
        entry["configs"] = configs
        entry["machine"] = entry["machine"] or {k: report["machine"].get(k) for k in
                                                ("cpu_model", "cpu_flags", "precision_auto")}
        entry["sources"].append(path.name)
        folds = [f for f in report["folds"] if f in report["per_fold"]]
        for fold in folds:
            entry["folds"][fold] = fold_record(report["per_fold"][fold])
        if folds:
            # one rule with benchmarks/metaldam.py (_common.judged_seconds): the larger of the
            # wall time and the summed jobs (of the reported folds and the shared ones), both
            # without the object baselines, which only the 6-fold jobs run
            jobs = report.get("job_s") or {}
            baseline_s = sum(s for job, s in jobs.items() if job.startswith(_BASELINE_JOBS))
            lever_jobs = [s for job, s in jobs.items()
                          if _job_fold(job) in (None, *report["folds"])
                          and not job.startswith(_BASELINE_JOBS)]
            seconds = _common.judged_seconds(report["wall_min"] * 60 - baseline_s, lever_jobs)
            entry["minutes_per_fold"].append(seconds / 60 / len(folds))
    return levers


def summarize(levers: dict[str, dict[str, Any]],
              wanted: tuple[str, ...] = FOLDS) -> dict[str, Any]:
    """Mean ± SE over the ``wanted`` folds each lever has (a lever with none is left out)."""
    out = {}
    for lever, entry in levers.items():
        folds = {f: entry["folds"][f] for f in wanted if f in entry["folds"]}
        if not folds:
            continue
        keys = sorted({k for record in folds.values() for k in record})
        stats = {}
        for key in keys:
            mean, se, n = mean_se([record.get(key, math.nan) for record in folds.values()])
            stats[key] = {"mean": mean, "se": se, "n": n}
        minutes = entry["minutes_per_fold"]
        out[lever] = {"what": LEVERS.get(lever, lever), "folds": sorted(folds),
                      "per_fold": folds, "stats": stats,
                      "minutes_per_fold": sum(minutes) / len(minutes) if minutes else math.nan,
                      "configs": entry["configs"], "machine": entry["machine"],
                      "in_default": in_default(entry["configs"] or []),
                      "sources": entry["sources"]}
    return out


def _cell(stat: dict[str, float] | None) -> str:
    if not stat or math.isnan(stat["mean"]):
        return "–"
    if math.isnan(stat["se"]):
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['se']:.3f}"


_DEFAULT_CELL = {True: "yes", False: "no", None: "–"}


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| lever | folds | 5-class mIoU | 4-class (no precipitate) | M/A IoU | defect IoU "
             "| precipitate IoU | min / fold | in default |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    order = [k for k in LEVERS if k in summary] + [k for k in summary if k not in LEVERS]
    for lever in order:
        entry = summary[lever]
        stats = entry["stats"]
        lines.append(
            f"| {lever}: {entry['what']} | {','.join(entry['folds'])} | "
            f"{_cell(stats.get('mean_iu'))} | {_cell(stats.get('mean_iu_without_precipitate'))}"
            f" | {_cell(stats.get('iu_martensite_austenite'))} | "
            f"{_cell(stats.get('iu_defect'))} | {_cell(stats.get('iu_precipitate'))} | "
            f"{entry['minutes_per_fold']:.1f} | {_DEFAULT_CELL[entry.get('in_default')]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=RESULTS / "metaldam_ablation.json")
    args = parser.parse_args()
    levers = collect(args.results)
    summary = summarize(levers)
    six = {lever: entry for lever, entry in summarize(levers, ALL_FOLDS).items()
           if entry["folds"] == sorted(ALL_FOLDS)}
    table, six_table = markdown(summary), markdown(six)
    _common.write_result(args.out, {"benchmark": "metaldam_ablation", "levers": summary,
                                    "markdown": table, "six_folds": six,
                                    "six_folds_markdown": six_table})
    print(table)
    print("All 6 folds:\n")
    print(six_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
