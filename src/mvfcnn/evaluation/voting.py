"""Max-voting (paper §4.2): each object takes the class of most of its predicted pixels.

Matrix pixels (class 0) do not vote: an object is "the second phase", so predicted matrix inside it
means "missed", not "matrix object". An object without any non-matrix predicted pixel is
"not segmented" (``pred_class = -1``), the 48 objects of the paper's Table 4 note. Ties between
classes go to the LOWEST class index (``argmax`` order), which keeps the result deterministic.

With ``inference.object_vote: second_phase`` the same vote runs on another map: each pixel's most
probable NON-matrix class (``predict``'s ``pred_second_phase``), so every pixel of an object
votes and none is left not segmented (on MetalDAM's 6 folds: object accuracy 81.1 % vs 75.8 %,
M/A recall 0.70 vs 0.46; ``benchmarks/metaldam_vote_rules.py``).

``inference.object_offsets`` adds per-class offsets to those pixels' log-probabilities before
their argmax. On a cross-validated sheet fold f's offsets are fitted on the test objects of the
OTHER folds, each predicted by its own fold's model (rule ``fit_object_offsets``), so no fold's
test objects tune its own vote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_json
from mvfcnn.evaluation.metrics import NOT_SEGMENTED_INDEX, NOT_SEGMENTED_LABEL
from mvfcnn.inference.calibration import biased_labels, coordinate_ascent

VOTE_COLUMNS = ["object_id", "pred_class", "pred_class_name", "vote_share", "n_pixels",
                "n_foreground"]
_CHUNK = 1 << 22  # pixels per bincount call (bounds the int64 temporaries)


def vote_counts(pred: np.ndarray, object_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """(max_id + 1, K) int64 pixel counts of each predicted class inside each object id."""
    pred = np.asarray(pred)
    object_ids = np.asarray(object_ids)
    if pred.shape != object_ids.shape:
        raise InputError(f"prediction shape {pred.shape} differs from object-id image shape "
                         f"{object_ids.shape}")
    k = int(num_classes)
    max_id = int(object_ids.max()) if object_ids.size else 0
    if (max_id + 1) * k > 1 << 31:
        raise InputError(f"object ids must be compact (1..N); found id {max_id}")
    counts = np.zeros((max_id + 1) * k, dtype=np.int64)
    flat_p = pred.reshape(-1)
    flat_i = object_ids.reshape(-1)
    for start in range(0, flat_p.size, _CHUNK):
        p = flat_p[start:start + _CHUNK]
        if p.size and int(p.max()) >= k:
            raise InputError(f"prediction holds class {int(p.max())} but only {k} classes exist")
        key = flat_i[start:start + _CHUNK].astype(np.int64) * k
        key += p
        counts += np.bincount(key, minlength=counts.size)
    return counts.reshape(max_id + 1, k)


def vote(pred: np.ndarray, object_ids: np.ndarray, num_classes: int, *,
         classes: ClassSet | None = None) -> pd.DataFrame:
    """One row per object id >= 1 present in ``object_ids``.

    Columns: object_id, pred_class (-1 = not segmented), vote_share (winner / n_foreground, 0
    when not segmented), n_pixels (object area), n_foreground (pixels predicted non-matrix), and
    pred_class_name when ``classes`` is given. One bincount over ``id * K + pred``; no per-object
    loop over the image.
    """
    counts = vote_counts(pred, object_ids, num_classes)[1:]  # drop background id 0
    n_pixels = counts.sum(axis=1)
    present = np.flatnonzero(n_pixels > 0)
    counts, n_pixels = counts[present], n_pixels[present]
    fg = counts[:, 1:]
    n_foreground = fg.sum(axis=1)
    winner = fg.argmax(axis=1) if fg.shape[1] else np.zeros(len(fg), dtype=np.int64)
    segmented = n_foreground > 0
    win_pixels = fg[np.arange(len(fg)), winner] if fg.shape[1] else np.zeros(len(fg))
    share = np.zeros(len(fg), dtype=np.float64)
    share[segmented] = win_pixels[segmented] / n_foreground[segmented]
    frame = pd.DataFrame({
        "object_id": (present + 1).astype(np.int64),
        "pred_class": np.where(segmented, winner + 1, NOT_SEGMENTED_INDEX).astype(np.int64),
        "vote_share": share,
        "n_pixels": n_pixels.astype(np.int64),
        "n_foreground": n_foreground.astype(np.int64),
    })
    if classes is not None:
        frame.insert(2, "pred_class_name", class_names(frame["pred_class"], classes))
    return frame


def class_names(indices: pd.Series | np.ndarray, classes: ClassSet) -> list[str]:
    """Class index -> configured name, with -1 -> "not_segmented" and other unknowns -> ""."""
    lookup = dict(enumerate(classes.names))
    lookup[NOT_SEGMENTED_INDEX] = NOT_SEGMENTED_LABEL
    return [lookup.get(int(i), "") for i in np.asarray(indices)]


def vote_table(pred: np.ndarray, object_ids: np.ndarray, objects: pd.DataFrame,
               classes: ClassSet, *, sample: str | None = None) -> pd.DataFrame:
    """Votes for every object of the objects table, in its order (docs/CONTRACTS.md columns).

    An object of the table that has no pixel in the id image gets ``not_segmented`` with
    n_pixels 0; an id in the image that the table does not list is an error (stale files).
    """
    if "object_id" not in objects.columns:
        raise InputError("objects table lacks column 'object_id'", sample=sample)
    votes = vote(pred, object_ids, classes.num_classes, classes=classes)
    wanted = objects["object_id"].to_numpy(dtype=np.int64)
    unknown = np.setdiff1d(votes["object_id"].to_numpy(), wanted)
    if unknown.size:
        raise InputError(f"object-id image holds {unknown.size} id(s) missing from the objects "
                         f"table (e.g. {int(unknown[0])}); regenerate both together",
                         sample=sample)
    votes = votes.set_index("object_id").reindex(wanted)
    missing = votes["pred_class"].isna()
    votes.loc[missing, ["pred_class", "vote_share", "n_pixels", "n_foreground"]] = [
        NOT_SEGMENTED_INDEX, 0.0, 0, 0]
    votes.loc[missing, "pred_class_name"] = NOT_SEGMENTED_LABEL
    votes = votes.reset_index()
    for column in ("pred_class", "n_pixels", "n_foreground"):
        votes[column] = votes[column].astype(np.int64)
    return votes[VOTE_COLUMNS]


# --- inference.object_offsets: per-class offsets on the second-phase vote, cross-fitted -----

#: what a fold's object offsets maximise on the other folds' test objects
OBJECT_OFFSET_OBJECTIVES = ("accuracy", "balanced", "accuracy_recall_floor")
#: the offsets' grid (log-probability units): ±4 in steps of 0.5, 3 sweeps
OBJECT_OFFSET_BOUND, OBJECT_OFFSET_STEP = 4.0, 0.5


class ObjectEvidence(NamedTuple):
    """What object-vote offsets need from one image: its object pixels only."""

    index: np.ndarray  # (N,) row of ``true`` each object pixel belongs to
    log_probs: np.ndarray  # (N, K-1) float32 log-probabilities of the non-matrix classes
    true: np.ndarray  # (M,) true class of every object of the objects table, in its order
    area: np.ndarray  # (M,) pixels of each object in the object-id image


def check_size_edges(size_edges: Sequence[float]) -> list[float]:
    """The object-area edges (px) of the offsets' size bins, checked: positive, ascending."""
    edges = [float(e) for e in size_edges]
    if any(e <= 0 for e in edges) or np.any(np.diff(edges) <= 0):
        raise InputError(f"object size edges must be positive and strictly ascending, got "
                         f"{list(size_edges)}")
    return edges


