"""Real micrographs: the MetalDAM release read as published (../shared/data/metaldam).

The adapter and `prepare` on real files (JPEG stored as RGB, the information band, an RGB label
map, scale bars), errors on bad real-data input, and a miniature cross-validated run on crops of
real images that reaches the cross-validation table. The release is never copied into the
repository; the tests skip when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mvfcnn.core.config import ClassSet, check_sample_sheet, cv_folds, fold_samples
from mvfcnn.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
METALDAM = ROOT.parent / "shared" / "data" / "metaldam"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

pytestmark = pytest.mark.skipif(not (METALDAM / "metadata.sqlite").exists(),
                                reason="MetalDAM release not found at ../shared/data/metaldam")


@pytest.fixture(scope="module")
def classes() -> ClassSet:
    config = yaml.safe_load((ROOT / "config" / "metaldam.yaml").read_text())
    return ClassSet.from_config(config)


@pytest.fixture(scope="module")
def metadata() -> pd.DataFrame:
    with sqlite3.connect(METALDAM / "metadata.sqlite") as connection:
        return pd.read_sql_query("SELECT * FROM micrograph", connection).set_index(
            "micrograph_id")


@pytest.fixture(scope="module")
def sheet(classes):
    from mvfcnn.data.datasets import metaldam_sample_sheet

    return check_sample_sheet(metaldam_sample_sheet(METALDAM), classes=classes)


def test_sample_sheet_has_the_release_folds(sheet):
    assert len(sheet) == 42
    assert cv_folds(sheet) == ["0", "1", "2", "3", "4", "5"]
    tested = []
    for fold in cv_folds(sheet):
        test = fold_samples(sheet, fold, "test")
        train = fold_samples(sheet, fold, "train")
        assert len(test) == 7 and len(train) == 35
        assert not set(test) & set(train)
        tested += test
    assert sorted(tested) == sorted(sheet.index)  # every image is tested exactly once
    # fold 2's test list, whose train list ends in a space in the release
    assert fold_samples(sheet, "2", "test") == [f"micrograph{i}" for i in (0, 1, 17, 27, 28, 36,
                                                                          39)]
    assert sheet.loc["micrograph15", "crop_bottom"] == "66"


@pytest.mark.parametrize("image_id", [0, 4, 15, 26])
def test_prepare_crops_the_band_and_counts_match_the_metadata(image_id, classes, metadata):
    """JPEG RGB -> grey, band cropped (65 or 66 rows), labels (RGB for 26) on the same grid;
    the per-class pixel counts equal the release's label0..label4."""
    from mvfcnn.data.prepare import prepare_sample

    row = metadata.loc[image_id]
    image, labels, record = prepare_sample(
        f"micrograph{image_id}", str(METALDAM / row["image_path"]),
        str(METALDAM / row["annotation_path"]), classes, crop_bottom=int(row["cropbar"]),
        scale_bar_um=float(row["micron_bar"]))
    assert image.ndim == 2 and image.dtype == np.uint8
    assert image.shape == (row["height"], row["width"]) == labels.shape
    assert record.class_pixels == [int(row[f"label{i}"]) for i in range(5)]
    assert sum(record.class_pixels) == row["total"]
    assert record.intensity_warning is None  # real 8-bit SEMs use their range


def test_rgb_label_map_is_read_as_grey():
    from skimage import io as skio

    from mvfcnn.core.io import read_labels

    raw = skio.imread(METALDAM / "labels" / "micrograph26.png")
    assert raw.ndim == 3 and raw.shape[-1] == 3
    labels = read_labels(METALDAM / "labels" / "micrograph26.png")
    assert labels.shape == raw.shape[:2]
    np.testing.assert_array_equal(labels, raw[..., 0])


