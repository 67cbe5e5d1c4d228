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


# --- the workflow's path: fit-class-offsets -> predict --class-offsets -> bundle --class-offsets


def test_fitted_offsets_reach_predict_and_the_bundle(tmp_path, classes, one_thread):
    import json

    import pandas as pd
    import torch

    from mvfcnn.classify.bundle import load_for_inference, write_bundle
    from mvfcnn.classify.cli import bundle as bundle_cli
    from mvfcnn.core.io import read_image, write_image
    from mvfcnn.inference import cli as inference_cli
    from mvfcnn.inference.calibration import read_class_offsets
    from mvfcnn.inference.predict import predict_image
    from mvfcnn.models.fcn import fcn8s
    from mvfcnn.models.io import load_model, save_model

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (128, 160), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 80:] = 1
    labels[40:70, 20:60] = 2
    labels[:4] = 255  # ignored pixels are left out of the fit
    write_image(tmp_path / "image.tif", image)
    write_image(tmp_path / "labels.tif", labels)
    # 4 x 5 positions of 32-px tiles, 4 rotations each: every 10th position held out (2)
    tiles = pd.DataFrame([{"sample": "s", "y": y, "x": x, "h": 32, "w": 32, "rot": r,
                           "class": "", "image": str(tmp_path / "image.tif"),
                           "labels": str(tmp_path / "labels.tif")}
                          for y in range(0, 128, 32) for x in range(0, 160, 32)
                          for r in range(4)])
    tiles.to_csv(tmp_path / "tiles.csv", index=False)
    torch.manual_seed(0)
    model = fcn8s(num_classes=classes.num_classes, width=0.0625, fc_channels=16).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("score") and name.endswith("weight"):
                torch.nn.init.normal_(param, std=0.5)
    save_model(tmp_path / "fcn8s.pt", model, arch="fcn8s", kwargs=dict(model.kwargs),
               extra={"classes": classes.to_dict()})
    inference = {"tile_size": 64, "overlap": 8, "batch_size": 1, "precision": "fp32"}
    assert inference_cli.fit_class_offsets([
        "--model", str(tmp_path / "fcn8s.pt"), "--tiles", str(tmp_path / "tiles.csv"),
        "--params-json", json.dumps(inference), "--holdout-every", "10",
        "--objective", "fractions", "--threads", "1", "--out", str(tmp_path / "off.json")]) == 0
    record = json.loads((tmp_path / "off.json").read_text())
    assert record["classes"] == list(classes.names) and record["objective"] == "fractions"
    # positions 9 and 19 (y, x) = (32, 128) and (96, 128): rows 32-63 and 96-127, no ignored row
    assert record["fit_pixels"] == 2 * 32 * 32
    offsets = read_class_offsets(tmp_path / "off.json", list(classes.names))
    assert offsets[0] == 0 and len(offsets) == classes.num_classes

    out = tmp_path / "pred.tif"
    assert inference_cli.predict([
        "--model", str(tmp_path / "fcn8s.pt"), "--image", str(tmp_path / "image.tif"),
        "--sample", "s", "--params-json", json.dumps(inference), "--class-offsets",
        str(tmp_path / "off.json"), "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    loaded_model, _ = load_model(tmp_path / "fcn8s.pt")
    expected = predict_image(loaded_model, image, **inference, decision_offsets=offsets,
                             progress=False)
    np.testing.assert_array_equal(read_image(out), expected)

    assert bundle_cli(["--model", str(tmp_path / "fcn8s.pt"), "--classes-json",
                       json.dumps(classes.to_dict()), "--inference-json", json.dumps(inference),
                       "--class-offsets", str(tmp_path / "off.json"),
                       "--out", str(tmp_path / "bundle.pt")]) == 0
    bundled = load_for_inference(tmp_path / "bundle.pt")
    assert bundled.inference["decision_offsets"] == offsets
    # mvfcnn classify predicts with them, as the workflow's predict did
    from mvfcnn.classify.pipeline import predict_class_map

    np.testing.assert_array_equal(predict_class_map(image, bundled, progress=False), expected)
    write_bundle(tmp_path / "fcn8s.pt", tmp_path / "plain.pt", classes=classes,
                 inference=inference)
    assert "decision_offsets" not in load_for_inference(tmp_path / "plain.pt").inference
    # offsets for another class set are refused, naming the file
    other = {**record, "classes": record["classes"][::-1]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="class offsets are for classes"):
        read_class_offsets(tmp_path / "other.json", list(classes.names))
