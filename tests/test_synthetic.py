"""Synthetic dataset: sample sheet, determinism, labels, the known LOM transform, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.filters import threshold_otsu
from skimage.transform import ProjectiveTransform, warp

from mvfcnn.core.config import SAMPLE_COLUMNS, ClassSet, check_sample_sheet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_json, to_gray
from mvfcnn.data import synthetic, synthetic_textures

FILES = ("sem.tif", "lom.tif", "labels.tif", "transform.json")
UHCS = ClassSet.from_config({"classes": [
    {"index": 0, "name": "matrix", "color": "#000000"},
    {"index": 1, "name": "network", "color": "#ff0000"},
    {"index": 2, "name": "spheroidite", "color": "#00ff00"},
    {"index": 3, "name": "widmanstatten", "color": "#0000ff"},
    {"index": 4, "name": "pearlite", "color": "#ffff00"},
]})


@pytest.fixture(scope="module")
def small(default_config) -> dict:
    """The default synthetic section at 256 px (as tests/data/mini.yaml): fast to render."""
    cfg = copy.deepcopy(default_config["synthetic"])
    cfg.update(height=256, width=256, object_count=[4, 6], object_radius_px=[18, 30])
    return cfg


@pytest.fixture(scope="module")
def rendered(default_config, small):
    """Lazily rendered samples, shared by the tests: (sample, seed) -> SyntheticSample."""
    classes = ClassSet.from_config(default_config)
    cache: dict = {}

    def get(sample: str, seed: int = 0):
        if (sample, seed) not in cache:
            cache[sample, seed] = synthetic.render_sample(sample, small, classes, seed)
        return cache[sample, seed]

    return get


def test_sample_sheet_default(default_config, classes):
    cfg = default_config["synthetic"]
    sheet = synthetic.sample_sheet(cfg, "results/synthetic", classes)
    assert list(sheet.columns) == SAMPLE_COLUMNS
    assert all(sheet[c].map(type).eq(str).all() for c in sheet.columns)
    fg = [classes.names[i] for i in classes.foreground]
    expected = [f"{split}_{name}_0" for split in ("train", "test") for name in fg + ["mixed"]]
    assert list(sheet["sample"]) == [*expected, "predict_0"]
    row = sheet.set_index("sample").loc["train_martensite_0"]
    assert row["split"] == "train" and row["class"] == "martensite" and row["mask"] == ""
    assert row["sem"] == "results/synthetic/train_martensite_0/sem.tif"
    assert row["lom"] == "results/synthetic/train_martensite_0/lom.tif"
    assert row["labels"] == "results/synthetic/train_martensite_0/labels.tif"
    predict = sheet.set_index("sample").loc["predict_0"]
    assert (predict["split"], predict["labels"], predict["class"]) == ("predict", "", "")
    assert sheet.set_index("sample").loc["test_mixed_0", "class"] == ""
    check_sample_sheet(sheet, classes=classes)  # what common.smk does with it


def test_sample_sheet_other_class_sets(tmp_path):
    cfg = {"images_per_class": {"train": 2, "test": 1}, "mixed_images": {"train": 0, "test": 1},
           "predict_images": 2}
    sheet = synthetic.sample_sheet(cfg, str(tmp_path / "out"), UHCS)
    assert not (tmp_path / "out").exists()  # pure: nothing generated at DAG time
    assert len(sheet) == 4 * 3 + 1 + 2
    assert (sheet["split"] == "train").sum() == 8 and (sheet["split"] == "predict").sum() == 2
    assert set(sheet["class"]) == {"network", "spheroidite", "widmanstatten", "pearlite", ""}
    assert "train_widmanstatten_1" in set(sheet["sample"])
    check_sample_sheet(sheet, classes=UHCS)
    # texture styles follow the foreground position, whatever the names; 5th+ reuse with variants
    styles = [synthetic_textures.style_of(i, UHCS) for i in UHCS.foreground]
    assert styles == [(0, 0), (1, 0), (2, 0), (3, 0)]
    many = ClassSet(tuple(range(7)), tuple(f"c{i}" for i in range(7)), ("#000000",) * 7)
    assert [synthetic_textures.style_of(i, many) for i in many.foreground][4:] == [(0, 1), (1, 1)]


def test_unknown_sample_is_input_error(default_config, classes, tmp_path):
    with pytest.raises(InputError, match="train_austenite_0"):
        synthetic.generate_sample("train_austenite_0", default_config["synthetic"], classes, 0,
                                  tmp_path)
    assert not any(tmp_path.iterdir())


def test_deterministic_bytes_and_seed_sensitive(default_config, classes, small, tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthetic.generate_sample("test_mixed_0", small, classes, seed, tmp_path / name)
    for file in FILES:
        a, b = (tmp_path / "a" / file).read_bytes(), (tmp_path / "b" / file).read_bytes()
        assert a == b, file
        assert a != (tmp_path / "c" / file).read_bytes(), file
    # another sample with the same seed differs too (name enters the stable seed)
    other = synthetic.render_sample("predict_0", small, classes, 5)
    assert not np.array_equal(other.sem, tifffile.imread(tmp_path / "a" / "sem.tif"))


def test_label_values_and_image_classes(rendered, classes):
    allowed = set(classes.indices) | {classes.ignore_index}
    for index in classes.foreground:
        name = classes.names[index]
        for split in ("train", "test"):
            labels = rendered(f"{split}_{name}_0").labels
            assert labels.dtype == np.uint8 and set(np.unique(labels)) <= allowed
            counts = np.bincount(labels.ravel(), minlength=256)[1: classes.num_classes]
            assert counts.argmax() + 1 == index, (split, name, counts)
            assert counts[index - 1] >= 0.85 * counts.sum()
    for sample in ("test_mixed_0", "predict_0"):
        present = set(np.unique(rendered(sample).labels)) - {0, classes.ignore_index}
        assert present == set(classes.foreground), sample


def test_ignore_ring_is_one_pixel_object_boundary(rendered, classes):
    labels = rendered("test_mixed_0").labels
    ring = labels == classes.ignore_index
    fg = (labels > 0) & ~ring
    inner = np.zeros_like(ring)
    inner[1:-1, 1:-1] = True
    # every interior ring pixel touches the matrix, and no object pixel touches the matrix
    pad = np.pad(labels == 0, 1)
    touches = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]
    assert ring.any() and np.all(touches[ring & inner])
    assert not np.any(touches[fg & inner])


def test_sem_and_lom_grey_levels(rendered):
    sample = rendered("test_mixed_0")
    labels, sem = sample.labels, sample.sem
    assert sem.dtype == np.uint8 and sem.shape == labels.shape == (256, 256)
    matrix, phase = labels == 0, (labels > 0) & (labels < 255)
    assert np.median(sem[phase]) > np.median(sem[matrix]) + 25  # second phase brighter in SEM
    assert sample.lom.dtype == np.uint8 and sample.lom.shape == (128, 128, 3)  # colour LOM


def _lom_iou(sample, matrix: np.ndarray) -> float:
    """Warp the LOM onto the SEM grid with `matrix` and compare its dark region to the labels."""
    gray = to_gray(sample.lom).astype(np.float32)
    back = warp(gray, ProjectiveTransform(np.linalg.inv(matrix)), output_shape=sample.labels.shape,
                order=1, preserve_range=True, cval=np.nan)
    valid = np.isfinite(back) & (sample.labels != 255)
    dark = back < threshold_otsu(back[np.isfinite(back)])
    fg = sample.labels > 0
    return float((dark & fg & valid).sum() / ((dark | fg) & valid).sum())


def test_lom_transform_is_the_truth(rendered):
    sample = rendered("test_mixed_0", seed=3)
    tf = sample.transform
    matrix = np.array(tf["lom_to_sem"])
    assert tf["sem_shape"] == [256, 256] and tf["lom_shape"] == list(sample.lom.shape[:2])
    assert np.allclose(np.linalg.inv(matrix), tf["sem_to_lom"])
    assert abs(tf["rotation_deg"]) <= 3.0 and abs(tf["scale"] - 1) <= 0.02
    assert max(abs(v) for v in tf["shift_px"]) <= 12.0
    # the recorded rotation/scale are what the matrix holds
    s = tf["downscale"] * tf["scale"]
    angle = np.radians(tf["rotation_deg"])
    assert np.allclose(matrix[:2, :2], s * np.array([[np.cos(angle), -np.sin(angle)],
                                                     [np.sin(angle), np.cos(angle)]]))
    good = _lom_iou(sample, matrix)
    assert good > 0.9
    for dx, dy in ((3, 0), (0, -3)):
        wrong = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]]) @ matrix
        assert _lom_iou(sample, wrong) < good - 0.04


@pytest.mark.parametrize(("size", "downscale", "color", "expected"),
                         [((256, 200), 2.0, False, (128, 100)),
                          ((250, 256), 3.0, True, (83, 85, 3))])
def test_lom_shape_follows_downscale(small, classes, size, downscale, color, expected):
    cfg = copy.deepcopy(small)
    cfg.update(height=size[0], width=size[1])
    cfg["lom"].update(downscale=downscale, color=color)
    sample = synthetic.render_sample("predict_0", cfg, classes, 1)
    assert sample.sem.shape == size and sample.lom.shape == expected


def test_cli_writes_the_files_in_another_process(small, classes, tmp_path):
    """Through the real console entry point: also proves determinism across processes."""
    outdir = tmp_path / "train_bainite_0"
    argv = ["synthesize", "--sample", "train_bainite_0", "--seed", "2",
            "--params-json", json.dumps(small), "--classes-json", json.dumps(classes.to_dict()),
            "--outdir", str(outdir)]
    done = subprocess.run([sys.executable, "-m", "mvfcnn.cli", *argv], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_json(outdir / "transform.json")["image_class"] == "bainite"
    synthetic.generate_sample("train_bainite_0", small, classes, 2, tmp_path / "here")
    for file in FILES:
        assert (outdir / file).read_bytes() == (tmp_path / "here" / file).read_bytes(), file


def test_cli_unknown_sample_exits_1(small, classes, tmp_path, capsys):
    from mvfcnn.cli import main

    code = main(["synthesize", "--sample", "nope_0", "--seed", "0", "--params-json",
                 json.dumps(small), "--classes-json", json.dumps(classes.to_dict()),
                 "--outdir", str(tmp_path)])
    assert code == 1 and "nope_0" in capsys.readouterr().err


def test_large_sem_small_size(classes, small):
    sem, labels = synthetic.large_sem(300, 420, 0, classes, small)
    assert sem.shape == labels.shape == (300, 420) and sem.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(classes.indices) | {255}
    again, _ = synthetic.large_sem(300, 420, 0, classes, small)
    assert np.array_equal(sem, again)