def test_pixel_size_from_the_scale_bar(metadata):
    """The bar is measured in the band: images of one magnification and width agree; the ruler
    style of the 1280-px images has no bar line, so their pixel size stays unknown."""
    from mvfcnn.core.io import read_image
    from mvfcnn.data.prepare import scale_bar_pixels

    sizes = []
    for image_id in (0, 1, 5, 6, 9):  # 10000x, 1024 px wide
        row = metadata.loc[image_id]
        image = np.asarray(read_image(METALDAM / row["image_path"], gray=True, mmap=False))
        bar = scale_bar_pixels(image[row["height"]:])
        sizes.append(row["micron_bar"] / bar)
    assert max(sizes) / min(sizes) < 1.05
    assert 0.027 < np.median(sizes) < 0.030  # µm per pixel
    row = metadata.loc[4]
    image = np.asarray(read_image(METALDAM / row["image_path"], gray=True, mmap=False))
    assert scale_bar_pixels(image[row["height"]:]) is None


# --- bad real-data input: one clear message naming the file, nothing written


def _prepare_cli(tmp_path: Path, image: Path, labels: Path, crop: int = 65) -> list[str]:
    return ["prepare", "--sample", "s", "--image", str(image), "--labels", str(labels),
            "--classes-json", json.dumps(yaml.safe_load(
                (ROOT / "config" / "metaldam.yaml").read_text())),
            "--crop-bottom", str(crop), "--out-image", str(tmp_path / "out" / "image.tif"),
            "--out-labels", str(tmp_path / "out" / "labels.tif"),
            "--out-json", str(tmp_path / "out" / "prepared.json")]


def _bad_label(tmp_path: Path, kind: str) -> Path:
    from skimage import io as skio

    labels = skio.imread(METALDAM / "labels" / "micrograph0.png")
    path = tmp_path / f"bad {kind}.png"
    if kind == "value":
        labels = labels.copy()
        labels[10, 10] = 7
    elif kind == "rgb":
        labels = np.stack([labels, labels, labels], axis=-1)
        labels[5, 5, 1] = (labels[5, 5, 1] + 1) % 5
    elif kind == "size":
        labels = labels[:-3]
    skio.imsave(path, labels.astype(np.uint8), check_contrast=False)
    return path


@pytest.mark.parametrize("kind, message", [
    ("value", "label value(s) [7] are not configured classes"),
    ("rgb", "label image has 3 channels that differ"),
    ("size", "label grid 700x1024 differs from the image"),
])
def test_bad_real_labels_give_one_clear_message(tmp_path, capsys, kind, message):
    from mvfcnn.cli import main

    labels = _bad_label(tmp_path, kind)
    status = main(_prepare_cli(tmp_path, METALDAM / "images" / "micrograph0.jpg", labels))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert message in err[0] and str(labels) in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_fold_naming_no_image_is_a_clear_error(tmp_path):
    from mvfcnn.data.datasets import metaldam_sample_sheet

    copy = tmp_path / "release"
    copy.mkdir()
    shutil.copy(METALDAM / "metadata.sqlite", copy / "metadata.sqlite")
    with sqlite3.connect(copy / "metadata.sqlite") as connection:
        connection.execute("UPDATE folds SET test_partition = '4,7,99' WHERE fold_id = 0")
    with pytest.raises(InputError, match=r"fold 0: test_partition names image id\(s\) \[99\]"):
        metaldam_sample_sheet(copy)


def test_missing_release_names_the_folder(tmp_path):
    from mvfcnn.data.datasets import metaldam_sample_sheet

    with pytest.raises(InputError, match="metadata.sqlite"):
        metaldam_sample_sheet(tmp_path)


# --- a miniature cross-validated run on crops of real images


