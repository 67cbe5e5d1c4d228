"""MetalDAM: per-class decision offsets fitted on held-out training tiles, on the models of a
finished run (issue 22's lever "per-class logit bias").

Usage: ``python benchmarks/metaldam_calibration.py --workdir DIR [--folds 0 1 ...] [--out
benchmarks/results/metaldam_calibration.json]``; ``--merge A.json B.json ... --out X.json``
combines results of disjoint folds (e.g. one per fold, run as each fold finished).

For each fold of a finished ``benchmarks/metaldam.py`` workdir (the committed config unless
``--configfile`` overlays were used there too): the final FCN stage predicts the fold's held-out
training positions (every ``fcn.val_holdout_every``-th tile position, rot 0, all of them: the
positions training never saw, though their windows overlap trained ones) with the config's
inference settings (test-time augmentation included); offsets are fitted on those pixels
(:func:`mvfcnn.inference.held_out.held_out_pixels`,
:func:`mvfcnn.inference.calibration.fit_class_bias`, objectives ``mean_iu`` and ``fractions``, as
the workflow's ``inference.class_offsets`` does); then the fold's test images are predicted once
and scored plain and with each fit's offsets, and with the ``oracle``'s (``mean_iu`` fitted on the
test pixels themselves: not a method, the most this lever could give): 5-class and 4-class mean
IoU, per-class IoU and the phase-fraction errors. The plain prediction must equal the run's own
``pred/*.tif`` (checked), so the comparison is on the same models and windows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: plain argmax, the two fitted objectives, and the test-pixel oracle (the lever's ceiling)
METHODS = ("plain", "mean_iu", "fractions", "oracle")


def merged_config(overlays: list[str]) -> dict[str, Any]:
    from mvfcnn.core.settings import merge

    config: dict[str, Any] = {}
    for path in [ROOT / "config" / "config.yaml", ROOT / "config" / "metaldam.yaml", *overlays]:
        config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def predict_as_the_run(model, image: np.ndarray, infer: dict[str, Any], saved_path: Path,
                       label: str) -> tuple[np.ndarray, np.ndarray]:
    """(class map, float16 softmax) of one test image with the run's inference settings; says
    on stderr when the class map differs from the run's own ``pred/*.tif`` (the check that a
    comparison on "the same models" is one). A run with ``inference.object_offsets`` kept its
    softmax (``probs/*.tif`` beside ``pred/``): then those are read, not predicted again."""
    from mvfcnn.core.io import read_labels, read_probabilities
    from mvfcnn.core.layout import PROBABILITIES
    from mvfcnn.inference.predict import predict_image

    saved = read_labels(saved_path, sample=label)
    kept = saved_path.parent.parent / PROBABILITIES.format(sample=saved_path.stem)
    if kept.exists():
        return saved, read_probabilities(kept, num_classes=model.num_classes, sample=label)
    plain, probs = predict_image(model, image, **infer, return_probs=True, progress=False)
    if not np.array_equal(plain, saved):
        print(f"{label}: the prediction differs from the run's ({int((plain != saved).sum())} "
              f"px)", file=sys.stderr)
    return plain, probs


def scores(confusion: np.ndarray, classes, excluded: list[str]) -> dict[str, Any]:
    from mvfcnn.evaluation.metrics import per_class_iu, pixel_accuracy

    iu = per_class_iu(confusion)
    keep = [i for i, name in enumerate(classes.names) if name not in excluded]
    return {"mean_iu": float(np.nanmean(iu)), "mean_iu_4": float(np.nanmean(iu[keep])),
            "pixel_accuracy": float(pixel_accuracy(confusion)),
            "per_class_iu": {n: (None if np.isnan(v) else float(v))
                             for n, v in zip(classes.names, iu, strict=True)}}


def finish(report: dict[str, Any], classes, out: Path) -> None:
    """Add the mean ± SE over the report's folds and the pooled phase-fraction errors; write."""
    import pandas as pd

    from mvfcnn.evaluation.crossval import phase_fraction_summary

    per_fold = report["per_fold"]
    folds = sorted(per_fold)
    summary = {}
    for m in METHODS:
        values = np.array([per_fold[f][m]["mean_iu"] for f in folds])
        values4 = np.array([per_fold[f][m]["mean_iu_4"] for f in folds])
        rows = [r for f in folds for r in per_fold[f]["phase_images"][m]]
        phase = phase_fraction_summary(pd.DataFrame(rows), classes)
        se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
        summary[m] = {"mean_iu": float(values.mean()), "mean_iu_se": se,
                      "mean_iu_4": float(values4.mean()),
                      "per_class_iu": {c: float(np.mean([per_fold[f][m]["per_class_iu"][c]
                                                         for f in folds
                                                         if per_fold[f][m]["per_class_iu"][c]
                                                         is not None]))
                                       for c in classes.names},
                      "phase_fractions": phase.to_dict(orient="records")}
    _common.write_result(out, {**report, "folds": folds, "summary": summary})
    for m in METHODS:
        print(f"{m}: mean IoU {summary[m]['mean_iu']:.4f} (4-class {summary[m]['mean_iu_4']:.4f})")


def merge(paths: list[Path], out: Path, overlays: list[str]) -> int:
    """One result from several (their folds must not overlap)."""
    import json

    from mvfcnn.core.config import ClassSet

    reports = [json.loads(p.read_text()) for p in paths]
    per_fold: dict[str, Any] = {}
    for report in reports:
        clash = set(per_fold) & set(report["per_fold"])
        if clash:
            raise SystemExit(f"fold(s) {sorted(clash)} in more than one result")
        per_fold.update(report["per_fold"])
    merged = {**reports[0], "per_fold": per_fold, "merged_from": [str(p) for p in paths]}
    finish(merged, ClassSet.from_config(merged_config(overlays)), out)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="a finished run (all but --merge)")
    parser.add_argument("--configfile", nargs="*", default=[], help="overlays the run used")
    parser.add_argument("--folds", nargs="*", default=[str(f) for f in range(6)])
    parser.add_argument("--variant", default="ft_balanced_aug")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "metaldam_calibration.json")
    parser.add_argument("--merge", nargs="*", type=Path, default=None,
                        help="combine the folds of earlier results (e.g. one per fold) into --out")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out, args.configfile)
    if args.workdir is None:
        parser.error("--workdir is required (unless --merge)")

    from mvfcnn.core.config import ClassSet
    from mvfcnn.core.io import read_image, read_labels
    from mvfcnn.core.settings import with_defaults
    from mvfcnn.evaluation.crossval import phase_image_rows
    from mvfcnn.evaluation.metrics import confusion_matrix
    from mvfcnn.fcn.tiling import read_tiles
    from mvfcnn.inference.calibration import OBJECTIVES, biased_labels, fit_class_bias
    from mvfcnn.inference.held_out import MAX_FIT_PIXELS, held_out_pixels
    from mvfcnn.inference.predict import inference_kwargs
    from mvfcnn.models.io import load_model

    config = merged_config(args.configfile)
    classes = ClassSet.from_config(config)
    ignore = classes.ignore_index
    cfg = with_defaults("fcn", config.get("fcn"))
    infer = inference_kwargs(config.get("inference", {}))
    excluded = list(config.get("crossval", {}).get("secondary_mean_excludes", []))
    final = cfg["stages"][-1]
    methods = METHODS
    per_fold: dict[str, Any] = {}
    for fold in args.folds:
        phase_rows: dict[str, list] = {m: [] for m in methods}
        tick = time.perf_counter()
        run = args.workdir / "results" / "mvfcnn" / args.variant / "sem" / f"fold{fold}"
        model, _ = load_model(run / f"fcn{final}.pt")
        tiles = read_tiles(args.workdir / "results" / "tiles" / args.variant / "sem"
                           / f"fold{fold}.csv")
        for column in ("image", "labels"):  # the index's paths are relative to the workdir
            tiles[column] = [str(args.workdir / p) for p in tiles[column]]
        log_probs, labels = held_out_pixels(
            model, tiles, holdout_every=int(cfg["val_holdout_every"]), inference=infer,
            num_classes=classes.num_classes, ignore_index=ignore)
        biases = {"plain": np.zeros(classes.num_classes, np.float32)}
        for objective in OBJECTIVES:
            biases[objective] = fit_class_bias(log_probs, labels, ignore_index=ignore,
                                               objective=objective)
        fit_s = time.perf_counter() - tick
        tests = []
        for pred_path in sorted((run / "pred").glob("*.tif")):
            sample = pred_path.stem
            prepared = args.workdir / "results" / "prepared" / sample
            image = read_image(prepared / "image.tif", sample=sample, micrograph=True)
            truth = read_labels(prepared / "labels.tif", sample=sample)
            plain, probs = predict_as_the_run(model, image, infer, pred_path,
                                              f"fold {fold} {sample}")
            tests.append((sample, truth, plain, probs))
        # the oracle: offsets fitted on the test pixels themselves, the most this lever can give
        flat_logs = np.concatenate([np.log(np.maximum(p.reshape(len(p), -1).T.astype(
            np.float32), 1e-12)) for _, _, _, p in tests])
        flat_truth = np.concatenate([t.reshape(-1) for _, t, _, _ in tests])
        pick = np.linspace(0, len(flat_truth) - 1, min(len(flat_truth), MAX_FIT_PIXELS))
        pick = pick.round().astype(np.int64)
        biases["oracle"] = fit_class_bias(flat_logs[pick], flat_truth[pick], ignore_index=ignore)
        del flat_logs, flat_truth
        confusions = {m: np.zeros((classes.num_classes,) * 2, np.int64) for m in methods}
        for sample, truth, plain, probs in tests:
            for m in methods:
                pred = plain if m == "plain" else biased_labels(probs, biases[m])
                confusions[m] += confusion_matrix(truth, pred, classes.num_classes, ignore)
                phase_rows[m] += phase_image_rows(fold, sample, truth, pred, classes)
        per_fold[fold] = {"fit_pixels": int(len(labels)), "seconds": round(
            time.perf_counter() - tick, 1), "fit_seconds": round(fit_s, 1),
            **{m: {"bias": [round(float(b), 3) for b in biases[m]],
                   **scores(confusions[m], classes, excluded)} for m in methods},
            "phase_images": phase_rows}
        print(f"fold {fold}: " + ", ".join(f"{m} {per_fold[fold][m]['mean_iu']:.4f}"
                                           for m in methods), flush=True)

    report = {"benchmark": "metaldam_calibration", "machine": _common.machine_info(("torch",)),
              "workdir": str(args.workdir), "configfile": args.configfile,
              "inference": infer, "per_fold": per_fold}
    finish(report, classes, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
