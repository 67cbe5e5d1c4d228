"""Pixel metrics (paper §5.2, Eq. 7-10, after Long et al.) and object metrics (Tables 1 and 4).

Pixel metrics are computed from ONE confusion matrix accumulated over the whole test set (sum
the per-image matrices), as Long et al. do, rather than averaged per image.

Conventions for classes absent from the ground truth (t_i = 0):
  * per-class accuracy n_ii / t_i is nan and is left out of ``mean_accuracy`` (np.nanmean);
  * IU_i = n_ii / (t_i + p_i - n_ii) is nan when the class is absent from BOTH truth and
    prediction (0/0), but 0 when it is absent from the truth and still predicted (every such
    pixel is a false positive) -- the behaviour of Long et al.'s reference ``score.py``;
  * ``fw_iu`` weights IU_i by t_i, so absent classes carry no weight.

Object metrics (docs/CONTRACTS.md "Evaluation format"): only objects with ``true_class >= 1``
count; ``pred_class == -1`` is an object with no non-matrix predicted pixel ("not segmented").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError

#: predicted class of an object in which no pixel voted for a second phase (an index beside 0..K-1)
NOT_SEGMENTED_INDEX = -1
#: the same as a row/column label in tables and CSVs
NOT_SEGMENTED_LABEL = "not_segmented"
_CHUNK = 1 << 22  # pixels per bincount call: bounds the int64 temporaries to ~32 MB
_COUNT_ROWS = 2048  # rows per bincount in area_fractions: no image-size int64 copy


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_index: int | None = 255) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class.

    Pixels whose truth is ``ignore_index`` are skipped. Works in chunks so a 7000x8000 image
    needs no full-size int64 copy; sum the results of several images to accumulate.
    """
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise InputError(f"label shape {true.shape} differs from prediction shape {pred.shape}")
    k = int(num_classes)
    out = np.zeros(k * k, dtype=np.int64)
    flat_t = true.reshape(-1)
    flat_p = pred.reshape(-1)
    for start in range(0, flat_t.size, _CHUNK):
        t = flat_t[start:start + _CHUNK].astype(np.int64)
        p = flat_p[start:start + _CHUNK].astype(np.int64)
        if ignore_index is not None:
            keep = t != ignore_index
            if not keep.all():
                t, p = t[keep], p[keep]
        if t.size == 0:
            continue
        if t.min() < 0 or t.max() >= k:
            raise InputError(f"label values must be 0..{k - 1} or {ignore_index}, found "
                             f"{sorted(set(np.unique(t).tolist()) - set(range(k)))[:5]}")
        if p.min() < 0 or p.max() >= k:
            raise InputError(f"prediction values must be 0..{k - 1}, found "
                             f"{sorted(set(np.unique(p).tolist()) - set(range(k)))[:5]}")
        out += np.bincount(t * k + p, minlength=k * k)
    return out.reshape(k, k)


def area_fractions(class_map: np.ndarray, num_classes: int,
                   valid: np.ndarray | None = None) -> np.ndarray:
    """Area fraction of each class 0..K-1 in a class map: the phase fractions a metallographer
    reports (classify's ``pixel_fraction``, the cross-validation's phase-fraction errors).

    Only the pixels where ``valid`` is True count, in the numerator and in the denominator;
    ``None`` counts every pixel. To compare a prediction with its truth, pass the same ``valid``
    (``labels != ignore_index``, see :func:`phase_fractions`) to both, so ignore pixels and
    anything outside the labelled area drop out of both fractions alike. Counted in row strips
    (no image-size int64 copy); a counted value outside 0..K-1 is an InputError; no counted
    pixel gives NaN fractions.
    """
    class_map = np.asarray(class_map)
    k = int(num_classes)
    if valid is not None and np.shape(valid) != class_map.shape:
        raise InputError(f"valid mask shape {np.shape(valid)} differs from class map shape "
                         f"{class_map.shape}")
    if class_map.size and not np.issubdtype(class_map.dtype, np.integer):
        raise InputError(f"class map must hold integer classes, got {class_map.dtype}")
    counts = np.zeros(k, dtype=np.int64)
    for r0 in range(0, class_map.shape[0] if class_map.ndim else 0, _COUNT_ROWS):
        strip = class_map[r0:r0 + _COUNT_ROWS]
        values = strip[np.asarray(valid[r0:r0 + _COUNT_ROWS], dtype=bool)] if valid is not None \
            else strip.ravel()
        if values.size == 0:
            continue
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= k:
            raise InputError(f"class values must be 0..{k - 1} in the counted pixels, found "
                             f"{low if low < 0 else high}")
        counts += np.bincount(values.ravel(), minlength=k)[:k]
    total = int(counts.sum())
    if total == 0:
        return np.full(k, np.nan)
    return counts / total