def _mini_release(root: Path) -> Path:
    """4 crops of real micrographs (with their real band below), 2 folds, as a sample sheet."""
    from skimage import io as skio

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (image_id, fold) in enumerate([(0, "a"), (1, "a"), (2, "b"), (26, "b")]):
        image = skio.imread(METALDAM / "images" / f"micrograph{image_id}.jpg")
        labels = skio.imread(METALDAM / "labels" / f"micrograph{image_id}.png")
        y0, x0, h, w = 200, 300, 160, 192
        crop = np.concatenate([image[y0:y0 + h, x0:x0 + w], image[-65:, :w]], axis=0)
        image_path = root / f"crop #{n} (real).jpg"
        label_path = root / f"crop #{n} (real).png"
        skio.imsave(image_path, crop, quality=95, check_contrast=False)
        skio.imsave(label_path, labels[y0:y0 + h, x0:x0 + w], check_contrast=False)
        rows.append({"sample": f"m{image_id}", "split": "test", "sem": str(image_path),
                     "labels": str(label_path), "fold": fold, "crop_bottom": "65",
                     "scale_bar_um": ""})
    sheet = root / "samples.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet


def _same_models_benchmark(script: str, tmp_path: Path, *args: str, overlays: list[str]) -> dict:
    """A benchmark that re-predicts a finished run's test images (folds a and b): its record,
    after checking it ran and that its predictions equal the run's own."""
    out = tmp_path / f"{Path(script).stem}.json"
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args,
                            "--folds", "a", "b", "--configfile", *overlays, "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "differs from the run's" not in bench.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
