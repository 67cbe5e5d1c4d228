"""Phase fractions (area share of each class) of a prediction against its truth: exact values on
hand-made maps with ignore pixels, the cross-validation summary over test images, and the
crossval rule's dry run listing the new outputs."""

from __future__ import annotations

import numpy as np
import pytest

from mvfcnn.config import ClassSet
from mvfcnn.errors import InputError
from mvfcnn.metrics import area_fractions, phase_fractions

CLASSES = ClassSet((0, 1, 2), ("matrix", "a", "b"), ("#000000", "#ff0000", "#00ff00"))
X = 255  # ignore

# 4 x 5 = 20 pixels, 4 of them ignore (the right column): 16 labelled pixels
LABELS = np.array([[0, 0, 1, 1, X],
                   [0, 0, 1, 1, X],
                   [0, 0, 0, 2, X],
                   [0, 0, 0, 2, X]], dtype=np.uint8)
# truth over the 16 labelled pixels: matrix 10, a 4, b 2
PRED = np.array([[0, 1, 1, 1, 2],
                 [0, 0, 1, 1, 2],
                 [0, 0, 0, 0, 2],
                 [0, 0, 0, 2, 2]], dtype=np.uint8)
# prediction over the same 16 pixels: matrix 10, a 5, b 1 (the 4 b's on ignore do not count)


def test_area_fractions_all_pixels_and_valid_only():
    np.testing.assert_array_equal(area_fractions(PRED, 3), [10 / 20, 5 / 20, 5 / 20])
    valid = LABELS != X
    np.testing.assert_array_equal(area_fractions(PRED, 3, valid), [10 / 16, 5 / 16, 1 / 16])
    np.testing.assert_array_equal(area_fractions(LABELS, 3, valid), [10 / 16, 4 / 16, 2 / 16])


def test_area_fractions_strips_nan_and_bad_values(monkeypatch):
    import mvfcnn.metrics as metrics

    monkeypatch.setattr(metrics, "_COUNT_ROWS", 1)  # one bincount per row: same numbers
    np.testing.assert_array_equal(area_fractions(PRED, 3, LABELS != X), [10 / 16, 5 / 16, 1 / 16])
    assert np.isnan(area_fractions(PRED, 3, np.zeros(PRED.shape, bool))).all()
    with pytest.raises(InputError, match=r"0\.\.2.*found 255"):
        area_fractions(LABELS, 3)  # ignore counted without a valid mask
    with pytest.raises(InputError, match="shape"):
        area_fractions(PRED, 3, np.ones((2, 2), bool))


def test_phase_fractions_share_the_labelled_pixels():
    truth, pred, n = phase_fractions(LABELS, PRED, CLASSES)
    assert n == 16
    np.testing.assert_array_equal(truth, [10 / 16, 4 / 16, 2 / 16])
    np.testing.assert_array_equal(pred, [10 / 16, 5 / 16, 1 / 16])
    with pytest.raises(InputError, match="differs"):
        phase_fractions(LABELS, PRED[:, :4], CLASSES)