def phase_fractions(labels: np.ndarray, pred: np.ndarray, classes: ClassSet
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """(truth fractions, predicted fractions, labelled pixels) of one image, over the SAME
    pixels: those whose label is not ``classes.ignore_index`` (255). A predicted pixel on an
    ignore label counts in neither fraction, so a prediction is not charged for area the truth
    does not describe (the band, unlabelled regions), exactly as in :func:`confusion_matrix`."""
    labels = np.asarray(labels)
    pred = np.asarray(pred)
    if labels.shape != pred.shape:
        raise InputError(f"label shape {labels.shape} differs from prediction shape {pred.shape}")
    valid = labels != classes.ignore_index
    k = classes.num_classes
    return (area_fractions(labels, k, valid), area_fractions(pred, k, valid),
            int(np.count_nonzero(valid)))


def _diag_rows_cols(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    confusion = np.asarray(confusion, dtype=np.float64)
    return np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """n_ii / t_i per class (recall); nan for a class absent from the ground truth."""
    diag, rows, _ = _diag_rows_cols(confusion)
    return _divide(diag, rows)


def per_class_iu(confusion: np.ndarray) -> np.ndarray:
    """n_ii / (t_i + p_i - n_ii); nan only when the class is absent from truth and prediction."""
    diag, rows, cols = _diag_rows_cols(confusion)
    return _divide(diag, rows + cols - diag)


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Eq. 7: sum_i n_ii / sum_i t_i (nan for an empty matrix)."""
    diag, rows, _ = _diag_rows_cols(confusion)
    total = rows.sum()
    return float(diag.sum() / total) if total > 0 else float("nan")


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def mean_accuracy(confusion: np.ndarray) -> float:
    """Eq. 8, over the classes present in the ground truth."""
    return _nanmean(per_class_accuracy(confusion))


def mean_iu(confusion: np.ndarray) -> float:
    """Eq. 9, over the classes present in the ground truth or the prediction."""
    return _nanmean(per_class_iu(confusion))


def fw_iu(confusion: np.ndarray) -> float:
    """Eq. 10: IU weighted by the ground-truth frequency t_i / sum_k t_k."""
    _, rows, _ = _diag_rows_cols(confusion)
    total = rows.sum()
    if total <= 0:
        return float("nan")
    iu = per_class_iu(confusion)
    present = rows > 0
    return float((rows[present] * iu[present]).sum() / total)


def pixel_report(confusion: np.ndarray, classes: ClassSet) -> dict[str, Any]:
    """The "pixel" part of metrics.json (Tables 5 and 6); fractions in [0, 1], nan as above."""
    confusion = np.asarray(confusion)
    k = classes.num_classes
    if confusion.shape != (k, k):
        raise InputError(f"confusion matrix shape {confusion.shape} does not match {k} classes")
    acc = per_class_accuracy(confusion)
    iu = per_class_iu(confusion)
    return {
        "pixel_accuracy": pixel_accuracy(confusion),
        "mean_accuracy": mean_accuracy(confusion),
        "mean_iu": mean_iu(confusion),
        "fw_iu": fw_iu(confusion),
        "per_class_accuracy": {n: float(v) for n, v in zip(classes.names, acc, strict=True)},
        "per_class_iu": {n: float(v) for n, v in zip(classes.names, iu, strict=True)},
        "n_pixels": int(confusion.sum()),
    }


def _evaluated(objects: pd.DataFrame, classes: ClassSet) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in ("true_class", "pred_class") if c not in objects.columns]
    if missing:
        raise InputError(f"objects table lacks column(s) {missing}")
    true = objects["true_class"].to_numpy(dtype=np.int64)
    pred = objects["pred_class"].to_numpy(dtype=np.int64)
    keep = true >= 1
    true, pred = true[keep], pred[keep]
    k = classes.num_classes
    if true.size and true.max() >= k:
        raise InputError(f"true_class values must be < {k}, found {int(true.max())}")
    bad = (pred < NOT_SEGMENTED_INDEX) | (pred >= k)
    if bad.any():
        raise InputError(f"pred_class values must be -1..{k - 1}, found {int(pred[bad][0])}")
    return true, pred


def object_report(objects: pd.DataFrame, classes: ClassSet) -> dict[str, Any]:
    """The object part of metrics.json.

    ``object_accuracy`` counts not-segmented objects as wrong (Table 1/2/3);
    ``object_accuracy_segmented`` leaves them out (Table 4's "Total Accuracy"). ``per_class``
    follows Table 4 too: recall = correct / support and precision = correct / predicted-as-class,
    both over SEGMENTED objects only (nan when the denominator is 0); ``support`` is the number of
    segmented objects of that true class (Table 4's column total) and ``not_segmented`` the number
    of that class's objects the segmentation missed.
    """
    true, pred = _evaluated(objects, classes)
    n = int(true.size)
    segmented = pred != NOT_SEGMENTED_INDEX
    correct = true == pred
    n_correct = int(correct.sum())
    n_segmented = int(segmented.sum())
    per_class: dict[str, dict[str, float | int]] = {}
    for index in classes.foreground:
        is_true = (true == index) & segmented
        support = int(is_true.sum())
        predicted = int((pred == index).sum())
        hits = int((is_true & correct).sum())
        per_class[classes.names[index]] = {
            "recall": hits / support if support else float("nan"),
            "precision": hits / predicted if predicted else float("nan"),
            "support": support,
            "not_segmented": int(((true == index) & ~segmented).sum()),
        }
    return {
        "n_objects": n,
        "n_correct": n_correct,
        "object_accuracy": n_correct / n if n else float("nan"),
        "not_segmented": n - n_segmented,
        "object_accuracy_segmented": n_correct / n_segmented if n_segmented else float("nan"),
        "per_class": per_class,
    }


def object_confusion(objects: pd.DataFrame, classes: ClassSet) -> pd.DataFrame:
    """Object counts as the paper's Table 4: rows = predicted class, columns = actual class.

    Rows are the foreground classes plus ``not_segmented``; a row for class 0 is added only when
    some object was predicted as class 0 (possible for baselines, never for max-voting).
    """
    true, pred = _evaluated(objects, classes)
    rows = list(classes.foreground)
    if (pred == 0).any():
        rows = [0, *rows]
    cols = list(classes.foreground)
    table = np.zeros((len(rows) + 1, len(cols)), dtype=np.int64)
    row_of = np.full(classes.num_classes + 1, -1, dtype=np.int64)  # indexed by pred + 1
    row_of[[c + 1 for c in rows]] = np.arange(len(rows))
    row_of[0] = len(rows)
    np.add.at(table, (row_of[pred + 1], true - 1), 1)  # columns are classes 1..K-1
    index = pd.Index([classes.names[c] for c in rows] + [NOT_SEGMENTED_LABEL], name="predicted")
    columns = pd.Index([classes.names[c] for c in cols], name="actual")
    return pd.DataFrame(table, index=index, columns=columns)