def test_mini_crossval_run_reaches_the_table(tmp_path):
    sheet = _mini_release(tmp_path / "data")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "samples": str(sheet),
        "run": {"variants": ["ft_balanced_aug"], "modalities": ["sem"],
                "baselines": ["handcrafted_svm", "cifarnet", "vgg19_svm", "vgg16"],
                "baseline_modalities": ["sem"]},
        "masking": {"min_object_area": 20},
        "prepare": {"upscale": 1},  # the committed 2x enlargement is tested on its own above
        "pretrain": {"patch_size": 32},
        "tiles": {"size": 96, "stride": 64},
    }))  # config/metaldam.yaml's object vote: offsets fitted on the other fold's test objects
    work = tmp_path / "work"
    command = [str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "--directory", str(work),
               "--configfile", str(ROOT / "config" / "config.yaml"),
               str(ROOT / "config" / "metaldam.yaml"), str(ROOT / "tests" / "data" / "mini.yaml"),
               str(overlay), "--cores", "2", "--resources", "gpu=1"]
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    table = pd.read_csv(work / "results" / "tables" / "crossval.csv")
    assert list(table["fold"].astype(str)) == ["a", "b", "mean", "se"]
    assert {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "iu_austenite",
            "mean_iu_secondary"} <= set(table.columns)
    assert table["pixel_accuracy"].between(0, 1).all()
    pooled = pd.read_csv(work / "results" / "tables" / "crossval_confusion.csv")
    assert int(pooled.iloc[:, 1:].to_numpy().sum()) == 4 * 160 * 192  # every test pixel once
    markdown = (work / "results" / "tables" / "crossval.md").read_text()
    assert "mean ± SE" in markdown and "Biswas" not in markdown  # literature: MetalDAM only
    assert (work / "results" / "figures" / "crossval_examples.png").stat().st_size > 0
    for fold in ("a", "b"):
        run = work / "results" / "mvfcnn" / "ft_balanced_aug" / "sem" / f"fold{fold}"
        assert json.loads((run / "metrics.json").read_text())["pixel"]["n_pixels"] == 2 * 160 * 192
    # the object comparison: every baseline of a fold trained on the other fold's objects (its
    # own trunk for the patch-initialised VGGs) and scored on the objects MVFCNN voted on
    objects = pd.read_csv(work / "results" / "tables" / "crossval_objects.csv", dtype={"fold": str})
    assert set(objects["method"]) == {"mvfcnn", "handcrafted_svm", "cifarnet", "vgg19_svm",
                                      "vgg16", "majority"}
    per_fold = objects[~objects["fold"].isin(["mean", "se"])]
    assert per_fold.groupby("fold")["n_objects"].nunique().eq(1).all()
    assert per_fold["object_accuracy"].between(0, 1).all()
    for fold in ("a", "b"):
        info = json.loads((work / "results" / "baselines" / "vgg16" / "sem" / f"fold{fold}"
                           / "info.json").read_text())
        assert info["init"].endswith(f"pretrain/sem/fold{fold}/trunk.pt")
        test_objects = per_fold[(per_fold["fold"] == fold) & (per_fold["method"] == "mvfcnn")]
        assert info["n_test"] == int(test_objects["n_objects"].iloc[0])
    crops = work / "results" / "baselines" / "crops" / "sem"
    assert sorted(p.name for p in crops.iterdir()) == ["m0.npz", "m1.npz", "m2.npz", "m26.npz"]
    markdown = (work / "results" / "tables" / "crossval_objects.md").read_text()
    assert "The paper's ordering" in markdown and "93.94" in markdown
    # the benchmark's summary of such a run (benchmarks/results/metaldam_objects.json)
    out = tmp_path / "objects.json"
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metaldam_objects.py"),
                            "--workdir", str(work), "--configfile", str(ROOT / "tests" / "data"
                                                                        / "mini.yaml"),
                            str(overlay), "--out", str(out)], capture_output=True, text=True,
                           timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["verdict"].startswith("The paper's ordering")
    assert set(record["mean_se"]) >= {"mvfcnn", "vgg16", "majority"}
    assert record["method_job_s"]["vgg16"] > 0 and record["min_object_area"] == 20
    assert record["object_areas"]["label_maps"] == 4
    chosen = record["object_areas"]["chosen"]["0.05"]
    assert all(share <= 0.05 for share in chosen["area_dropped_share"].values())
    # MVFCNN's objects by class and size: the same objects, and as many right, as the table's
    by_area = record["mvfcnn_by_class_and_area"]
    voted = per_fold[per_fold["method"] == "mvfcnn"]
    assert sum(r["objects"] for r in by_area) == int(voted["n_objects"].sum())
    assert sum(r["right"] for r in by_area) == round(float(
        (voted["object_accuracy"] * voted["n_objects"]).sum()))
    assert all(r["right"] + r["not_segmented"] <= r["objects"] for r in by_area)
    # the decision-offset lever on the same models: its plain prediction is the run's own
    overlays = [str(ROOT / "tests" / "data" / "mini.yaml"), str(overlay)]
    record = _same_models_benchmark("metaldam_calibration.py", tmp_path, "--workdir", str(work),
                                    overlays=overlays)
    for fold in ("a", "b"):
        run = work / "results" / "mvfcnn" / "ft_balanced_aug" / "sem" / f"fold{fold}"
        metrics = json.loads((run / "metrics.json").read_text())["pixel"]
        assert record["per_fold"][fold]["plain"]["mean_iu"] == pytest.approx(metrics["mean_iu"])
        assert record["per_fold"][fold]["oracle"]["mean_iu"] >= metrics["mean_iu"] - 1e-9
    # the object-vote rules on the same models (the run's kept softmax): the workflow's
    # (second_phase with offsets fitted on the other fold, rule fit_object_offsets) gives the
    # objects table's accuracy, and no rule but the paper's leaves objects unsegmented
    record = _same_models_benchmark("metaldam_vote_rules.py", tmp_path, "--workdir", str(work),
                                    overlays=overlays)
    for fold in ("a", "b"):
        row = voted[voted["fold"] == fold].iloc[0]
        rules = record["per_fold"][fold]
        run = work / "results" / "mvfcnn" / "ft_balanced_aug" / "sem" / f"fold{fold}"
        fitted = json.loads((run / "object_offsets.json").read_text())
        assert fitted["fit_samples"] == (["m2", "m26"] if fold == "a" else ["m0", "m1"])
        rule = f"offsets_{fitted['objective']}"  # config/metaldam.yaml's objective
        # one row of offsets per size bin of config/metaldam.yaml's edges, as the rule fitted
        np.testing.assert_allclose(record["offsets"][fold][rule], fitted["offsets"], atol=1e-6)
        assert np.shape(fitted["offsets"]) == (len(fitted["size_edges"]) + 1, 5)
        assert rules[rule]["objects"] == int(row["n_objects"])
        assert rules[rule]["object_accuracy"] == pytest.approx(row["object_accuracy"])
        assert all(rules[r]["not_segmented"] == 0 for r in ("fallback", "second_phase", "soft"))
        # offsets start at 0 (= second_phase) and only move to a better score
        assert rules["offsets_oracle"]["object_accuracy"] >= rules["second_phase"][
            "object_accuracy"]
        assert np.shape(record["offsets"][fold]["offsets_accuracy"]) == np.shape(
            fitted["offsets"])
    # the seed ensemble of one run with itself is that run (its softmax averaged with itself)
    record = _same_models_benchmark("metaldam_ensemble.py", tmp_path, "--workdirs", str(work),
                                    str(work), overlays=overlays)
    for fold in ("a", "b"):
        run = work / "results" / "mvfcnn" / "ft_balanced_aug" / "sem" / f"fold{fold}"
        metrics = json.loads((run / "metrics.json").read_text())["pixel"]
        for method in ("run0", "run1"):
            assert record["per_fold"][fold][method]["mean_iu"] == pytest.approx(
                metrics["mean_iu"])
        # the argmax of float16 probabilities: where rounding ties classes (common in the mini
        # run's near-uniform softmax; on MetalDAM's folds it matched to 4 digits) the lower
        # class wins, so the mean IoU is close, not equal
        assert record["per_fold"][fold]["ensemble"]["mean_iu"] == pytest.approx(
            metrics["mean_iu"], abs=0.02)
    # one run at two scales: scale 1 is the run's own prediction, 0.5 a member of its own
    record = _same_models_benchmark("metaldam_ensemble.py", tmp_path, "--workdirs", str(work),
                                    "--scales", "1", "0.5", overlays=overlays)
    assert record["scales"] == [1.0, 0.5]
    for fold in ("a", "b"):
        metrics = json.loads((work / "results" / "mvfcnn" / "ft_balanced_aug" / "sem" /
                              f"fold{fold}" / "metrics.json").read_text())["pixel"]
        assert record["per_fold"][fold]["run0"]["mean_iu"] == pytest.approx(metrics["mean_iu"])
        assert 0 <= record["per_fold"][fold]["run0@0.5"]["mean_iu"] <= 1


