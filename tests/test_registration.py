"""Registration: known similarity transforms recovered to < 1 px, the CLI report, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_image
from mvfcnn.data import cli as data_cli
from mvfcnn.data import registration as reg
from mvfcnn.data import registration_search as reg_search


def similarity(angle_deg: float, scale: float, shift: tuple[float, float],
               lom_shape: tuple[int, int], sem_shape: tuple[int, int]) -> np.ndarray:
    """LOM px -> SEM px: rotate/scale about the LOM centre onto the SEM centre + shift."""
    a = math.radians(angle_deg)
    lin = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c_lom = np.array([(lom_shape[1] - 1) / 2, (lom_shape[0] - 1) / 2])
    c_sem = np.array([(sem_shape[1] - 1) / 2, (sem_shape[0] - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c_sem + np.asarray(shift, dtype=float) - lin @ c_lom
    return m


def make_pair(seed: int = 0, size: tuple[int, int] = (256, 288), angle: float = 2.0,
              shift: tuple[float, float] = (7.0, -5.0), scale: float = 1.01,
              downscale: float = 2.0, color: bool = True, n_objects: int = 12):
    """SEM (bright lamellar blobs, bright grain boundaries) + labels + a displaced LOM view.

    The LOM is rendered from the same scene with the second phase dark, at 1/downscale
    resolution, blurred and tinted, through the known LOM -> SEM matrix (returned).
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    labels = np.zeros((h, w), np.uint8)
    for i in range(n_objects):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(8, 26, size=2)
        t = rng.uniform(0, math.pi)
        u = ((xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)) / rx
        v = (-(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)) / ry
        labels[u * u + v * v <= 1] = 1 + i % 4
    seeds = rng.uniform(0, 1, size=(25, 2)) * (h, w)
    grain = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2,
                      axis=-1)
    boundary = ndimage.grey_dilation(grain, size=2) != ndimage.grey_erosion(grain, size=2)
    fg = labels > 0
    lamellae = 0.5 + 0.5 * np.sin((xx * 0.9 + yy * 0.5) * (0.6 + 0.1 * labels))
    sem = 60 + 25 * boundary + fg * (100 + 60 * lamellae) + rng.normal(0, 6, (h, w))
    scene = ndimage.gaussian_filter(205.0 - 120.0 * fg - 30.0 * boundary, 0.5 * downscale)
    lh, lw = int(round(h / downscale)), int(round(w / downscale))
    m = similarity(angle, downscale * scale, shift, (lh, lw), (h, w))
    ly, lx = np.mgrid[0:lh, 0:lw].astype(np.float64)
    sx = m[0, 0] * lx + m[0, 1] * ly + m[0, 2]
    sy = m[1, 0] * lx + m[1, 1] * ly + m[1, 2]
    lom = ndimage.map_coordinates(scene, [sy, sx], order=1, mode="reflect")
    lom = ndimage.gaussian_filter(lom, 1.5) + rng.normal(0, 3, lom.shape)
    if color:
        lom = np.stack([lom, lom * 0.85 + 10, lom * 0.7 + 20], axis=-1)
    return (np.clip(sem, 0, 255).astype(np.uint8), np.clip(lom, 0, 255).astype(np.uint8),
            labels, m)


@pytest.mark.parametrize(("seed", "angle", "shift", "scale", "color"), [
    (0, 2.0, (7.0, -5.0), 1.01, True),
    (1, -3.0, (-12.0, 10.0), 0.98, True),
    (2, 0.7, (11.0, 12.0), 1.02, False),
    (3, 25.0, (-4.0, 3.0), 1.0, True),  # beyond the synthetic range: the log-polar search
])
def test_similarity_recovered_below_one_pixel(seed, angle, shift, scale, color):
    sem, lom, _, truth = make_pair(seed, angle=angle, shift=shift, scale=scale, color=color)
    result = reg.register(sem, lom, model="similarity")
    assert reg_search.corner_rms_error(result.matrix, truth, sem.shape) < 1.0
    assert result.contrast_sign == -1.0  # the LOM's second phase is dark
    assert result.score_after > result.score_before
    assert result.score_after > 0.9


def test_translation_and_affine_models():
    sem, lom, _, truth = make_pair(4, angle=0.0, shift=(9.0, -4.0), scale=1.0)
    m = reg.estimate_transform(sem, lom, model="translation")
    assert reg_search.corner_rms_error(m, truth, sem.shape) < 1.0
    np.testing.assert_allclose(m[:2, :2], np.eye(2) * 288 / 144, atol=1e-9)  # no rotation
    sem, lom, _, truth = make_pair(5, angle=-1.5, shift=(3.0, 8.0), scale=1.015)
    m = reg.estimate_transform(sem, lom, model="affine")
    assert reg_search.corner_rms_error(m, truth, sem.shape) < 1.0


