"""Evaluation over a test set, in the one format shared by MVFCNN and every baseline.

:func:`write_evaluation` is the single writer of objects.csv / metrics.json / confusion.csv
(docs/CONTRACTS.md "Evaluation format"); baselines call it with their own predictions, so every
method's files are identical in layout. ``mvfcnn evaluate`` adds the MVFCNN-specific parts: one
pixel confusion matrix accumulated over all test images, and the merge of the vote tables with
the ground-truth objects tables. nan values (e.g. precision of a never-predicted class) are written
to metrics.json as ``null`` so the file is strict JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, read_labels, write_json, write_table
from mvfcnn.evaluation.metrics import (
    confusion_matrix,
    object_confusion,
    object_report,
    pixel_report,
)
from mvfcnn.evaluation.voting import class_names

OBJECT_COLUMNS = ["sample", "object_id", "true_class", "true_class_name", "pred_class",
                  "pred_class_name", "confidence"]
PathLike = str | os.PathLike[str]


def _strict_json(value: Any) -> Any:
    """nan/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def objects_frame(frame: pd.DataFrame, classes: ClassSet) -> pd.DataFrame:
    """Check and normalise an objects table to the contract columns and dtypes.

    Needs sample, object_id, true_class, pred_class and confidence; ``pred_class_name`` is always
    derived from ``pred_class`` (so -1 reads "not_segmented" everywhere); ``true_class_name`` is
    kept when given, else derived.
    """
    missing = [c for c in ("sample", "object_id", "true_class", "pred_class", "confidence")
               if c not in frame.columns]
    if missing:
        raise InputError(f"objects frame lacks column(s) {missing}")
    out = frame.copy()
    for column in ("object_id", "true_class", "pred_class"):
        out[column] = out[column].astype(np.int64)
    out["confidence"] = out["confidence"].astype(np.float64)
    if "true_class_name" not in out.columns:
        out["true_class_name"] = class_names(out["true_class"], classes)
    out["pred_class_name"] = class_names(out["pred_class"], classes)
    return out[OBJECT_COLUMNS].reset_index(drop=True)


def write_evaluation(
    objects_frame_: pd.DataFrame,
    classes: ClassSet,
    *,
    method: str,
    modality: str,
    variant: str | None,
    out_metrics: PathLike,
    out_objects: PathLike,
    out_confusion: PathLike,
    pixel_confusion: np.ndarray | None = None,
    out_pixel_confusion: PathLike | None = None,
) -> dict[str, Any]:
    """Write objects.csv, metrics.json and confusion.csv (and the pixel confusion CSV); return
    the metrics dict as written (nan -> None).

    ``objects_frame_`` holds one row per object with the OBJECT_COLUMNS (names optional); all
    rows are written, only ``true_class >= 1`` are scored. ``pixel_confusion`` (K x K, rows =
    truth) adds the "pixel" section; baselines leave it None.
    """

    frame = objects_frame(objects_frame_, classes)
    metrics: dict[str, Any] = {"method": method, "modality": modality, "variant": variant}
    metrics.update(object_report(frame, classes))
    if pixel_confusion is not None:
        metrics["pixel"] = pixel_report(pixel_confusion, classes)
    metrics = _strict_json(metrics)
    confusion = object_confusion(frame, classes)
    write_table(out_objects, frame)
    write_table(out_confusion, confusion.reset_index())
    if pixel_confusion is not None and out_pixel_confusion is not None:
        pixel = pd.DataFrame(np.asarray(pixel_confusion, dtype=np.int64),
                             index=pd.Index(classes.names, name="true"), columns=classes.names)
        write_table(out_pixel_confusion, pixel.reset_index())
    write_json(out_metrics, metrics)
    return metrics


def pixel_confusion(pairs: Iterable[tuple[str, PathLike, PathLike]],
                    classes: ClassSet) -> np.ndarray:
    """One (K, K) confusion matrix summed over (sample, prediction, labels) image pairs."""

    total = np.zeros((classes.num_classes, classes.num_classes), dtype=np.int64)
    for sample, pred_path, label_path in pairs:
        pred = read_image(pred_path, sample=sample)
        labels = read_labels(label_path, sample=sample)
        if pred.ndim != 2 or labels.ndim != 2:
            raise InputError("prediction and labels must be 2-D class images", sample=sample,
                             path=label_path)
        if pred.shape != labels.shape:
            raise InputError(f"labels {labels.shape} and prediction {pred.shape} differ in size",
                             sample=sample, path=label_path)
        try:
            total += confusion_matrix(labels, pred, classes.num_classes, classes.ignore_index)
        except InputError as err:
            raise InputError(str(err), sample=sample, path=label_path) from err
    return total


def merge_votes(objects: pd.DataFrame, votes: pd.DataFrame, sample: str) -> pd.DataFrame:
    """Ground-truth objects table + votes table of one sample -> OBJECT_COLUMNS rows."""
    for name, table, need in (("objects", objects, ("object_id", "true_class")),
                              ("votes", votes, ("object_id", "pred_class", "vote_share"))):
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise InputError(f"{name} table lacks column(s) {missing}", sample=sample)
    keep = ["object_id", "true_class"] + (["true_class_name"] if "true_class_name" in objects
                                          else [])
    try:
        merged = objects[keep].merge(votes[["object_id", "pred_class", "vote_share"]],
                                     on="object_id", how="left", validate="one_to_one")
    except pd.errors.MergeError as err:
        raise InputError(f"duplicate object ids ({err})", sample=sample) from err
    lacking = merged["pred_class"].isna()
    if lacking.any():
        raise InputError(f"{int(lacking.sum())} object(s) have no vote (e.g. id "
                         f"{int(merged.loc[lacking, 'object_id'].iloc[0])}); votes are stale",
                         sample=sample)
    merged = merged.rename(columns={"vote_share": "confidence"})
    merged.insert(0, "sample", sample)
    if "true_class_name" in merged:
        merged["true_class_name"] = merged["true_class_name"].fillna("").astype(str)
    return merged