def test_upscale_replicates_labels_and_divides_the_pixel_size(classes, metadata):
    """prepare.upscale = 2: image and labels twice as large, every label pixel 2x2 identical
    pixels (the class shares stay the release's), pixel size halved."""
    from mvfcnn.data.prepare import prepare_sample

    row = metadata.loc[0]
    args = ("micrograph0", str(METALDAM / row["image_path"]),
            str(METALDAM / row["annotation_path"]), classes)
    kwargs = {"crop_bottom": int(row["cropbar"]), "scale_bar_um": float(row["micron_bar"])}
    image1, labels1, record1 = prepare_sample(*args, **kwargs)
    image2, labels2, record2 = prepare_sample(*args, **kwargs, upscale=2)
    assert image2.shape == labels2.shape == (2 * row["height"], 2 * row["width"])
    assert image2.dtype == np.uint8
    np.testing.assert_array_equal(labels2[::2, ::2], labels1)
    np.testing.assert_array_equal(labels2[1::2, 1::2], labels1)
    assert record2.class_pixels == record1.class_pixels
    assert record2.pixel_size_um == pytest.approx(record1.pixel_size_um / 2, rel=1e-4)
    assert abs(float(image2.mean()) - float(image1.mean())) < 1.0


def test_stretch_makes_a_dark_and_a_bright_micrograph_alike(classes, metadata):
    """micrograph0 (the darkest release image, median ~39) and micrograph18 (~116): after
    stretching percentiles 1/99 (the band excluded: the cut happens first) both span the full
    range and their medians are less than half as far apart as before (31 vs 77 grey values:
    the rest is their phase composition); labels, grid and record untouched."""
    from mvfcnn.data.prepare import prepare_sample

    medians, raw = [], []
    for name in ("micrograph0", "micrograph18"):
        row = metadata[metadata["image_path"].str.contains(f"/{name}.")].iloc[0]
        args = (name, str(METALDAM / row["image_path"]), str(METALDAM / row["annotation_path"]),
                classes)
        kwargs = {"crop_bottom": int(row["cropbar"]), "scale_bar_um": float(row["micron_bar"])}
        image, labels, record = prepare_sample(*args, **kwargs)
        stretched, labels2, record2 = prepare_sample(*args, **kwargs,
                                                     intensity_percentiles=(1, 99))
        np.testing.assert_array_equal(labels2, labels)
        assert stretched.shape == image.shape and stretched.dtype == np.uint8
        assert record2.pixel_size_um == record.pixel_size_um
        assert record2.intensity_percentiles == [1.0, 99.0]
        low, high = record2.intensity_range
        assert np.percentile(image, 1) == low and np.percentile(image, 99) == high
        assert np.percentile(stretched, 1) <= 1 and np.percentile(stretched, 99) >= 254
        raw.append(float(np.median(image)))
        medians.append(float(np.median(stretched)))
    assert abs(raw[0] - raw[1]) > 60
    assert abs(medians[0] - medians[1]) < abs(raw[0] - raw[1]) / 2


