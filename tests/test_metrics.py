"""Pixel metrics (Eq. 7-10) and object metrics (Tables 1 and 4) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.evaluation.metrics import (
    confusion_matrix,
    fw_iu,
    mean_accuracy,
    mean_iu,
    object_confusion,
    object_report,
    per_class_accuracy,
    per_class_iu,
    pixel_accuracy,
    pixel_report,
)

THREE = ClassSet.from_config({"classes": [
    {"index": 0, "name": "bg", "color": "#000000"},
    {"index": 1, "name": "a", "color": "#ff0000"},
    {"index": 2, "name": "b", "color": "#00ff00"},
]})
PAPER = ClassSet.from_config({"classes": [
    {"index": 0, "name": "matrix", "color": "#000000"},
    {"index": 1, "name": "martensite", "color": "#ff0000"},
    {"index": 2, "name": "tempered_martensite", "color": "#00ff00"},
    {"index": 3, "name": "bainite", "color": "#0000ff"},
    {"index": 4, "name": "pearlite", "color": "#ffff00"},
]})

# rows = true class, columns = predicted class
C = np.array([[5, 1, 0],
              [2, 3, 1],
              [0, 0, 4]])
# t_i (row sums) = 6, 6, 4 (total 16); p_j (column sums) = 7, 4, 5; n_ii = 5, 3, 4
# pixel accuracy  = (5 + 3 + 4) / 16 = 12/16 = 0.75
# class accuracy  = 5/6, 3/6, 4/4           -> mean = (5/6 + 1/2 + 1) / 3 = 7/9 = 0.777...
# IU              = 5/(6+7-5) = 5/8, 3/(6+4-3) = 3/7, 4/(4+5-4) = 4/5
# mean IU         = (5/8 + 3/7 + 4/5) / 3 = (0.625 + 0.428571 + 0.8) / 3 = 0.617857
# fw IU           = (6*5/8 + 6*3/7 + 4*4/5) / 16 = (3.75 + 2.571429 + 3.2) / 16 = 0.595089


def test_hand_computed_three_class_metrics() -> None:
    assert pixel_accuracy(C) == pytest.approx(0.75)
    np.testing.assert_allclose(per_class_accuracy(C), [5 / 6, 0.5, 1.0])
    assert mean_accuracy(C) == pytest.approx(7 / 9)
    np.testing.assert_allclose(per_class_iu(C), [5 / 8, 3 / 7, 4 / 5])
    assert mean_iu(C) == pytest.approx((5 / 8 + 3 / 7 + 4 / 5) / 3)
    assert mean_iu(C) == pytest.approx(0.617857, abs=1e-6)
    assert fw_iu(C) == pytest.approx((6 * 5 / 8 + 6 * 3 / 7 + 4 * 4 / 5) / 16)
    assert fw_iu(C) == pytest.approx(0.595089, abs=1e-6)


def test_confusion_matrix_from_pixels_and_accumulation() -> None:
    # pixels reproducing C, split over two "images" whose matrices must sum to C
    true = np.repeat([0, 0, 1, 1, 1, 2], [5, 1, 2, 3, 1, 4]).astype(np.uint8)
    pred = np.repeat([0, 1, 0, 1, 2, 2], [5, 1, 2, 3, 1, 4]).astype(np.uint8)
    true = np.append(true, [255, 255]).astype(np.uint8)  # ignored pixels
    pred = np.append(pred, [2, 0]).astype(np.uint8)
    first = confusion_matrix(true[:9].reshape(3, 3), pred[:9].reshape(3, 3), 3)
    second = confusion_matrix(true[9:], pred[9:], 3)
    assert first.dtype == np.int64
    np.testing.assert_array_equal(first + second, C)
    np.testing.assert_array_equal(confusion_matrix(true, pred, 3), C)


def test_confusion_matrix_rejects_bad_values() -> None:
    with pytest.raises(InputError, match="label values"):
        confusion_matrix(np.array([0, 3], np.uint8), np.array([0, 1], np.uint8), 3)
    with pytest.raises(InputError, match="prediction values"):
        confusion_matrix(np.array([0, 1], np.uint8), np.array([0, 7], np.uint8), 3)
    with pytest.raises(InputError, match="shape"):
        confusion_matrix(np.zeros(3, np.uint8), np.zeros(4, np.uint8), 3)


def test_absent_classes_are_nan_aware() -> None:
    # class 2 absent from truth AND prediction; class 1 absent from truth but predicted once
    c = np.array([[4, 1, 0],
                  [0, 0, 0],
                  [0, 0, 0]])
    acc = per_class_accuracy(c)
    iu = per_class_iu(c)
    # accuracy: 4/5, 0/0 -> nan, 0/0 -> nan
    assert acc[0] == pytest.approx(0.8) and math.isnan(acc[1]) and math.isnan(acc[2])
    # IU: 4/(5+4-4) = 0.8; class 1: 0/(0+1-0) = 0 (false positives are penalised); class 2: nan
    assert iu[0] == pytest.approx(0.8) and iu[1] == 0.0 and math.isnan(iu[2])
    assert mean_accuracy(c) == pytest.approx(0.8)  # nan classes left out
    assert mean_iu(c) == pytest.approx(0.4)  # (0.8 + 0) / 2
    assert fw_iu(c) == pytest.approx(0.8)  # only class 0 has weight
    assert pixel_accuracy(c) == pytest.approx(0.8)
    empty = np.zeros((3, 3), dtype=np.int64)
    assert all(math.isnan(f(empty)) for f in (pixel_accuracy, mean_accuracy, mean_iu, fw_iu))


def test_pixel_report_keys() -> None:
    report = pixel_report(C, THREE)
    assert report["pixel_accuracy"] == pytest.approx(0.75)
    assert report["mean_accuracy"] == pytest.approx(7 / 9)
    assert set(report["per_class_accuracy"]) == {"bg", "a", "b"}
    assert report["per_class_accuracy"]["a"] == pytest.approx(0.5)
    assert report["per_class_iu"]["b"] == pytest.approx(0.8)
    assert report["n_pixels"] == 16
    with pytest.raises(InputError):
        pixel_report(np.zeros((2, 2)), THREE)


# ---------------------------------------------------------------- objects

# The paper's Table 4: rows = predicted, columns = actual (martensite, temp. martensite,
# bainite, pearlite), plus 48 objects the segmentation missed.
TABLE4 = np.array([[1190, 0, 11, 0],
                   [24, 268, 0, 0],
                   [39, 6, 325, 16],
                   [0, 0, 9, 317]])
NOT_SEGMENTED_BY_CLASS = [20, 4, 12, 12]  # the paper does not say; any split of 48 works


def _table4_objects() -> pd.DataFrame:
    true, pred = [], []
    for p in range(4):
        for t in range(4):
            true += [t + 1] * int(TABLE4[p, t])
            pred += [p + 1] * int(TABLE4[p, t])
    for t, n in enumerate(NOT_SEGMENTED_BY_CLASS):
        true += [t + 1] * n
        pred += [-1] * n
    # spurious (true 0) and unknown (true -1) objects must be ignored
    true += [0, 0, -1]
    pred += [1, -1, 2]
    return pd.DataFrame({"true_class": true, "pred_class": pred})


def _paper_percent(value: float) -> float:
    """The paper truncates to two decimals (e.g. 317/326 = 97.239% is printed 97.23%)."""
    return math.floor(value * 10000 + 1e-9) / 100


def test_table4_reproduces_paper_numbers() -> None:
    report = object_report(_table4_objects(), PAPER)
    assert report["n_objects"] == 2205 + 48
    assert report["n_correct"] == 1190 + 268 + 325 + 317  # 2100
    assert report["not_segmented"] == 48
    # Table 4 "Total Accuracy 95.23%": 2100 / 2205 = 0.952381 (printed truncated)
    assert report["object_accuracy_segmented"] == pytest.approx(2100 / 2205)
    assert _paper_percent(report["object_accuracy_segmented"]) == 95.23
    # Counting the 48 not-segmented objects as wrong gives 2100 / 2253 = 93.21%, NOT the 93.94%
    # the paper prints for Table 1 and in the Table 4 caption. 93.94% would need ~2235 objects in
    # the denominator (about 30 missed, not 48); with the 2262 test objects of §5.1 it would be
    # 2100 / 2262 = 92.84%. The paper's numbers are not mutually consistent; we implement the
    # stated rule (not-segmented counted wrong) and report 93.21% for this confusion matrix.
    assert report["object_accuracy"] == pytest.approx(2100 / 2253)
    assert round(100 * report["object_accuracy"], 2) == 93.21
    recall = {"martensite": 94.97, "tempered_martensite": 97.81, "bainite": 94.20,
              "pearlite": 95.19}
    precision = {"martensite": 99.08, "tempered_martensite": 91.78, "bainite": 84.19,
                 "pearlite": 97.23}
    support = {"martensite": 1253, "tempered_martensite": 274, "bainite": 345, "pearlite": 333}
    for name in recall:
        row = report["per_class"][name]
        assert _paper_percent(row["recall"]) == recall[name], name
        assert _paper_percent(row["precision"]) == precision[name], name
        assert row["support"] == support[name]
    assert [report["per_class"][n]["not_segmented"] for n in recall] == NOT_SEGMENTED_BY_CLASS


def test_table4_object_confusion_layout() -> None:
    table = object_confusion(_table4_objects(), PAPER)
    assert table.index.tolist() == ["martensite", "tempered_martensite", "bainite", "pearlite",
                                    "not_segmented"]
    assert table.columns.tolist() == ["martensite", "tempered_martensite", "bainite", "pearlite"]
    np.testing.assert_array_equal(table.to_numpy()[:4], TABLE4)
    assert table.loc["not_segmented"].tolist() == NOT_SEGMENTED_BY_CLASS


def test_object_report_small_hand_example() -> None:
    # true: a a a b b ; pred: a b -1 b b ; plus a spurious object (true 0) predicted a
    frame = pd.DataFrame({"true_class": [1, 1, 1, 2, 2, 0], "pred_class": [1, 2, -1, 2, 2, 1]})
    report = object_report(frame, THREE)
    assert report["n_objects"] == 5 and report["n_correct"] == 3
    assert report["object_accuracy"] == pytest.approx(3 / 5)  # not-segmented counted wrong
    assert report["object_accuracy_segmented"] == pytest.approx(3 / 4)
    assert report["not_segmented"] == 1
    a, b = report["per_class"]["a"], report["per_class"]["b"]
    assert (a["recall"], a["precision"], a["support"], a["not_segmented"]) == (0.5, 1.0, 2, 1)
    assert b["recall"] == 1.0 and b["precision"] == pytest.approx(2 / 3) and b["support"] == 2


def test_object_report_nan_when_nothing_predicted_or_present() -> None:
    frame = pd.DataFrame({"true_class": [1, 1], "pred_class": [1, -1]})
    report = object_report(frame, THREE)
    assert math.isnan(report["per_class"]["b"]["precision"])
    assert math.isnan(report["per_class"]["b"]["recall"])
    assert report["per_class"]["b"]["support"] == 0
    empty = object_report(pd.DataFrame({"true_class": [0], "pred_class": [1]}), THREE)
    assert empty["n_objects"] == 0 and math.isnan(empty["object_accuracy"])


def test_object_confusion_adds_matrix_row_only_when_predicted() -> None:
    frame = pd.DataFrame({"true_class": [1, 2, 2], "pred_class": [0, 2, -1]})
    table = object_confusion(frame, THREE)
    assert table.index.tolist() == ["bg", "a", "b", "not_segmented"]
    assert table.to_numpy().tolist() == [[1, 0], [0, 0], [0, 1], [0, 1]]
    report = object_report(frame, THREE)
    assert report["n_correct"] == 1 and report["object_accuracy_segmented"] == 0.5


def test_object_report_rejects_bad_classes() -> None:
    with pytest.raises(InputError):
        object_report(pd.DataFrame({"true_class": [1], "pred_class": [5]}), THREE)
    with pytest.raises(InputError):
        object_report(pd.DataFrame({"true_class": [1]}), THREE)
