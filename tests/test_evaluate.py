"""End-to-end evaluation on tiny files, and the shared format for MVFCNN and baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from mvfcnn.cli import main
from mvfcnn.core.config import ClassSet
from mvfcnn.evaluation.evaluate import OBJECT_COLUMNS, write_evaluation

CLASSES = ClassSet.from_config({"classes": [
    {"index": 0, "name": "ferrite", "color": "#000000"},
    {"index": 1, "name": "alpha", "color": "#ff0000"},
    {"index": 2, "name": "beta", "color": "#00ff00"},
]})
CLASSES_JSON = json.dumps(CLASSES.to_dict())


def _strict_load(path: Path) -> dict:
    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def _make_sample(root: Path, name: str, ids: np.ndarray, pred: np.ndarray, labels: np.ndarray,
                 true_class: dict[int, int]) -> None:
    for folder in ("pred", "objects", "labels", "votes"):
        (root / folder).mkdir(exist_ok=True)
    tifffile.imwrite(root / "pred" / f"{name}.tif", pred)
    tifffile.imwrite(root / "objects" / f"{name}.tif", ids)
    tifffile.imwrite(root / "labels" / f"{name}.tif", labels)
    names = dict(enumerate(CLASSES.names)) | {-1: "unknown"}
    pd.DataFrame({"object_id": list(true_class), "area": 1,
                  "true_class": list(true_class.values()),
                  "true_class_name": [names[c] for c in true_class.values()],
                  "true_share": 1.0}).to_csv(root / "objects" / f"{name}.csv", index=False)
    assert main(["vote", "--pred", str(root / "pred" / f"{name}.tif"), "--objects-ids",
                 str(root / "objects" / f"{name}.tif"), "--objects",
                 str(root / "objects" / f"{name}.csv"), "--classes-json", CLASSES_JSON,
                 "--sample", name, "--out", str(root / "votes" / f"{name}.csv")]) == 0


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    # sample s1: objects 1 (alpha, predicted alpha), 2 (beta, predicted alpha), 3 (alpha, missed)
    ids1 = np.array([[1, 1, 0, 2],
                     [1, 1, 0, 2],
                     [0, 0, 0, 0],
                     [3, 3, 0, 0]], dtype=np.uint32)
    pred1 = np.array([[1, 1, 0, 1],
                      [1, 0, 0, 1],
                      [0, 0, 0, 0],
                      [0, 0, 0, 2]], dtype=np.uint8)
    lab1 = np.array([[1, 1, 0, 2],
                     [1, 1, 0, 2],
                     [0, 0, 255, 0],
                     [1, 1, 0, 0]], dtype=np.uint8)
    # sample s2: object 1 (beta, predicted beta), 2 (spurious, true 0), 3 (unknown, true -1)
    ids2 = np.array([[1, 1, 2],
                     [1, 0, 3]], dtype=np.uint32)
    pred2 = np.array([[2, 2, 1],
                      [1, 0, 2]], dtype=np.uint8)
    lab2 = np.array([[2, 2, 0],
                     [2, 0, 255]], dtype=np.uint8)
    _make_sample(tmp_path, "s1", ids1, pred1, lab1, {1: 1, 2: 2, 3: 1})
    _make_sample(tmp_path, "s2", ids2, pred2, lab2, {1: 2, 2: 0, 3: -1})
    return tmp_path


def _evaluate_argv(root: Path, out: Path) -> list[str]:
    return ["evaluate", "--method", "mvfcnn", "--variant", "ft_balanced_aug", "--modality", "sem",
            "--classes-json", CLASSES_JSON, "--samples", "s1", "s2",
            "--labels", str(root / "labels" / "s1.tif"), str(root / "labels" / "s2.tif"),
            "--pred-dir", str(root / "pred"), "--votes-dir", str(root / "votes"),
            "--objects-dir", str(root / "objects"),
            "--out-metrics", str(out / "metrics.json"), "--out-objects", str(out / "objects.csv"),
            "--out-confusion", str(out / "confusion.csv"),
            "--out-pixel-confusion", str(out / "pixel_confusion.csv")]


def test_evaluate_end_to_end(dataset: Path) -> None:
    out = dataset / "eval"
    assert main(_evaluate_argv(dataset, out)) == 0
    metrics = _strict_load(out / "metrics.json")
    assert (metrics["method"], metrics["variant"], metrics["modality"]) == (
        "mvfcnn", "ft_balanced_aug", "sem")
    # evaluated objects: s1/1 alpha->alpha, s1/2 beta->alpha, s1/3 alpha->not seg., s2/1 beta->beta
    assert metrics["n_objects"] == 4 and metrics["n_correct"] == 2
    assert metrics["object_accuracy"] == pytest.approx(0.5)
    assert metrics["object_accuracy_segmented"] == pytest.approx(2 / 3)
    assert metrics["not_segmented"] == 1
    assert metrics["per_class"]["alpha"] == {"recall": 1.0, "precision": 0.5, "support": 1,
                                             "not_segmented": 1}
    assert metrics["per_class"]["beta"]["recall"] == 0.5
    # pixel confusion, summed over both images (255 ignored), rows truth / columns prediction:
    # s1: truth 0 (7 px): pred 0 x6, 2 x1; truth 1 (6 px): 1 x3, 0 x3; truth 2 (2 px): 1 x2
    # s2: truth 0 (2 px): pred 1 x1, 0 x1; truth 2 (3 px): 2 x2, 1 x1
    expected = np.array([[7, 1, 1],
                         [3, 3, 0],
                         [0, 3, 2]])
    pixel = pd.read_csv(out / "pixel_confusion.csv")
    assert pixel.columns.tolist() == ["true", "ferrite", "alpha", "beta"]
    np.testing.assert_array_equal(pixel[["ferrite", "alpha", "beta"]].to_numpy(), expected)
    assert metrics["pixel"]["pixel_accuracy"] == pytest.approx(12 / 20)
    assert metrics["pixel"]["per_class_accuracy"]["alpha"] == pytest.approx(0.5)
    assert metrics["pixel"]["mean_iu"] == pytest.approx((7 / 12 + 3 / 10 + 2 / 6) / 3)

    objects = pd.read_csv(out / "objects.csv", keep_default_na=False)
    assert objects.columns.tolist() == OBJECT_COLUMNS
    assert len(objects) == 6  # all objects written, only true_class >= 1 scored
    row = objects[(objects["sample"] == "s1") & (objects["object_id"] == 3)].iloc[0]
    assert (row["pred_class"], row["pred_class_name"], row["confidence"]) == (
        -1, "not_segmented", 0.0)
    assert objects.loc[objects["sample"] == "s1", "confidence"].tolist()[:2] == [1.0, 1.0]

    confusion = pd.read_csv(out / "confusion.csv")
    assert confusion.columns.tolist() == ["predicted", "alpha", "beta"]
    assert confusion["predicted"].tolist() == ["alpha", "beta", "not_segmented"]
    assert confusion[["alpha", "beta"]].to_numpy().tolist() == [[1, 1], [0, 1], [1, 0]]


def test_baseline_call_writes_the_same_format(dataset: Path) -> None:
    out = dataset / "eval"
    assert main(_evaluate_argv(dataset, out)) == 0
    mvfcnn = _strict_load(out / "metrics.json")
    baseline = pd.DataFrame({  # what a baseline has: its own per-object predictions
        "sample": ["s1", "s1", "s1", "s2"], "object_id": [1, 2, 3, 1],
        "true_class": [1, 2, 1, 2], "pred_class": [1, 1, 2, 2],
        "confidence": [0.9, 0.6, 0.55, 0.8]})
    bdir = dataset / "baseline"
    metrics = write_evaluation(baseline, CLASSES, method="cifarnet", modality="sem", variant=None,
                               out_metrics=bdir / "metrics.json",
                               out_objects=bdir / "objects.csv",
                               out_confusion=bdir / "confusion.csv")
    written = _strict_load(bdir / "metrics.json")
    assert written == metrics
    assert list(written) == [k for k in mvfcnn if k != "pixel"]
    assert written["variant"] is None and "pixel" not in written
    assert written["per_class"]["beta"].keys() == mvfcnn["per_class"]["beta"].keys()
    assert written["n_correct"] == 2 and written["not_segmented"] == 0
    objects = pd.read_csv(bdir / "objects.csv")
    assert objects.columns.tolist() == pd.read_csv(out / "objects.csv").columns.tolist()
    assert objects["true_class_name"].tolist() == ["alpha", "beta", "alpha", "beta"]
    assert (pd.read_csv(bdir / "confusion.csv").columns.tolist()
            == pd.read_csv(out / "confusion.csv").columns.tolist())


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    frame = pd.DataFrame({"sample": ["s"], "object_id": [1], "true_class": [1],
                          "pred_class": [1], "confidence": [1.0]})
    write_evaluation(frame, CLASSES, method="m", modality="lom", variant="v",
                     out_metrics=tmp_path / "m.json", out_objects=tmp_path / "o.csv",
                     out_confusion=tmp_path / "c.csv", pixel_confusion=np.eye(3, dtype=int) * 0)
    metrics = _strict_load(tmp_path / "m.json")
    assert metrics["per_class"]["beta"]["precision"] is None
    assert metrics["pixel"]["pixel_accuracy"] is None


def test_evaluate_errors_are_one_line(dataset: Path, capsys) -> None:
    out = dataset / "eval"
    argv = _evaluate_argv(dataset, out)
    labels_at = argv.index("--labels")
    short = argv[:labels_at + 2] + argv[labels_at + 3:]  # one label for two samples
    assert main(short) == 1
    (dataset / "votes" / "s2.csv").unlink()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mvfcnn evaluate: error: sample 's2'")
    tifffile.imwrite(dataset / "labels" / "s1.tif", np.zeros((3, 3), np.uint8))
    assert main(argv) == 1
    assert not (out / "metrics.json").exists()


def test_evaluate_with_file_lists_equals_folders(dataset: Path) -> None:
    # the Snakemake rule passes explicit per-sample file lists instead of folders
    assert main(_evaluate_argv(dataset, dataset / "a")) == 0
    argv = _evaluate_argv(dataset, dataset / "b")
    for flag, folder, suffix in (("--pred-dir", "pred", "tif"), ("--votes-dir", "votes", "csv"),
                                 ("--objects-dir", "objects", "csv")):
        at = argv.index(flag)
        argv[at:at + 2] = [{"pred": "--preds"}.get(folder, f"--{folder}"),
                           *(str(dataset / folder / f"{s}.{suffix}") for s in ("s1", "s2"))]
    assert main(argv) == 0
    first, second = (dataset / d / "metrics.json" for d in ("a", "b"))
    assert first.read_text() == second.read_text()
    at = argv.index("--votes")
    del argv[at + 2]  # one vote table for two samples
    assert main(argv) == 1