def test_prepare_cli_stretches_and_records_it(tmp_path):
    """The rule's command line: ``--intensity-percentiles 1 99`` reaches the image and the
    record (prepared.json holds the percentiles and the grey values they were)."""
    from mvfcnn.cli import main
    from mvfcnn.core.io import read_image

    command = _prepare_cli(tmp_path, METALDAM / "images" / "micrograph0.jpg",
                           METALDAM / "labels" / "micrograph0.png")
    assert main([*command, "--intensity-percentiles", "1", "99"]) == 0
    record = json.loads((tmp_path / "out" / "prepared.json").read_text())
    assert record["intensity_percentiles"] == [1.0, 99.0]
    low, high = record["intensity_range"]
    assert 0 <= low < 10 and 140 < high < 170  # micrograph0: dark, p99 ~152
    image = np.asarray(read_image(tmp_path / "out" / "image.tif"))
    assert np.percentile(image, 1) <= 1 and np.percentile(image, 99) >= 254


@pytest.mark.parametrize("overlays", [["metaldam.yaml"], ["metaldam.yaml", "metaldam_paper.yaml"],
                                      ["metaldam.yaml", "metaldam_second_phase.yaml"]])
def test_metaldam_configs_pass_the_schema_and_a_dry_run(tmp_path, overlays):
    command = [str(SNAKEMAKE), "-n", "--snakefile", str(SNAKEFILE), "--directory",
               str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml"),
               *[str(ROOT / "config" / name) for name in overlays], "--config",
               f"metaldam={{path: {METALDAM}}}", "--cores", "2", "--resources", "gpu=1"]
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "crossval_table" in result.stdout and "train_fcn" in result.stdout
    # one model per fold: 6 folds x 3 stages
    assert "fold5" in result.stdout


def _dry_run_commands(tmp_path: Path, overlay: dict) -> list[str]:
    """The shell commands (``-n -p``) of the MetalDAM job with ``overlay`` on top."""
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    command = [str(SNAKEMAKE), "-n", "-p", "--snakefile", str(SNAKEFILE), "--directory",
               str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml"),
               str(ROOT / "config" / "metaldam.yaml"), str(path), "--config",
               f"metaldam={{path: {METALDAM}}}", "--cores", "2", "--resources", "gpu=1"]
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.splitlines()