def size_bins(area: np.ndarray, size_edges: Sequence[float]) -> np.ndarray:
    """Size bin of each object area: 0 below the first edge, i from edge i-1 up to edge i."""
    return np.digitize(np.asarray(area, np.float64), np.asarray(size_edges, np.float64))


def offset_table(offsets: np.ndarray | Sequence, size_edges: Sequence[float] = ()) -> np.ndarray:
    """(B, K) float32 offsets, one row per size bin (B = len(size_edges) + 1); a (K,) vector is
    the one row of no size bins."""
    table = np.atleast_2d(np.asarray(offsets, np.float32))
    if table.ndim != 2 or table.shape[0] != len(size_edges) + 1:
        raise InputError(f"object offsets of shape {np.shape(offsets)} for "
                         f"{len(size_edges) + 1} size bin(s)")
    return table


def second_phase_map(probs: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8: each pixel's most probable non-matrix class (1..K-1) of softmax ``probs``
    (K, H, W), after ``offsets`` (K,) are added to the log-probabilities: the class offsets'
    argmax (:func:`~mvfcnn.inference.calibration.biased_labels`) with matrix ruled out."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise InputError(f"expected probabilities (K, H, W) with K >= 2, got {probs.shape}")
    bias = np.zeros(probs.shape[0], np.float32) if offsets is None else np.array(
        offsets, np.float32)
    if bias.shape != (probs.shape[0],):
        raise InputError(f"{bias.size} object offsets for {probs.shape[0]} classes")
    bias[0] = -np.inf
    return biased_labels(probs, bias)


def object_second_phase_map(probs: np.ndarray, object_ids: np.ndarray, offsets: np.ndarray,
                            size_edges: Sequence[float] = ()) -> np.ndarray:
    """:func:`second_phase_map` with each object's pixels under the offsets of its size bin
    (``offsets`` (B, K), :func:`offset_table`); pixels outside objects take the first row's."""
    table = offset_table(offsets, size_edges)
    out = second_phase_map(probs, table[0])
    if len(table) > 1:
        if object_ids.shape != out.shape:
            raise InputError(f"probabilities {out.shape} and object ids {object_ids.shape} "
                             "differ in size")
        area = np.bincount(object_ids.ravel().astype(np.int64))
        pixel_bin = size_bins(area, size_edges)[object_ids]
        pixel_bin[object_ids == 0] = 0
        for row in range(1, len(table)):
            here = pixel_bin == row
            if here.any():
                out[here] = second_phase_map(probs, table[row])[here]
    return out


def object_evidence(probs: np.ndarray, object_ids: np.ndarray, objects: pd.DataFrame, *,
                    sample: str | None = None) -> ObjectEvidence:
    """The object pixels' non-matrix log-probabilities and the objects' true classes."""
    missing = {"object_id", "true_class"} - set(objects.columns)
    if missing:
        raise InputError(f"objects table lacks column(s) {sorted(missing)}", sample=sample)
    if probs.shape[1:] != object_ids.shape:
        raise InputError(f"probabilities {probs.shape[1:]} and object ids {object_ids.shape} "
                         "differ in size", sample=sample)
    inside = object_ids > 0
    wanted = objects["object_id"].to_numpy(np.int64)
    lookup = np.full(max(int(object_ids.max()), int(wanted.max(initial=0))) + 1, -1, np.int64)
    lookup[wanted] = np.arange(len(wanted))
    index = lookup[object_ids[inside]]
    keep = index >= 0
    log_probs = np.log(np.maximum(probs[1:, inside][:, keep].astype(np.float32), 1e-12)).T
    area = np.bincount(object_ids.ravel().astype(np.int64), minlength=len(lookup))[wanted]
    return ObjectEvidence(index[keep], np.ascontiguousarray(log_probs),
                          objects["true_class"].to_numpy(np.int64), area)


def offset_votes(evidence: list[ObjectEvidence], offsets: np.ndarray | Sequence,
                 size_edges: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(true, voted) classes of every object of ``evidence``: each pixel votes its best
    non-matrix class after the offsets of its object's size bin (``offsets`` (B, K) or, without
    size bins, (K,)) are added; an object without pixels votes -1."""
    table = offset_table(offsets, size_edges)[:, 1:]
    trues, votes = [], []
    for item in evidence:
        k = item.log_probs.shape[1]
        if len(table) == 1:
            best = (item.log_probs + table[0]).argmax(axis=1)
        else:
            rows = table[size_bins(item.area, size_edges)]
            best = (item.log_probs + rows[item.index]).argmax(axis=1)
        counts = np.bincount(item.index * k + best, minlength=len(item.true) * k)
        counts = counts.reshape(len(item.true), k)
        trues.append(item.true)
        votes.append(np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1) + 1,
                              NOT_SEGMENTED_INDEX))
    return np.concatenate(trues), np.concatenate(votes)


def class_recalls(true: np.ndarray, voted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K-1,) recall of each non-matrix class over its objects; NaN where it has none."""
    return np.array([float((voted[true == c] == c).mean()) if (true == c).any() else np.nan
                     for c in range(1, num_classes)])


def object_scores(true: np.ndarray, voted: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(object accuracy, mean recall over the non-matrix classes the objects hold)."""
    if true.size == 0:
        return 0.0, 0.0
    recalls = class_recalls(true, voted, num_classes)
    held = recalls[~np.isnan(recalls)]
    return float((true == voted).mean()), float(held.mean()) if held.size else 0.0


def fit_object_offsets(evidence: list[ObjectEvidence], objective: str, num_classes: int, *,
                       recall_slack: float | None = None,
                       size_edges: Sequence[float] = ()) -> np.ndarray:
    """Offsets (B, K), one row per object-size bin (:func:`size_bins`; B = 1 without edges), for
    :func:`object_second_phase_map`, maximising ``objective`` over the objects of ``evidence``:
    ``accuracy``; ``balanced`` (the mean of accuracy and mean class recall, which keeps a rare
    class from being traded away); or ``accuracy_recall_floor`` (accuracy, but no class's recall
    may fall more than ``recall_slack`` below its recall without offsets: the common classes
    gain where the rare ones lose little). Matrix and the first non-matrix class stay at 0 in
    every row; the rest by :func:`mvfcnn.inference.calibration.coordinate_ascent`. Size bins
    let a small object and a large one with the same pixels take different classes (on
    MetalDAM the small ones are mostly precipitate or austenite, M/A islands large)."""
    if objective not in OBJECT_OFFSET_OBJECTIVES:
        raise InputError(f"object offset objective must be one of "
                         f"{list(OBJECT_OFFSET_OBJECTIVES)}, got {objective!r}")
    edges = check_size_edges(size_edges)
    floored = objective == "accuracy_recall_floor"
    if floored and (recall_slack is None or not 0.0 <= recall_slack <= 1.0):
        raise InputError(f"objective {objective} needs a recall slack in [0, 1], got "
                         f"{recall_slack!r}")
    rows, free = len(edges) + 1, max(num_classes - 2, 0)

    def table(x: np.ndarray) -> np.ndarray:
        out = np.zeros((rows, num_classes), np.float32)
        out[:, 2:] = np.asarray(x[1:], np.float32).reshape(rows, free)
        return out

    floor = (class_recalls(*offset_votes(evidence, table(np.zeros(1 + rows * free)), edges),
                           num_classes) - float(recall_slack or 0.0) - 1e-9) if floored else None

    def score(x: np.ndarray) -> float:
        true, voted = offset_votes(evidence, table(x), edges)
        accuracy, recall = object_scores(true, voted, num_classes)
        if floor is not None:
            below = class_recalls(true, voted, num_classes) < floor  # NaN compares False
            return -1.0 if below.any() else accuracy
        return accuracy if objective == "accuracy" else (accuracy + recall) / 2

    # coordinate_ascent keeps its first entry at 0: a placeholder here, every row's first
    # non-matrix class is the fixed reference
    x = coordinate_ascent(score, 1 + rows * free, bound=OBJECT_OFFSET_BOUND,
                          step=OBJECT_OFFSET_STEP)
    return table(x)


def write_object_offsets(path: str | os.PathLike[str], offsets: np.ndarray, *, objective: str,
                         recall_slack: float | None, size_edges: Sequence[float],
                         class_names: list[str], extra: dict[str, Any]) -> None:
    """The fitted offsets as JSON: one row per size bin, named by class, with the fit's facts."""
    write_json(path, {"objective": objective, "recall_slack": recall_slack,
                      "size_edges": [float(e) for e in size_edges], **extra,
                      "classes": list(class_names),
                      "offsets": [[round(float(v), 6) for v in row] for row in offsets]})


def read_object_offsets(path: str | os.PathLike[str], class_names: list[str]
                        ) -> tuple[np.ndarray, list[float]]:
    """((B, K) offsets, size edges) of a :func:`write_object_offsets` file, checked against the
    model's classes."""
    try:
        record = json.loads(open(path, encoding="utf-8").read())
        names = list(record["classes"])
        edges = check_size_edges(record.get("size_edges", []))
        table = offset_table(record["offsets"], edges)
    except (OSError, ValueError, KeyError, TypeError, InputError) as err:
        raise InputError(f"not an object-offsets file ({err})", path=path) from err
    if names != list(class_names) or table.shape[1] != len(names):
        raise InputError(f"object offsets are for classes {names}, the model has "
                         f"{list(class_names)}", path=path)
    return table, edges
