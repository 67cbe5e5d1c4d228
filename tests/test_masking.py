"""Masking: IoU on a LOM-like fixture, Otsu vs explicit threshold, cleanup, CLI and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_image
from mvfcnn.objects.cli import mask as mask_cli
from mvfcnn.objects.masking import disk, make_mask, mask_iou, otsu_threshold

PARAMS = {"threshold": None, "dark_is_foreground": True, "opening_radius": 1,
          "closing_radius": 2, "min_object_area": 80}


def lom_like(seed: int = 0, shape: tuple[int, int] = (160, 200)):
    """Registered-LOM-like grey image: dark blurred discs on a bright matrix, dark grain-boundary
    lines and speckle; labels with a 1-px ignore ring around each object."""
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i, (cy, cx, r) in enumerate([(40, 50, 18), (110, 60, 25), (60, 140, 14), (130, 160, 20),
                                     (20, 180, 9)]):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1 + i % 3
    fg = labels > 0
    ring = fg & ~ndimage.binary_erosion(fg, disk(1))
    labels[ring] = 255
    image = np.where(fg, 70.0, 205.0)
    image[::37, :] -= 60  # one-pixel dark lines: grain boundaries
    image[:, ::41] -= 60
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 6, shape)
    image[rng.random(shape) < 0.002] = 40  # dark speckle
    return np.clip(image, 0, 255).astype(np.uint8), labels


def test_otsu_mask_reaches_high_iou_and_drops_lines_and_speckle():
    gray, labels = lom_like()
    mask, t = make_mask(gray, threshold=None)
    assert 0.45 < t < 0.65  # between the phases (70 and 205 of 255)
    assert mask_iou(mask, labels) >= 0.95
    assert ndimage.label(mask, np.ones((3, 3)))[1] == 5  # lines and speckle are gone


def test_explicit_threshold_is_used_and_matches_raw_comparison():
    gray, labels = lom_like()
    mask, t = make_mask(gray, threshold=0.2, opening_radius=0, closing_radius=0,
                        min_object_area=0)
    assert t == 0.2
    np.testing.assert_array_equal(mask, gray <= 0.2 * 255)
    otsu, t_otsu = make_mask(gray, threshold=None)
    assert t_otsu == pytest.approx(otsu_threshold(gray))
    assert mask.sum() < otsu.sum()  # a lower cut on a dark phase keeps less
    # the same image inverted, with bright foreground, gives the same mask
    inv, _ = make_mask(255 - gray, threshold=1 - t_otsu, dark_is_foreground=False)
    assert mask_iou(inv, labels) == pytest.approx(mask_iou(otsu, labels), abs=0.01)


def test_small_objects_removed_small_holes_filled_and_no_data_excluded():
    mask_in = np.full((60, 60), 220, np.uint8)
    mask_in[5:25, 5:25] = 30  # 400 px object ...
    mask_in[12:16, 12:16] = 220  # ... with a 16 px hole
    mask_in[40:46, 40:46] = 30  # 36 px object: below min_object_area
    mask_in[30:60, 0:12] = 30  # dark, but partly outside the LOM footprint
    valid = np.ones((60, 60), bool)
    valid[:, :3] = False
    mask, _ = make_mask(mask_in, threshold=0.5, opening_radius=0, closing_radius=0,
                        min_object_area=50, valid=valid)
    assert mask[5:25, 5:25].all()  # hole filled
    assert not mask[40:46, 40:46].any()  # small object removed
    assert not mask[:, :3].any() and mask[30:60, 3:12].all()  # never outside the footprint


def test_mask_iou_excludes_ignore_and_invalid():
    labels = np.array([[0, 1, 1, 255], [0, 2, 0, 0]], np.uint8)
    mask = np.array([[1, 1, 0, 1], [0, 1, 0, 0]], bool)
    assert mask_iou(mask, labels) == pytest.approx(2 / 4)  # tp 2, union 4 (ignore dropped)
    valid = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], bool)
    assert mask_iou(mask, labels, valid=valid) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- CLI
def _argv(tmp_path: Path, source: str, labels: bool = True, params: dict | None = None):
    argv = ["--sample", "m1", "--sem", str(tmp_path / "sem.tif"),
            f"--{source}", str(tmp_path / f"{source}.tif"),
            "--params-json", json.dumps(params or PARAMS),
            "--out-mask", str(tmp_path / "out" / "m1.tif"),
            "--out-json", str(tmp_path / "out" / "m1.json"),
            "--out-masked-sem", str(tmp_path / "out" / "m1_masked_sem.tif")]
    return argv + (["--labels", str(tmp_path / "labels.tif")] if labels else [])


@pytest.fixture()
def files(tmp_path):
    gray, labels = lom_like(1)
    sem = np.where(labels > 0, 170, 60).astype(np.uint8)
    rgb = np.stack([gray, (gray * 0.9).astype(np.uint8), (gray * 0.8).astype(np.uint8)], -1)
    write_image(tmp_path / "sem.tif", sem)
    # a registered LOM whose right 20 columns lie outside the LOM footprint (no data)
    matrix = np.eye(3)
    write_image(tmp_path / "lom.tif", rgb,
                metadata={"lom_to_sem": matrix.tolist(), "lom_shape": [160, 180]})
    write_image(tmp_path / "labels.tif", labels)
    return tmp_path, sem, labels


def test_cli_from_lom(files):
    import tifffile

    tmp_path, sem, labels = files
    assert mask_cli(_argv(tmp_path, "lom")) == 0
    report = json.loads((tmp_path / "out" / "m1.json").read_text())
    assert report["sample"] == "m1" and report["source"] == "lom"
    assert 0.3 < report["threshold"] < 0.7 and report["n_components"] == 5
    assert report["lom_coverage"] == pytest.approx(180 / 200, abs=0.01)
    assert report["iou"] >= 0.95 and report["iou_all"] < report["iou"]  # object cut at x=180
    mask = tifffile.imread(tmp_path / "out" / "m1.tif")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert not mask[:, 181:].any()
    masked = tifffile.imread(tmp_path / "out" / "m1_masked_sem.tif")
    np.testing.assert_array_equal(masked, np.where(mask > 0, sem, 0))


def test_cli_supplied_mask(files):
    import tifffile

    tmp_path, _, labels = files
    supplied = ((labels > 0) * 255).astype(np.uint8)
    write_image(tmp_path / "mask.tif", supplied)
    assert mask_cli(_argv(tmp_path, "mask")) == 0
    report = json.loads((tmp_path / "out" / "m1.json").read_text())
    assert report["source"] == "mask" and report["threshold"] is None
    assert report["iou"] == 1.0 and report["n_components"] == 5
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "m1.tif"), supplied > 0)


def _assert_clean_failure(tmp_path: Path, argv: list[str], *fragments: str) -> None:
    with pytest.raises(InputError) as info:
        mask_cli(argv)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_cli_bad_inputs(files):
    tmp_path, sem, labels = files
    write_image(tmp_path / "labels.tif", labels[:, :-1])
    _assert_clean_failure(tmp_path, _argv(tmp_path, "lom"), "'m1'", "labels.tif", "160x199")
    write_image(tmp_path / "labels.tif", labels)
    write_image(tmp_path / "mask.tif", np.ones((10, 10), np.uint8))
    _assert_clean_failure(tmp_path, _argv(tmp_path, "mask"), "'m1'", "mask.tif", "10x10")
    write_image(tmp_path / "mask.tif", np.zeros_like(sem))
    _assert_clean_failure(tmp_path, _argv(tmp_path, "mask"), "'m1'", "mask.tif", "empty mask")
    write_image(tmp_path / "lom.tif", np.full_like(sem, 200))  # bright everywhere
    _assert_clean_failure(tmp_path, _argv(tmp_path, "lom", params={**PARAMS, "threshold": 0.5}),
                          "'m1'", "lom.tif", "empty mask", "0.5")
    (tmp_path / "lom.tif").write_bytes(b"II*\x00 corrupt" * 30)
    _assert_clean_failure(tmp_path, _argv(tmp_path, "lom"), "'m1'", "lom.tif", "cannot read")
    (tmp_path / "sem.tif").unlink()
    _assert_clean_failure(tmp_path, _argv(tmp_path, "mask"), "'m1'", "sem.tif", "not found")