def test_class_offsets_add_one_fit_per_fold_that_every_prediction_reads(tmp_path):
    lines = _dry_run_commands(tmp_path, {"inference": {"class_offsets": "fractions"}})
    fits = [line for line in lines if "mvfcnn fit-class-offsets" in line]
    predicts = [line for line in lines if "mvfcnn predict " in line]
    final = yaml.safe_load((ROOT / "config" / "metaldam.yaml").read_text())["fcn"]["stages"][-1]
    assert len(fits) == 6
    assert all("--objective fractions" in f and f"/fcn{final}.pt" in f for f in fits)
    assert len(predicts) == 42
    for line in predicts:
        fold = re.search(rf"/(fold\d)/fcn{final}.pt", line).group(1)
        assert f"--class-offsets results/mvfcnn/ft_balanced_aug/sem/{fold}/class_offsets.json" \
            in line


@pytest.mark.parametrize("rule", ["second_phase", "majority"])
def test_object_vote_decides_which_map_predict_writes_and_vote_reads(tmp_path, rule):
    lines = _dry_run_commands(tmp_path, {"inference": {"object_vote": rule,
                                                       "object_offsets": "none"}})
    predicts = [line for line in lines if "mvfcnn predict " in line]
    votes = [line for line in lines if "mvfcnn vote " in line]
    assert len(predicts) == len(votes) == 42
    for line in votes:
        sample = re.search(r"--sample (\S+)", line).group(1)
        folder = "pred_second_phase" if rule == "second_phase" else "pred"
        assert re.search(rf"--pred \S+/fold\d/{folder}/{sample}\.tif", line), line
    for line in predicts:
        sample = re.search(r"--sample (\S+)", line).group(1)
        wanted = f"pred_second_phase/{sample}.tif"
        assert ("--out-second-phase" in line and wanted in line) == (rule == "second_phase")


def test_object_offsets_fit_each_fold_on_the_other_folds_test_objects(tmp_path, sheet):
    lines = _dry_run_commands(tmp_path, {"inference": {"object_offsets": "accuracy_recall_floor",
                                                       "object_offset_recall_slack": 0.2}})
    fits = [line for line in lines if "mvfcnn fit-object-offsets" in line]
    predicts = [line for line in lines if "mvfcnn predict " in line]
    votes = [line for line in lines if "mvfcnn vote " in line]
    assert len(fits) == 6 and len(predicts) == len(votes) == 42
    test_fold = {s: str(f) for s, f in sheet["fold"].items()}
    for line in fits:
        fold = re.search(r"--out \S+/fold(\d)/object_offsets\.json", line).group(1)
        probs = re.findall(r"fold(\d)/probs/(\S+)\.tif", line)
        samples = re.search(r"--samples (.*?) --probs", line).group(1).split()
        # every test image of the 5 other folds, each from its own fold's model; none of its own
        assert sorted(s for _, s in probs) == sorted(s for s, f in test_fold.items() if f != fold)
        assert all(test_fold[s] == f for f, s in probs)
        assert [s for _, s in probs] == samples
        assert "--objective accuracy_recall_floor --recall-slack 0.2" in line
        assert "--size-edges 30 300 --out" in line  # config/metaldam.yaml's size rows
    for line in predicts:  # the softmax, not the second-phase map, for the vote
        assert "--out-probs" in line and "--out-second-phase" not in line
    for line in votes:
        fold, sample = re.search(r"--probs \S+/fold(\d)/probs/(\S+)\.tif", line).groups()
        assert test_fold[sample] == fold
        assert f"--object-offsets results/mvfcnn/ft_balanced_aug/sem/fold{fold}/object_offsets" \
            ".json" in line and "--pred " not in line

def test_a_lom_run_on_sem_only_data_is_a_clear_error(tmp_path):
    overlay = tmp_path / "lom.yaml"
    overlay.write_text(yaml.safe_dump({"metaldam": {"path": str(METALDAM)},
                                       "run": {"baseline_modalities": ["sem", "lom"]}}))
    command = [str(SNAKEMAKE), "-n", "--snakefile", str(SNAKEFILE), "--directory",
               str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml"),
               str(ROOT / "config" / "metaldam.yaml"), str(overlay), "--cores", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    message = "include lom, but 42 labelled sample(s) have no LOM image"
    assert message in result.stdout + result.stderr