def test_corner_rms_error_of_known_offsets():
    shape = (100, 200)
    truth = similarity(1.0, 2.0, (3.0, 4.0), (50, 100), shape)
    assert reg_search.corner_rms_error(truth, truth, shape) == pytest.approx(0.0, abs=1e-9)
    shifted = reg_search.translate(3.0, 4.0) @ truth  # every corner moves by 5 px
    assert reg_search.corner_rms_error(shifted, truth, shape) == pytest.approx(5.0)


def test_warp_to_grid_matches_known_matrix_and_fills_outside():
    lom = np.zeros((40, 50, 3), np.uint8)
    lom[10:20, 20:30] = (200, 100, 50)
    lom[0, 0] = 7  # the median must still be the matrix value 0
    m = reg_search.translate(5.0, 3.0) @ np.diag([2.0, 2.0, 1.0])  # LOM (x, y) -> SEM (2x+5, 2y+3)
    out = reg.warp_to_grid(lom, m, (100, 120), strip_rows=7)
    assert out.shape == (100, 120, 3) and out.dtype == np.uint8
    assert tuple(out[3 + 2 * 15, 5 + 2 * 25]) == (200, 100, 50)  # LOM (25, 15) centre
    assert tuple(out[99, 119]) == (0, 0, 0)  # outside the footprint: the matrix fill
    gray = reg.warp_to_grid(lom[..., 0], m, (100, 120), fill=255)
    assert gray.shape == (100, 120) and gray[99, 119] == 255 and gray[33, 55] == 200


def _run_cli(tmp_path: Path, sem, lom, truth=None, params=None, sample="s1"):
    write_image(tmp_path / "sem.tif", sem)
    write_image(tmp_path / "lom.tif", lom)
    argv = ["--sample", sample, "--sem", str(tmp_path / "sem.tif"), "--lom",
            str(tmp_path / "lom.tif"), "--params-json", json.dumps(params or {}),
            "--out-json", str(tmp_path / "out" / "reg.json"),
            "--out-lom", str(tmp_path / "out" / "reg_lom.tif")]
    if truth is not None:
        (tmp_path / "transform.json").write_text(json.dumps({"lom_to_sem": truth.tolist()}))
        argv += ["--truth", str(tmp_path / "transform.json")]
    return data_cli.register(argv), argv


def test_cli_report_passes_and_wrong_truth_fails(tmp_path, capsys):
    import tifffile

    sem, lom, _, truth = make_pair(6)
    assert _run_cli(tmp_path, sem, lom, truth)[0] == 0
    report = json.loads((tmp_path / "out" / "reg.json").read_text())
    assert report["sample"] == "s1" and report["model"] == "similarity"
    assert report["passed"] is True and report["rms_error_px"] < 1.0
    assert report["score_after"] > report["score_before"]
    assert np.asarray(report["truth_matrix"]).shape == (3, 3)
    warped = tifffile.imread(tmp_path / "out" / "reg_lom.tif")
    assert warped.shape == sem.shape + (3,) and warped.dtype == np.uint8

    # a truth 3 px off: the run still writes its outputs but reports the failure loudly
    wrong = reg_search.translate(3.0, 0.0) @ truth
    capsys.readouterr()
    assert _run_cli(tmp_path, sem, lom, wrong)[0] == 0
    report = json.loads((tmp_path / "out" / "reg.json").read_text())
    assert report["rms_error_px"] > 1.0 and report["passed"] is False
    # one warning line in the job log (stderr) and the same text in the report
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1 and "exceeds" in lines[0] and "'s1'" in lines[0]
    assert len(report["warnings"]) == 1 and report["warnings"][0] in lines[0]


def _assert_clean_failure(tmp_path: Path, argv: list[str], *fragments: str) -> None:
    with pytest.raises(InputError) as info:
        data_cli.register(argv)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_bad_inputs_name_sample_and_file(tmp_path):
    sem, lom, _, truth = make_pair(7, size=(96, 112))
    _, argv = _run_cli(tmp_path, sem, lom, truth)
    for path in (tmp_path / "out").iterdir():
        path.unlink()
    missing = [a.replace("lom.tif", "nope.tif") if a.endswith("/lom.tif") else a for a in argv]
    _assert_clean_failure(tmp_path, missing, "'s1'", "nope.tif", "not found")
    (tmp_path / "lom.tif").write_bytes(b"this is not a TIFF at all" * 10)
    _assert_clean_failure(tmp_path, argv, "'s1'", "lom.tif", "cannot read")
    write_image(tmp_path / "lom.tif", lom)
    (tmp_path / "transform.json").write_text(json.dumps({"other": 1}))
    _assert_clean_failure(tmp_path, argv, "'s1'", "transform.json", "lom_to_sem")
    (tmp_path / "transform.json").unlink()
    _assert_clean_failure(tmp_path, argv, "'s1'", "transform.json", "not found")
    flat = np.full_like(lom, 128)
    write_image(tmp_path / "lom.tif", flat)
    (tmp_path / "transform.json").write_text(json.dumps({"lom_to_sem": truth.tolist()}))
    _assert_clean_failure(tmp_path, argv, "'s1'", "lom.tif")
    bad_model = [a if not a.startswith("{") else '{"model": "bogus"}' for a in argv]
    write_image(tmp_path / "lom.tif", lom)
    _assert_clean_failure(tmp_path, bad_model, "'s1'", "bogus")


