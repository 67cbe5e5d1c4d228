"""Cross-validation summary on hand-made confusion matrices: exact per-fold metrics, mean ± SE,
NaN handling for a class absent from a fold, the pooled matrix, and fold selection."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mvfcnn.core.config import ClassSet, check_sample_sheet, cv_folds, fold_samples
from mvfcnn.evaluation.crossval import crossval_markdown, fold_rows, summarize

CLASSES = ClassSet((0, 1, 2), ("matrix", "a", "b"), ("#000000", "#ff0000", "#00ff00"))


def test_fold_rows_and_mean_se_exact():
    # fold 1: perfect on matrix and a, b absent everywhere -> IoU(b) NaN
    c1 = np.array([[6, 0, 0], [0, 4, 0], [0, 0, 0]])
    # fold 2: IoU matrix = 3/(3+1+1) = 0.6, a = 3/(3+1+1) = 0.6, b = 2/2 = 1
    c2 = np.array([[3, 1, 0], [1, 3, 0], [0, 0, 2]])
    rows = fold_rows({"1": c1, "2": c2}, CLASSES, secondary_exclude=("b",))
    assert rows["pixel_accuracy"].tolist() == [1.0, 0.8]
    assert rows["iu_matrix"].tolist() == [1.0, pytest.approx(0.6)]
    assert math.isnan(rows.loc[0, "iu_b"]) and rows.loc[1, "iu_b"] == 1.0
    assert rows["mean_iu"].tolist() == [1.0, pytest.approx((0.6 + 0.6 + 1.0) / 3)]
    assert rows["mean_iu_secondary"].tolist() == [1.0, pytest.approx(0.6)]
    table = summarize(rows)
    mean = table[table["fold"] == "mean"].iloc[0]
    se = table[table["fold"] == "se"].iloc[0]
    assert mean["pixel_accuracy"] == pytest.approx(0.9)
    assert se["pixel_accuracy"] == pytest.approx(np.std([1.0, 0.8], ddof=1) / math.sqrt(2))
    # one fold has IoU(b): its mean is that fold's, its SE undefined
    assert mean["iu_b"] == 1.0 and math.isnan(se["iu_b"])
    assert mean["n_pixels"] == 10 + 10


def test_markdown_names_the_folds_mean_and_literature():
    rows = fold_rows({"0": np.eye(3, dtype=int) * 5, "1": np.eye(3, dtype=int) * 5}, CLASSES)
    markdown = crossval_markdown(summarize(rows), CLASSES,
                               [{"source": "X (2023)", "method": "U-Net", "metric": "mean IoU",
                                 "value": 0.677, "protocol": "their split"}],
                               title="T", notes=["note one"])
    assert "| **mean ± SE** | **100.0 ± 0.0**" in markdown
    assert "| X (2023) | U-Net | mean IoU | 67.7 | their split |" in markdown
    assert "- note one" in markdown


def test_fold_samples_without_and_with_folds():
    base = pd.DataFrame({
        "sample": ["t1", "t2", "a", "b", "c", "p"],
        "split": ["train", "train", "test", "test", "test", "predict"],
        "sem": ["x.tif"] * 6, "labels": ["l.tif"] * 5 + [""], "mask": ["m.tif"] * 6,
    })
    plain = check_sample_sheet(base)
    assert cv_folds(plain) == []
    assert fold_samples(plain, None, "train") == ["t1", "t2"]
    assert fold_samples(plain, None, "test") == ["a", "b", "c"]
    folded = check_sample_sheet(base.assign(fold=["", "", "1", "2", "2", ""]))
    assert cv_folds(folded) == ["1", "2"]
    assert fold_samples(folded, "1", "test") == ["a"]
    assert fold_samples(folded, "1", "train") == ["t1", "t2", "b", "c"]  # never predict rows
    assert fold_samples(folded, "2", "train") == ["t1", "t2", "a"]


def test_folds_sort_numerically():
    base = pd.DataFrame({"sample": [f"s{i}" for i in range(12)], "split": ["test"] * 12,
                         "sem": ["x.tif"] * 12, "labels": ["l.tif"] * 12,
                         "fold": [str(i) for i in range(12)]})
    assert cv_folds(check_sample_sheet(base)) == [str(i) for i in range(12)]
