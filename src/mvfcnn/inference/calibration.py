"""Per-class decision offsets fitted on labelled pixels the network did not train on.

A network trained on rare-class-centred tiles with a Dice term does not predict each class as
often as it occurs: on MetalDAM it over-paints defect and under-paints M/A (issue 22). Adding a
constant to each class's log-probability before the argmax moves every class boundary without
retraining. The offsets are fitted by coordinate ascent on a grid (class 0 stays at 0: only
differences matter), for one of two objectives: the mean IU of the held-out pixels
(``mean_iu``) or how closely their predicted class shares match the labelled ones
(``fractions``, the phase fractions a metallographer reports).

The held-out pixels are the positions training never saw (every ``fcn.val_holdout_every``-th
tile position of the run's tile index, rot 0, all of them; their windows overlap trained ones),
predicted with the run's inference settings, test-time augmentation included
(:mod:`mvfcnn.inference.held_out`; ``inference.class_offsets``: the workflow's
``fit_class_offsets`` rule, read by ``predict`` and kept in the classify bundle).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_json
from mvfcnn.evaluation.metrics import mean_iu

OBJECTIVES = ("mean_iu", "fractions")


def _confusion(labels: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)


def _score(confusion: np.ndarray, objective: str) -> float:
    if objective == "mean_iu":
        return mean_iu(confusion)
    total = confusion.sum()
    return -float(np.abs(confusion.sum(0) - confusion.sum(1)).sum() / max(total, 1))


def fit_class_bias(log_probs: np.ndarray, labels: np.ndarray, *, ignore_index: int | None = 255,
                   objective: str = "mean_iu", bound: float = 2.0, step: float = 0.1,
                   sweeps: int = 3) -> np.ndarray:
    """Offsets (K,) to add to ``log_probs`` (N, K) before the argmax, maximising ``objective``
    over the pixels whose ``labels`` (N,) are not ``ignore_index``.

    Offsets stay within ±``bound`` on a grid of ``step``; ties keep the smaller offset, so a
    class the pixels never show is not pushed anywhere, and zero offsets win when nothing beats
    the plain argmax.
    """
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    log_probs = np.asarray(log_probs, dtype=np.float32)
    labels = np.asarray(labels).reshape(-1)
    if log_probs.ndim != 2 or log_probs.shape[0] != labels.size:
        raise InputError(f"log_probs must be (N, K) for N = {labels.size} labels, got "
                         f"{log_probs.shape}")
    k = log_probs.shape[1]
    if ignore_index is not None:
        keep = labels != ignore_index
        log_probs, labels = log_probs[keep], labels[keep]
    labels = labels.astype(np.int64)
    if labels.size == 0:
        return np.zeros(k, dtype=np.float32)
    if labels.min() < 0 or labels.max() >= k:
        raise InputError(f"labels must be 0..{k - 1} or {ignore_index}")
    return coordinate_ascent(
        lambda bias: _score(_confusion(labels, (log_probs + bias).argmax(1), k), objective),
        k, bound=bound, step=step, sweeps=sweeps)


def coordinate_ascent(score: Callable[[np.ndarray], float], k: int, *, bound: float,
                      step: float, sweeps: int = 3) -> np.ndarray:
    """Offsets (K,) maximising ``score(offsets)``: class 0 stays at 0 (only differences move an
    argmax), each other class in turn tries every value of a grid within ±``bound``.

    The grid runs by magnitude, then sign, and only a strictly better score moves an offset, so
    ties keep the smaller offset and zero offsets win when nothing beats them. Stops after
    ``sweeps`` passes or a pass that moved nothing.
    """
    half = np.round(np.arange(0.0, bound + step / 2, step), 6)
    grid = [0.0] + [float(s * v) for v in half[1:] for s in (-1, 1)]
    bias = np.zeros(k, dtype=np.float32)
    best = score(bias)
    for _ in range(int(sweeps)):
        moved = False
        for c in range(1, k):
            trial = bias.copy()
            for value in grid:
                trial[c] = value
                value_score = score(trial)
                if value_score > best + 1e-12:
                    best, bias, moved = value_score, trial.copy(), True
        if not moved:
            break
    return bias


def biased_labels(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Class map (H, W) uint8 of softmax ``probs`` (K, H, W) with ``bias`` added to their logs."""
    probs = np.asarray(probs, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if probs.ndim != 3 or bias.shape != (probs.shape[0],):
        raise InputError(f"expected probs (K, H, W) and bias (K,), got {probs.shape} and "
                         f"{bias.shape}")
    logs = np.log(np.maximum(probs, np.float32(1e-12)))
    return (logs + bias[:, None, None]).argmax(0).astype(np.uint8)


def write_class_offsets(path: str | os.PathLike[str], offsets: np.ndarray, *, objective: str,
                        class_names: list[str], fit_pixels: int) -> None:
    """The fitted offsets as JSON, named by class, with what they were fitted on."""
    write_json(path, {"objective": objective, "fit_pixels": int(fit_pixels),
                      "classes": list(class_names),
                      "offsets": [round(float(v), 6) for v in offsets]})


def read_class_offsets(path: str | os.PathLike[str], class_names: list[str]) -> list[float]:
    """The offsets of a :func:`write_class_offsets` file, checked against the model's classes."""
    try:
        record = json.loads(open(path, encoding="utf-8").read())
        names, offsets = list(record["classes"]), [float(v) for v in record["offsets"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"not a class-offsets file ({err})", path=path) from err
    if names != list(class_names) or len(offsets) != len(names):
        raise InputError(f"class offsets are for classes {names}, the model has "
                         f"{list(class_names)}", path=path)
    return offsets


def model_class_set(meta: dict, path: str | os.PathLike[str]) -> ClassSet:
    """The class set a model file was trained with (offsets are matched to it by name)."""
    stored = (meta.get("extra") or {}).get("classes")
    if not stored:
        raise InputError("model file holds no class set, so class offsets cannot be matched",
                         path=path)
    return ClassSet.from_config(stored)