# --------------------------------------------------------------------------- synthetic dataset
@pytest.fixture(scope="module")
def synthetic_samples(default_config):
    synthetic = pytest.importorskip("mvfcnn.data.synthetic")
    from mvfcnn.core.config import ClassSet

    classes = ClassSet.from_config(default_config)
    sheet = synthetic.sample_sheet(default_config["synthetic"], "", classes)
    return classes, [(name, synthetic.render_sample(name, default_config["synthetic"], classes,
                                                    default_config["seed"]))
                     for name in sheet["sample"]]


def test_synthetic_dataset_register_mask_objects(synthetic_samples, default_config):
    """Every default synthetic sample: registration <= 1 px, mask IoU >= 0.9, objects found."""
    from mvfcnn.objects.components import find_objects, object_table
    from mvfcnn.objects.masking import make_mask, mask_iou

    classes, samples = synthetic_samples
    rcfg, mcfg = default_config["registration"], default_config["masking"]
    errors, ious = {}, {}
    for name, smp in samples:
        m = reg.estimate_transform(smp.sem, smp.lom, model=rcfg["model"],
                                   max_side=rcfg["max_side"])
        errors[name] = reg_search.corner_rms_error(m, np.asarray(smp.transform["lom_to_sem"]),
                                            smp.sem.shape)
        warped = reg.warp_to_grid(smp.lom, m, smp.sem.shape)
        valid = reg.footprint(m, smp.lom.shape, smp.sem.shape)
        gray = np.rint(warped.astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                            np.float32)).astype(np.uint8)
        mask, _ = make_mask(gray, threshold=mcfg["threshold"],
                            dark_is_foreground=mcfg["dark_is_foreground"],
                            opening_radius=mcfg["opening_radius"],
                            closing_radius=mcfg["closing_radius"],
                            min_object_area=mcfg["min_object_area"], valid=valid)
        assert not (mask & ~valid).any()
        # where the LOM has data; the uncovered border (shift/rotation) cannot be segmented
        ious[name] = mask_iou(mask, smp.labels, classes.ignore_index, valid)
        table = object_table(find_objects(mask), smp.labels, classes)
        assert len(table) > 0 and (table["true_class"] >= 1).mean() > 0.8, name
    assert max(errors.values()) <= rcfg["max_rms_error_px"], errors
    assert min(ious.values()) >= 0.9, ious


def test_cli_chain_on_a_synthetic_sample(tmp_path, default_config):
    """register -> mask -> objects through the CLIs, with the arguments the rules pass."""
    synthetic = pytest.importorskip("mvfcnn.data.synthetic")
    import pandas as pd

    from mvfcnn.core.config import ClassSet
    from mvfcnn.objects import cli as objects_cli

    classes = ClassSet.from_config(default_config)
    name = "train_pearlite_0"
    src = tmp_path / "synthetic" / name
    synthetic.generate_sample(name, default_config["synthetic"], classes, default_config["seed"],
                              src)
    out = tmp_path / "results"
    assert data_cli.register(["--sample", name, "--sem", str(src / "sem.tif"),
                              "--lom", str(src / "lom.tif"), "--truth", str(src / "transform.json"),
                              "--params-json", json.dumps(default_config["registration"]),
                              "--out-json", str(out / "reg.json"),
                              "--out-lom", str(out / "lom.tif")]) == 0
    report = json.loads((out / "reg.json").read_text())
    assert report["passed"] and report["rms_error_px"] <= 1.0
    assert objects_cli.mask(["--sample", name, "--sem", str(src / "sem.tif"), "--lom",
                             str(out / "lom.tif"), "--labels", str(src / "labels.tif"),
                             "--params-json", json.dumps(default_config["masking"]),
                             "--out-mask", str(out / "mask.tif"),
                             "--out-json", str(out / "mask.json"),
                             "--out-masked-sem", str(out / "masked.tif")]) == 0
    report = json.loads((out / "mask.json").read_text())
    assert report["iou"] >= 0.9 and 0.9 < report["lom_coverage"] < 1.0
    assert objects_cli.objects(["--sample", name, "--mask", str(out / "mask.tif"), "--labels",
                                str(src / "labels.tif"), "--image-class", "pearlite",
                                "--classes-json", json.dumps(classes.to_dict()),
                                "--out-table", str(out / "objects.csv"),
                                "--out-ids", str(out / "ids.tif")]) == 0
    table = pd.read_csv(out / "objects.csv")
    assert len(table) == report["n_components"]
    assert (table["true_class_name"] == "pearlite").mean() > 0.8
