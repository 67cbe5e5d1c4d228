"""MetalDAM: what averaging the softmax of runs that differ only in their seed gives (issue 22's
"which lever would close the rest"; Biswas et al. 2023 averaged 3 models), or of one run's
predictions at several image scales.

Usage: ``python benchmarks/metaldam_ensemble.py --workdirs RUN_A RUN_B [...] [--scales 1 0.75
...] [--configfile overlay.yaml ...] [--folds 0 1 2] [--out
benchmarks/results/metaldam_ensemble.json]``.

Each workdir is a finished ``benchmarks/metaldam.py`` run of the same configuration but its seed
(e.g. the default and ``metaldam_lever_seed1.yaml``). Per fold, every run's final FCN stage
predicts the fold's test images with the config's inference settings (TTA included; each run's
plain argmax must equal its own ``pred/*.tif``, checked); the ensemble is the argmax of the mean
of their softmax. Recorded per fold and as mean ± SE: 5- and 4-class mean IoU and per-class IoU
of each run alone and of the ensemble, and the phase-fraction errors; the cost of an ensemble is
one training and one prediction per member.

``--scales`` makes every (run, scale) a member: the test image is resized by the scale
(bilinear, anti-aliased when shrunk), predicted with the same settings, and its softmax resized
back to the image (multi-scale test-time averaging; the networks trained at scale 1 only). One
workdir is then enough.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
from metaldam_calibration import merged_config, predict_as_the_run, scores

ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE = "ensemble"


def predict_scaled(model, image: np.ndarray, infer: dict[str, Any], scale: float) -> np.ndarray:
    """(K, H, W) float32 softmax of ``image`` predicted at ``scale`` times its size."""
    from skimage.transform import resize

    from mvfcnn.inference.predict import predict_image

    height, width = image.shape[:2]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    scaled = resize(image, size, order=1, preserve_range=True, anti_aliasing=scale < 1)
    _, probs = predict_image(model, np.clip(np.rint(scaled), 0, 255).astype(np.uint8), **infer,
                             return_probs=True, progress=False)
    return resize(probs.astype(np.float32), (probs.shape[0], height, width), order=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdirs", nargs="+", type=Path, required=True,
                        help="finished runs of one configuration with different seeds")
    parser.add_argument("--configfile", nargs="*", default=[], help="overlays the runs share "
                        "(the seed overlay need not be given: inference settings are read)")
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0],
                        help="image scales each run predicts at (1 = the run's own prediction)")
    parser.add_argument("--folds", nargs="*", default=["0", "1", "2"])
    parser.add_argument("--variant", default="ft_balanced_aug")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "metaldam_ensemble.json")
    args = parser.parse_args()
    if len(args.workdirs) * len(args.scales) < 2:
        parser.error("an ensemble needs at least two --workdirs or two --scales")
    if any(scale <= 0 for scale in args.scales) or len(set(args.scales)) < len(args.scales):
        parser.error(f"--scales must be positive and distinct, got {args.scales}")

    import pandas as pd

    from mvfcnn.core.config import ClassSet
    from mvfcnn.core.io import read_image, read_labels
    from mvfcnn.core.settings import with_defaults
    from mvfcnn.evaluation.crossval import phase_fraction_summary, phase_image_rows
    from mvfcnn.evaluation.metrics import confusion_matrix
    from mvfcnn.inference.predict import inference_kwargs
    from mvfcnn.models.io import load_model

    config = merged_config(args.configfile)
    classes = ClassSet.from_config(config)
    k, ignore = classes.num_classes, classes.ignore_index
    excluded = list(config.get("crossval", {}).get("secondary_mean_excludes", []))
    final = with_defaults("fcn", config.get("fcn"))["stages"][-1]
    infer = inference_kwargs(config.get("inference", {}))
    def member(run: int, scale: float) -> str:
        return f"run{run}" if scale == 1 else f"run{run}@{scale:g}"

    members = [member(i, scale) for i in range(len(args.workdirs)) for scale in args.scales]
    methods = [*members, ENSEMBLE]
    per_fold: dict[str, Any] = {}
    phase_rows: dict[str, list] = {m: [] for m in methods}
    for fold in args.folds:
        tick = time.perf_counter()
        runs = [w / "results" / "mvfcnn" / args.variant / "sem" / f"fold{fold}"
                for w in args.workdirs]
        models = [load_model(run / f"fcn{final}.pt")[0] for run in runs]
        confusions = {m: np.zeros((k, k), np.int64) for m in methods}
        for pred_path in sorted((runs[0] / "pred").glob("*.tif")):
            sample = pred_path.stem
            prepared = args.workdirs[0] / "results" / "prepared" / sample
            image = read_image(prepared / "image.tif", sample=sample, micrograph=True)
            truth = read_labels(prepared / "labels.tif", sample=sample)
            total = None
            for index, (run, model) in enumerate(zip(runs, models, strict=True)):
                own = predict_as_the_run(model, image, infer, run / "pred" / f"{sample}.tif",
                                         f"fold {fold} {sample} run{index}")
                for scale in args.scales:
                    name = member(index, scale)
                    plain, probs = own
                    if scale != 1:
                        probs = predict_scaled(model, image, infer, scale)
                        plain = probs.argmax(axis=0).astype(np.uint8)
                    confusions[name] += confusion_matrix(truth, plain, k, ignore)
                    phase_rows[name] += phase_image_rows(fold, sample, truth, plain, classes)
                    total = probs.astype(np.float32) if total is None else total + probs
            assert total is not None
            voted = total.argmax(axis=0).astype(np.uint8)
            confusions[ENSEMBLE] += confusion_matrix(truth, voted, k, ignore)
            phase_rows[ENSEMBLE] += phase_image_rows(fold, sample, truth, voted, classes)
        per_fold[fold] = {m: scores(confusions[m], classes, excluded) for m in methods}
        per_fold[fold]["seconds"] = round(time.perf_counter() - tick, 1)
        print(f"fold {fold}: " + ", ".join(f"{m} {per_fold[fold][m]['mean_iu']:.4f}"
                                           for m in methods), flush=True)

    folds = sorted(per_fold)
    summary = {}
    for m in methods:
        values = np.array([per_fold[f][m]["mean_iu"] for f in folds])
        phase = phase_fraction_summary(pd.DataFrame(phase_rows[m]), classes)
        summary[m] = {
            "mean_iu": float(values.mean()),
            "mean_iu_se": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1
            else None,
            "mean_iu_4": float(np.mean([per_fold[f][m]["mean_iu_4"] for f in folds])),
            "per_class_iu": {c: float(np.mean([per_fold[f][m]["per_class_iu"][c] for f in folds
                                               if per_fold[f][m]["per_class_iu"][c] is not None]))
                             for c in classes.names},
            "phase_fractions": phase.to_dict(orient="records")}
    gains = [per_fold[f][ENSEMBLE]["mean_iu"] - max(per_fold[f][m]["mean_iu"] for m in members)
             for f in folds]
    report = {"benchmark": "metaldam_ensemble", "machine": _common.machine_info(("torch",)),
              "workdirs": [str(w) for w in args.workdirs], "scales": args.scales,
              "configfile": args.configfile,
              "inference": infer, "folds": folds, "per_fold": per_fold, "summary": summary,
              "ensemble_minus_best_member": gains}
    _common.write_result(args.out, report)
    for m in methods:
        print(f"{m}: mean IoU {summary[m]['mean_iu']:.4f} (4-class {summary[m]['mean_iu_4']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
