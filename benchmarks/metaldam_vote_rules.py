"""MetalDAM objects: how MVFCNN's vote turns pixels into object classes, on the models of a
finished 6-fold run (issue 22's object target: above always-"austenite").

Usage: ``python benchmarks/metaldam_vote_rules.py --workdir DIR [--configfile overlay.yaml ...]
[--folds 0 1 ...] [--out benchmarks/results/metaldam_vote_rules.json]``.

The paper's vote (``majority``) gives each object the most frequent NON-matrix class of its
predicted pixels; an object where every pixel was predicted matrix is "not segmented" and counts
as wrong. On MetalDAM that leaves hundreds of small austenite objects unsegmented and most
precipitate objects voted austenite. Every object of the objects table IS second phase (a
component of a non-matrix label), so the matrix scores need not decide anything inside it. The
rules compared, all from the same TTA-averaged softmax of each test image (the plain argmax must
equal the run's own ``pred/*.tif``; checked):

- ``majority``: the paper's (what the workflow's ``vote`` rule does);
- ``fallback``: ``majority``, and each not-segmented object takes the majority of its pixels'
  best non-matrix class (argmax over classes 1..K-1);
- ``second_phase``: every pixel votes its best non-matrix class, matrix-predicted or not;
- ``soft``: the object takes the non-matrix class of the largest summed probability.

Then ``second_phase`` with per-class offsets added to the pixels' non-matrix log-probabilities
before their argmax (``inference.object_offsets``; the package's
:func:`mvfcnn.evaluation.voting.fit_object_offsets`), fitted on OBJECTS the fold's test images do
not hold:

- ``offsets_accuracy`` / ``offsets_balanced`` / ``offsets_accuracy_recall_floor``: cross-fitted,
  fold f's offsets maximise the object accuracy (or the mean of accuracy and mean class recall,
  or the accuracy with no class's recall more than ``inference.object_offset_recall_slack`` below
  its un-offset value; one row of offsets per object-size bin of
  ``inference.object_offset_size_edges``) of the OTHER folds' test objects, each
  predicted by its own fold's model, as the workflow's ``fit_object_offsets`` rule does. Those
  models trained on fold f's test images, so this is not strictly nested;
- ``offsets_oracle``: fitted on fold f's own test objects (accuracy): the ceiling, not a method.

Per rule and fold: object accuracy (not-segmented objects wrong), mean class recall over the
classes with test objects (recall over ALL of a class's objects), per-class recall, and the
accuracy without precipitate objects (``crossval.secondary_mean_excludes``); beside them
always answering the most frequent class of the fold's test objects.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
import pandas as pd
from metaldam_calibration import merged_config, predict_as_the_run

ROOT = Path(__file__).resolve().parents[1]
RULES = ("majority", "fallback", "second_phase", "soft")
MAJORITY = "always_most_frequent"
OFFSET_RULES = ("offsets_accuracy", "offsets_balanced", "offsets_accuracy_recall_floor",
                "offsets_oracle")


def soft_classes(probs: np.ndarray, object_ids: np.ndarray) -> np.ndarray:
    """(max_id + 1,) the non-matrix class of the largest summed probability per object id."""
    ids = object_ids.reshape(-1).astype(np.int64)
    size = int(ids.max()) + 1 if ids.size else 1
    sums = np.stack([np.bincount(ids, weights=p.reshape(-1).astype(np.float64), minlength=size)
                     for p in probs[1:]], axis=1)
    return sums.argmax(axis=1) + 1


def rule_votes(rule: str, pred: np.ndarray, probs: np.ndarray, object_ids: np.ndarray,
               objects: pd.DataFrame, classes) -> np.ndarray:
    """Predicted class (-1 = not segmented) of every object of ``objects``, in its order."""
    from mvfcnn.evaluation.voting import second_phase_map, vote_table

    if rule == "soft":
        return soft_classes(probs, object_ids)[objects["object_id"].to_numpy(np.int64)]
    source = second_phase_map(probs) if rule == "second_phase" else pred
    voted = vote_table(source, object_ids, objects, classes)["pred_class"].to_numpy(np.int64)
    if rule == "fallback":
        rescue = vote_table(second_phase_map(probs), object_ids, objects, classes)
        voted = np.where(voted < 0, rescue["pred_class"].to_numpy(np.int64), voted)
    return voted


def scores(true: np.ndarray, pred: np.ndarray, names: list[str], excluded: list[int]
           ) -> dict[str, Any]:
    recall = {}
    for index, name in enumerate(names):
        if index == 0:
            continue
        mine = true == index
        recall[name] = float((pred[mine] == index).mean()) if mine.any() else None
    present = [r for r in recall.values() if r is not None]
    keep = ~np.isin(true, excluded)
    return {"objects": int(true.size), "correct": int((true == pred).sum()),
            "object_accuracy": float((true == pred).mean()),
            "mean_recall": float(np.mean(present)),
            "not_segmented": int((pred < 0).sum()),
            "object_accuracy_secondary": float((true[keep] == pred[keep]).mean()),
            "recall": recall}


def mean_se(values: list[float]) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    return [float(array.mean()), float(array.std(ddof=1) / np.sqrt(len(array)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a finished 6-fold run")
    parser.add_argument("--configfile", nargs="*", default=[], help="overlays the run used")
    parser.add_argument("--folds", nargs="*", default=[str(f) for f in range(6)])
    parser.add_argument("--variant", default="ft_balanced_aug")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "metaldam_vote_rules.json")
    args = parser.parse_args()

    from mvfcnn.core.config import ClassSet
    from mvfcnn.core.io import read_image, read_labels
    from mvfcnn.core.settings import with_defaults
    from mvfcnn.evaluation.voting import (
        OBJECT_OFFSET_BOUND,
        OBJECT_OFFSET_OBJECTIVES,
        OBJECT_OFFSET_STEP,
        fit_object_offsets,
        object_evidence,
        offset_votes,
    )
    from mvfcnn.inference.predict import inference_kwargs
    from mvfcnn.models.io import load_model

    config = merged_config(args.configfile)
    classes = ClassSet.from_config(config)
    names = list(classes.names)
    if (config.get("inference", {}).get("class_offsets") or "none") != "none":
        raise SystemExit("runs with inference.class_offsets are not supported here")
    excluded = [names.index(n) for n in config.get("crossval", {}).get(
        "secondary_mean_excludes", [])]
    final = with_defaults("fcn", config.get("fcn"))["stages"][-1]
    infer = inference_kwargs(config.get("inference", {}))
    settings = with_defaults("inference", config.get("inference"))
    slack, edges = settings["object_offset_recall_slack"], settings["object_offset_size_edges"]
    per_fold: dict[str, Any] = {}
    evidence: dict[str, list] = {}
    for fold in args.folds:
        tick = time.perf_counter()
        run = args.workdir / "results" / "mvfcnn" / args.variant / "sem" / f"fold{fold}"
        model, _ = load_model(run / f"fcn{final}.pt")
        true_all: list[np.ndarray] = []
        evidence[fold] = []
        pred_all: dict[str, list[np.ndarray]] = {r: [] for r in RULES}
        for pred_path in sorted((run / "pred").glob("*.tif")):
            sample = pred_path.stem
            image = read_image(args.workdir / "results" / "prepared" / sample / "image.tif",
                               sample=sample, micrograph=True)
            plain, probs = predict_as_the_run(model, image, infer, pred_path,
                                              f"fold {fold} {sample}")
            objects = pd.read_csv(args.workdir / "results" / "objects" / f"{sample}.csv")
            ids = read_labels(args.workdir / "results" / "objects" / f"{sample}.tif",
                              sample=sample)
            true_all.append(objects["true_class"].to_numpy(np.int64))
            evidence[fold].append(object_evidence(probs, ids, objects, sample=sample))
            for rule in RULES:
                pred_all[rule].append(rule_votes(rule, plain, probs, ids, objects, classes))
        true = np.concatenate(true_all)
        fold_report = {r: scores(true, np.concatenate(pred_all[r]), names, excluded)
                       for r in RULES}
        frequent = int(np.bincount(true).argmax())
        fold_report[MAJORITY] = scores(true, np.full_like(true, frequent), names, excluded)
        fold_report["seconds"] = round(time.perf_counter() - tick, 1)
        per_fold[fold] = fold_report
        print(f"fold {fold}: " + ", ".join(f"{r} {fold_report[r]['object_accuracy']:.3f}/"
                                           f"{fold_report[r]['mean_recall']:.3f}"
                                           for r in (*RULES, MAJORITY)), flush=True)

    k = classes.num_classes
    fitted: dict[str, dict[str, list[float]]] = {}
    for fold in args.folds:
        others = [e for f in args.folds if f != fold for e in evidence[f]]
        fits = {"offsets_oracle": fit_object_offsets(evidence[fold], "accuracy", k,
                                                     size_edges=edges)}
        if others:
            for objective in OBJECT_OFFSET_OBJECTIVES:
                fits[f"offsets_{objective}"] = fit_object_offsets(
                    others, objective, k, recall_slack=slack, size_edges=edges)
        fitted[fold] = {}
        for rule, offsets in fits.items():
            true, pred = offset_votes(evidence[fold], offsets, edges)
            per_fold[fold][rule] = scores(true, pred, names, excluded)
            fitted[fold][rule] = [[float(v) for v in row] for row in offsets]
        print(f"fold {fold}: " + ", ".join(
            f"{r} {per_fold[fold][r]['object_accuracy']:.3f}/{per_fold[fold][r]['mean_recall']:.3f}"
            f" {fitted[fold][r]}" for r in fits), flush=True)

    folds = sorted(per_fold)
    summary = {}
    rules = [r for r in (*RULES, *OFFSET_RULES, MAJORITY) if all(r in per_fold[f] for f in folds)]
    for rule in rules:
        rows = [per_fold[f][rule] for f in folds]
        summary[rule] = {key: mean_se([r[key] for r in rows]) for key in
                         ("object_accuracy", "mean_recall", "object_accuracy_secondary")}
        summary[rule]["not_segmented"] = int(sum(r["not_segmented"] for r in rows))
        summary[rule]["recall"] = {
            name: float(np.mean([r["recall"][name] for r in rows
                                 if r["recall"][name] is not None]))
            for name in names[1:]}
    report = {"benchmark": "metaldam_vote_rules", "machine": _common.machine_info(("torch",)),
              "workdir": str(args.workdir), "configfile": args.configfile,
              "inference": infer,
              "offset_grid": {"bound": OBJECT_OFFSET_BOUND, "step": OBJECT_OFFSET_STEP,
                              "recall_slack": slack, "size_edges": edges},
              "offsets": fitted, "folds": folds, "per_fold": per_fold, "summary": summary}
    _common.write_result(args.out, report)
    for rule, row in summary.items():
        print(f"{rule}: accuracy {row['object_accuracy'][0]:.4f} +- "
              f"{row['object_accuracy'][1]:.4f}, mean recall {row['mean_recall'][0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
