"""Per-class decision offsets (mvfcnn.inference.calibration) on hand-made log-probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from mvfcnn.core.errors import InputError
from mvfcnn.inference.calibration import biased_labels, fit_class_bias


def _two_classes(n0: int, n1: int, margin1: float) -> tuple[np.ndarray, np.ndarray]:
    """Class-0 pixels scored [0, -1]; class-1 pixels [0, -margin1]: class 1 always loses."""
    logs = np.array([[0.0, -1.0]] * n0 + [[0.0, -margin1]] * n1, dtype=np.float32)
    labels = np.array([0] * n0 + [1] * n1)
    return logs, labels


def test_the_smallest_offset_that_recovers_an_underpredicted_class():
    logs, labels = _two_classes(6, 4, 0.25)
    # any offset in (0.25, 1.0) classifies every pixel right; the grid's smallest is 0.3
    np.testing.assert_allclose(fit_class_bias(logs, labels), [0.0, 0.3], atol=1e-6)
    np.testing.assert_allclose(fit_class_bias(logs, labels, objective="fractions"), [0.0, 0.3],
                               atol=1e-6)


def test_a_right_argmax_keeps_zero_offsets():
    logs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], np.float32))
    labels = np.array([0, 1, 2])
    np.testing.assert_array_equal(fit_class_bias(logs, labels), [0, 0, 0])


def test_offsets_stay_within_the_bound_and_ignored_pixels_do_not_count():
    logs, labels = _two_classes(2, 2, 5.0)  # class 1 needs more than the bound
    bias = fit_class_bias(logs, labels, bound=2.0)
    assert bias[0] == 0 and abs(bias[1]) <= 2.0 + 1e-6
    # the same pixels, labelled "ignore": nothing left to fit
    np.testing.assert_array_equal(fit_class_bias(logs, np.full(4, 255)), [0, 0])
    # ignored class-1 pixels leave a perfect class-0 prediction: no offset
    np.testing.assert_array_equal(fit_class_bias(logs, np.array([0, 0, 255, 255])), [0, 0])


def test_fractions_matches_the_labelled_shares():
    # 3 class-1 pixels at margins 0.15, 0.45, 0.95 and 7 class-0 pixels at [0, -1.5]: an offset
    # of 0.5 predicts 2 pixels as class 1, 1.0 predicts 3 (the labelled share), 1.6 overshoots
    logs = np.array([[0.0, -1.5]] * 7 + [[0.0, -0.15], [0.0, -0.45], [0.0, -0.95]], np.float32)
    labels = np.array([0] * 7 + [1] * 3)
    bias = fit_class_bias(logs, labels, objective="fractions")
    pred = (logs + bias).argmax(1)
    assert (pred == 1).sum() == 3
    np.testing.assert_allclose(bias, [0.0, 1.0], atol=1e-6)


def test_biased_labels_is_the_argmax_of_log_probs_plus_offsets():
    probs = np.array([[[0.6, 0.3]], [[0.4, 0.7]]], np.float32)  # (K=2, H=1, W=2)
    np.testing.assert_array_equal(biased_labels(probs, np.zeros(2)), [[0, 1]])
    np.testing.assert_array_equal(biased_labels(probs, np.array([0.0, 0.5])), [[1, 1]])
    np.testing.assert_array_equal(biased_labels(probs, np.array([0.0, -1.0])), [[0, 0]])
    assert biased_labels(probs, np.zeros(2)).dtype == np.uint8


def test_bad_arguments_are_clear_errors():
    logs, labels = _two_classes(2, 2, 0.5)
    with pytest.raises(InputError, match="objective"):
        fit_class_bias(logs, labels, objective="accuracy")
    with pytest.raises(InputError, match="N, K"):
        fit_class_bias(logs[:3], labels)
    with pytest.raises(InputError, match="labels must be"):
        fit_class_bias(logs, np.array([0, 1, 2, 0]))
    with pytest.raises(InputError, match="K, H, W"):
        biased_labels(np.zeros((2, 3)), np.zeros(2))
