"""`mvfcnn bundle` + `mvfcnn classify`: outputs, exact agreement with the workflow's vote rule,
the OME-TIFF read back, the low-confidence list, and every bad-input case."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from mvfcnn.classify.bundle import BUNDLE_FORMAT, load_for_inference, write_bundle
from mvfcnn.classify.cli import classify as classify_cli
from mvfcnn.classify.outputs import (
    NOT_SEGMENTED_VALUE,
    OUTPUT_FILES,
    pyramid_levels,
    write_ome_tiff,
)
from mvfcnn.classify.pipeline import (
    OBJECT_COLUMNS,
    SUMMARY_COLUMNS,
    analyse,
    low_confidence,
    objects_from_prediction,
)
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_image

PIXEL_UM = 0.25
INFERENCE = {"tile_size": 128, "overlap": 32, "batch_size": 4, "precision": "fp32",
             "tta_rotations": False}
SHAPE = (544, 576)  # > 512 px: the OME-TIFF gets a second pyramid level


# ----------------------------------------------------------------------------------------------
# fixtures: a tiny random FCN-8s, its bundle, a synthetic micrograph with its mask


def tiny_fcn8s(num_classes: int, seed: int = 2, calibrate_on: np.ndarray | None = None):
    """Width-reduced FCN-8s, random init; score layers (zero at init) re-drawn. With
    ``calibrate_on`` each class's mean score over that image is removed (score_pool3 bias), so
    the argmax follows local texture and the prediction mixes classes inside objects."""
    import torch

    from mvfcnn.models.fcn import fcn8s
    from mvfcnn.models.preprocess import to_input_tensor

    torch.manual_seed(seed)
    model = fcn8s(num_classes=num_classes, width=0.0625, fc_channels=16).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("score_pool3") and name.endswith("weight"):
                torch.nn.init.normal_(param, std=3.0)
            elif name.startswith("score") and name.endswith("weight"):
                torch.nn.init.normal_(param, std=0.3)
        if calibrate_on is not None:
            scores = model(to_input_tensor(calibrate_on[:256, :256])[None])[0]
            model.score_pool3.bias -= scores.mean(dim=(1, 2))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory, default_config) -> dict[str, Path]:
    from mvfcnn.data.synthetic import render_sample
    from mvfcnn.models.io import save_model

    root = tmp_path_factory.mktemp("classify")
    classes = ClassSet.from_config(default_config)
    synthetic = {"height": SHAPE[0], "width": SHAPE[1],
                 "images_per_class": {"train": 0, "test": 0},
                 "mixed_images": {"train": 0, "test": 0}, "predict_images": 1,
                 "object_count": [10, 12], "object_radius_px": [14, 34]}
    sample = render_sample("predict_0", synthetic, classes, 3)
    paths = {"root": root, "sem": root / "new_sem.tif", "mask": root / "new_mask.tif",
             "model": root / "fcn8s.pt", "bundle": root / "model_bundle.pt",
             "metrics": root / "metrics.json"}
    write_image(paths["sem"], sample.sem)
    write_image(paths["mask"], ((sample.labels > 0) & (sample.labels != 255)).astype(np.uint8))
    model = tiny_fcn8s(classes.num_classes, calibrate_on=sample.sem)
    save_model(paths["model"], model, arch="fcn8s", kwargs=dict(model.kwargs),
               extra={"classes": classes.to_dict(), "stage": "8s", "tile_size": 96,
                      "normalisation": "imagenet"})
    paths["metrics"].write_text(json.dumps({"object_accuracy": 0.5, "n_objects": 10}))
    write_bundle(paths["model"], paths["bundle"], classes=classes, inference=INFERENCE,
                 masking=default_config["masking"], pixel_size_um=PIXEL_UM, modality="sem",
                 variant="tiny", training={"seed": 0},
                 metrics=json.loads(paths["metrics"].read_text()))
    return paths


@pytest.fixture(scope="module")
def classified(files) -> Path:
    """One CLI run with a supplied mask and a high review threshold (many low-confidence)."""
    out = files["root"] / "out"
    assert classify_cli([str(files["sem"]), "--model", str(files["bundle"]), "--mask",
                         str(files["mask"]), "--out", str(out), "--low-confidence", "0.9",
                         "--no-progress"]) == 0
    return out / "new_sem"


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------------------------
# bundle


def test_bundle_carries_what_classify_needs(files, classes):
    loaded = load_for_inference(files["bundle"])
    assert loaded.is_bundle and loaded.extra["bundle"] == BUNDLE_FORMAT
    assert loaded.classes == classes
    # the given settings, completed with the schema's defaults (a bundle is self-contained)
    from mvfcnn.core.settings import defaults

    assert loaded.inference == {**defaults("inference"), **INFERENCE}
    assert loaded.pixel_size_um == PIXEL_UM and loaded.modality == "sem"
    assert loaded.masking["min_object_area"] == 80
    extra = loaded.extra
    assert extra["metrics"]["object_accuracy"] == 0.5
    assert extra["model"]["stage"] == "8s" and extra["training"] == {"seed": 0}
    assert "git_commit" in extra and "mvfcnn_version" in extra
    assert extra["precision_choice"]["precision"] == "fp32"  # INFERENCE asks for fp32
    assert extra["precision_choice"]["requested"] == "fp32" and extra["precision_choice"]["reason"]
    bare = load_for_inference(files["model"])  # a bare fcn8s.pt works too, with defaults
    assert not bare.is_bundle and bare.inference["tile_size"] == 512 and bare.pixel_size_um is None


def test_bundle_cli(files, classes, tmp_path):
    from mvfcnn.classify.cli import bundle as cli

    out = tmp_path / "b.pt"
    assert cli(["--model", str(files["model"]), "--classes-json", json.dumps(classes.to_dict()),
                "--inference-json", json.dumps(INFERENCE), "--metrics", str(files["metrics"]),
                "--pixel-size", "0.5", "--modality", "lom", "--variant", "v", "--out",
                str(out)]) == 0
    loaded = load_for_inference(out)
    assert loaded.pixel_size_um == 0.5 and loaded.modality == "lom"
    assert loaded.extra["variant"] == "v"


# ----------------------------------------------------------------------------------------------
# outputs


def test_cli_writes_every_output(classified):
    assert sorted(OUTPUT_FILES) == listing(classified)
    for name in OUTPUT_FILES:
        assert (classified / name).stat().st_size > 0, name
    run = json.loads((classified / "run.json").read_text())
    assert run["object_source"] == "mask" and run["pixel_size_um"] == PIXEL_UM
    from mvfcnn.core.settings import defaults

    assert run["inference"] == {**defaults("inference"), **INFERENCE}
    assert run["model"]["bundle"] is True
    assert run["precision_choice"]["precision"] == "fp32" and run["precision_choice"]["reason"]


def test_tables_are_consistent(classified, files, classes):
    from mvfcnn.core.io import read_image

    objects = pd.read_csv(classified / "objects.csv")
    summary = pd.read_csv(classified / "summary.csv")
    assert list(objects.columns) == OBJECT_COLUMNS
    assert list(summary.columns) == SUMMARY_COLUMNS
    mask = read_image(files["mask"]) > 0
    assert objects["area_px"].sum() == mask.sum()
    assert len(objects) > 5
    np.testing.assert_allclose(objects["area_um2"], objects["area_px"] * PIXEL_UM ** 2,
                               rtol=1e-6)
    np.testing.assert_allclose(objects["equivalent_diameter_px"],
                               np.sqrt(4 * objects["area_px"] / np.pi), atol=1e-4)
    assert ((objects["bbox_y1"] - objects["bbox_y0"]) * (objects["bbox_x1"] - objects["bbox_x0"])
            >= objects["area_px"]).all()
    assert summary["area_fraction"].sum() == pytest.approx(1.0, abs=1e-5)
    assert summary["pixel_fraction"].sum() == pytest.approx(1.0, abs=1e-5)
    assert summary["n_objects"].sum() == len(objects)
    assert summary["class_name"].tolist() == [*classes.names, "not_segmented"]
    for row in summary.itertuples():
        part = objects[objects["class"] == row[1]]
        if row[1] != 0:
            assert row.area_px == part["area_px"].sum()
        if len(part):
            assert row.eqd_px_p50 == pytest.approx(part["equivalent_diameter_px"].median(),
                                                   abs=1e-4)
            assert row.eqd_um_p50 == pytest.approx(row.eqd_px_p50 * PIXEL_UM, abs=1e-5)


def test_object_classes_equal_the_vote_rule(classified, files, classes, tmp_path):
    """The workflow's own chain (predict -> objects -> vote CLIs, as the rules call them) on the
    same image, mask and model settings gives exactly classify's classes and shares."""
    from mvfcnn.evaluation.cli import vote as vote_cli
    from mvfcnn.inference.cli import predict as predict_cli
    from mvfcnn.objects.cli import objects as objects_cli

    classes_json = json.dumps(classes.to_dict())
    pred, ids, table, votes = (tmp_path / n for n in ("pred.tif", "ids.tif", "objects.csv",
                                                      "votes.csv"))
    assert predict_cli(["--model", str(files["bundle"]), "--image", str(files["sem"]),
                        "--sample", "s", "--params-json", json.dumps(INFERENCE), "--out",
                        str(pred), "--no-progress"]) == 0
    assert objects_cli(["--sample", "s", "--mask", str(files["mask"]), "--classes-json",
                        classes_json, "--out-table", str(table), "--out-ids", str(ids)]) == 0
    assert vote_cli(["--pred", str(pred), "--objects-ids", str(ids), "--objects", str(table),
                     "--classes-json", classes_json, "--sample", "s", "--out", str(votes)]) == 0
    ours = pd.read_csv(classified / "objects.csv")
    rule = pd.read_csv(votes)
    assert ours["object_id"].tolist() == rule["object_id"].tolist()
    assert ours["class"].tolist() == rule["pred_class"].tolist()
    assert ours["class_name"].tolist() == rule["pred_class_name"].tolist()
    np.testing.assert_allclose(ours["vote_share"], rule["vote_share"], atol=1e-6)
    assert ours["area_px"].tolist() == rule["n_pixels"].tolist()
    # several classes win and shares are not all 1: a real test of voting
    assert ours["vote_share"].min() < 0.9 and ours["class"].nunique() >= 2
    # the OME-TIFF's pixel channel is the stitched prediction itself
    with tifffile.TiffFile(classified / "classmap.ome.tif") as tif:
        np.testing.assert_array_equal(tif.series[0].asarray()[0], tifffile.imread(pred))


def test_ome_tiff_reads_back(classified, files):
    from mvfcnn.core.io import read_image

    objects = pd.read_csv(classified / "objects.csv")
    with tifffile.TiffFile(classified / "classmap.ome.tif") as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX" and series.shape == (2, *SHAPE)
        assert series.dtype == np.uint8
        assert len(series.levels) == pyramid_levels(*SHAPE) == 2
        assert series.levels[1].shape == (2, SHAPE[0] // 2, SHAPE[1] // 2)
        assert tif.pages[0].is_tiled
        planes = series.asarray()
        low = series.levels[1].asarray()
        pixels = _pixels_element(tif.ome_metadata)
    assert float(pixels.get("PhysicalSizeX")) == PIXEL_UM
    assert float(pixels.get("PhysicalSizeY")) == PIXEL_UM
    assert pixels.get("PhysicalSizeXUnit") == "µm"
    names = [c.get("Name") for c in pixels if c.tag.endswith("Channel")]
    assert names == ["pixel_class", "object_class"]
    np.testing.assert_array_equal(low, planes[:, ::2, ::2])  # nearest neighbour
    # object channel: each object's voted class; matrix 0; not segmented 255
    mask = read_image(files["mask"]) > 0
    assert (planes[1][~mask] == 0).all()
    for row in objects.itertuples():
        y, x = int(round(row.centroid_y)), int(round(row.centroid_x))
        value = planes[1][row.bbox_y0:row.bbox_y1, row.bbox_x0:row.bbox_x1]
        expected = NOT_SEGMENTED_VALUE if row[2] < 0 else row[2]
        assert expected in value, (row.object_id, y, x)


def _pixels_element(xml: str):
    root = ET.fromstring(xml)
    return next(e for e in root.iter() if e.tag.endswith("Pixels"))


def test_ome_writer_pyramid(tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 5, (2, 1100, 1300), dtype=np.uint8)
    path = tmp_path / "big.ome.tif"
    write_ome_tiff(path, planes, channel_names=["a", "b"], pixel_size_um=0.5)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(2, 1100, 1300), (2, 550, 650), (2, 275, 325)]
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), planes[:, ::2 ** k, ::2 ** k])
        assert float(_pixels_element(tif.ome_metadata).get("PhysicalSizeX")) == 0.5
        assert tif.pages[0].tilewidth == 256
    write_ome_tiff(tmp_path / "nopx.ome.tif", planes[:, :100, :100], channel_names=["a", "b"])
    with tifffile.TiffFile(tmp_path / "nopx.ome.tif") as tif:
        assert len(tif.series[0].levels) == 1
        assert _pixels_element(tif.ome_metadata).get("PhysicalSizeX") is None
    assert [pyramid_levels(*s) for s in [(512, 512), (513, 10), (7000, 8000)]] == [1, 2, 5]


def test_low_confidence_list(classified):
    objects = pd.read_csv(classified / "objects.csv")
    review = pd.read_csv(classified / "low_confidence.csv")
    assert list(review.columns) == OBJECT_COLUMNS
    assert len(review) >= 1
    assert (review["vote_share"] < 0.9).all()
    assert sorted(review["object_id"]) == sorted(objects.loc[objects["vote_share"] < 0.9,
                                                             "object_id"])
    assert review["vote_share"].is_monotonic_increasing


def test_low_confidence_order():
    frame = pd.DataFrame({"object_id": [1, 2, 3, 4, 5], "vote_share": [0.5, 0.0, 0.9, 0.5, 0.7],
                          "area_px": [10, 5, 7, 30, 1]})
    review = low_confidence(frame, 0.7)
    assert review["object_id"].tolist() == [2, 4, 1]  # share up, then larger first


# ----------------------------------------------------------------------------------------------
# the analysis on hand-made maps (exact values)


SMALL = ClassSet.from_config({"classes": [
    {"index": 0, "name": "matrix", "color": "#000000"},
    {"index": 1, "name": "alpha", "color": "#ff0000"},
    {"index": 2, "name": "beta", "color": "#00ff00"},
]})


def test_analyse_exact_values():
    ids = np.zeros((10, 10), np.uint32)
    ids[0:2, 0:2] = 1      # 4 px
    ids[5:9, 5:9] = 2      # 16 px
    ids[0:1, 8:10] = 3     # 2 px
    pred = np.zeros((10, 10), np.uint8)
    pred[0:2, 0:2] = [[1, 1], [2, 0]]       # alpha 2/3
    pred[5:9, 5:9] = 2                      # beta 1.0
    pred[9, 0] = 1                          # a stray pixel outside objects
    result = analyse(pred, ids, SMALL, pixel_size_um=2.0, low_confidence_threshold=0.8)
    objects = result.objects
    assert objects["class"].tolist() == [1, 2, -1]
    assert objects["vote_share"].tolist() == [pytest.approx(2 / 3, abs=1e-6), 1.0, 0.0]
    assert objects["area_um2"].tolist() == [16.0, 64.0, 8.0]
    summary = result.summary.set_index("class_name")
    assert summary.loc["matrix", "area_px"] == 100 - 22
    assert summary.loc["alpha", "area_fraction"] == pytest.approx(0.04)
    assert summary.loc["beta", "area_um2"] == 64.0
    assert summary.loc["alpha", "pixel_fraction"] == pytest.approx(3 / 100)
    assert summary.loc["not_segmented", "n_objects"] == 1
    assert summary.loc["beta", "eqd_px_p50"] == pytest.approx(np.sqrt(64 / np.pi), abs=1e-6)
    assert result.low_confidence["object_id"].tolist() == [3, 1]



def test_analyse_votes_on_the_vote_map_when_given():
    """inference.object_vote second_phase: objects vote on each pixel's best non-matrix class;
    the pixel summary stays the class map's."""
    ids = np.zeros((10, 10), np.uint32)
    ids[0:2, 0:2] = 1
    ids[0:1, 8:10] = 2
    pred = np.zeros((10, 10), np.uint8)
    pred[0:2, 0:2] = [[1, 1], [2, 0]]
    second = np.ones((10, 10), np.uint8)
    second[0:2, 0:2] = [[1, 2], [2, 2]]     # beta 3/4
    second[0:1, 8:10] = 2                   # predicted all matrix, yet beta
    result = analyse(pred, ids, SMALL, vote_map=second)
    assert result.objects["class"].tolist() == [2, 2]
    assert result.objects["vote_share"].tolist() == [0.75, 1.0]
    assert result.summary.set_index("class_name").loc["alpha", "pixel_fraction"] == 0.02
    assert analyse(pred, ids, SMALL).objects["class"].tolist() == [1, -1]
    with pytest.raises(InputError, match="vote map"):
        analyse(pred, ids, SMALL, vote_map=second[:5])


def test_classify_follows_the_bundles_object_vote(files, classes):
    from mvfcnn.classify.pipeline import classify_image
    from mvfcnn.inference.predict import predict_image

    image = tifffile.imread(files["sem"])
    mask = tifffile.imread(files["mask"])
    bundle = files["root"] / "second_phase_bundle.pt"
    write_bundle(files["model"], bundle, classes=classes,
                 inference={**INFERENCE, "object_vote": "second_phase"})
    loaded = load_for_inference(bundle)
    assert loaded.inference["object_vote"] == "second_phase"
    assert load_for_inference(files["bundle"]).inference["object_vote"] == "majority"
    voted = classify_image(image, loaded, mask=mask, progress=False)
    plain = classify_image(image, load_for_inference(files["bundle"]), mask=mask,
                           progress=False)
    np.testing.assert_array_equal(voted.class_map, plain.class_map)
    second = np.empty(image.shape, np.uint8)
    settings = {k: v for k, v in loaded.inference.items() if k in INFERENCE}
    predict_image(loaded.model, image, progress=False, second_phase_out=second, **settings)
    expected = analyse(plain.class_map, plain.object_ids, classes, vote_map=second).objects
    pd.testing.assert_frame_equal(voted.objects, expected)
    assert (voted.objects["class"] >= 1).all()
    # matrix-predicted pixels vote too: the shares differ from max-voting's
    assert (voted.objects["vote_share"] != plain.objects["vote_share"]).any()

def test_objects_from_prediction_cleans_like_a_mask():
    pred = np.zeros((60, 60), np.uint8)
    pred[10:30, 10:30] = 1
    pred[15, 15] = 0        # pin hole: filled
    pred[40:50, 40:50] = 2  # 100 px: kept (min area 80)
    pred[2:4, 50:52] = 1    # 4 px speckle: dropped
    masking = {"opening_radius": 1, "closing_radius": 2, "min_object_area": 80}
    ids = objects_from_prediction(pred, masking)
    assert ids.max() == 2
    assert ids[15, 15] > 0 and ids[3, 51] == 0


def test_cli_objects_from_prediction_and_lom(files, tmp_path):
    import torch

    from mvfcnn.core.io import read_image

    out = tmp_path / "out"
    threads = str(torch.get_num_threads())
    assert classify_cli([str(files["sem"]), "--model", str(files["bundle"]), "--out", str(out),
                         "--names", "pred", "--threads", threads, "--no-progress"]) == 0
    assert json.loads((out / "pred" / "run.json").read_text())["object_source"] == "prediction"
    # a "registered LOM": dark second phase on a bright matrix, same grid as the image
    mask = read_image(files["mask"]) > 0
    lom = tmp_path / "lom.tif"
    write_image(lom, np.where(mask, 60, 200).astype(np.uint8))
    assert classify_cli([str(files["sem"]), "--model", str(files["bundle"]), "--lom", str(lom),
                         "--threshold", "0.5", "--out", str(out), "--names", "lom",
                         "--no-progress"]) == 0
    run = json.loads((out / "lom" / "run.json").read_text())
    assert run["object_source"] == "lom" and run["lom_threshold"] == 0.5
    from mvfcnn.objects.components import count_objects

    assert run["n_objects"] == count_objects(mask)


# ----------------------------------------------------------------------------------------------
# bad input: one clear error naming the file, nothing written


def _fails(argv: list[str], out: Path, *needles: str) -> str:
    with pytest.raises(InputError) as err:
        classify_cli([*argv, "--out", str(out), "--no-progress"])
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    assert listing(out) == [], "a failed run must not write outputs"
    return message


def test_unsupported_image(files, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    _fails([str(text), "--model", str(files["bundle"])], tmp_path / "o1", "notes.txt",
           "unsupported image format")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    _fails([str(broken), "--model", str(files["bundle"])], tmp_path / "o2", "broken.tif",
           "cannot read image")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((2, 5, 32, 32), np.uint8))
    _fails([str(stack), "--model", str(files["bundle"])], tmp_path / "o3", "stack.tif")
    flags = tmp_path / "flags.tif"
    tifffile.imwrite(flags, np.zeros((32, 32), bool))
    _fails([str(flags), "--model", str(files["bundle"])], tmp_path / "o4", "flags.tif",
           "unsupported pixel type")


def test_bad_options(files, tmp_path):
    model = ["--model", str(files["bundle"])]
    _fails([str(files["sem"]), *model, "--threads", "0"], tmp_path / "o", "--threads")
    _fails([str(files["sem"]), *model, "--low-confidence", "1.5"], tmp_path / "o",
           "--low-confidence")
    _fails([str(files["sem"]), *model, "--threshold", "0.5"], tmp_path / "o", "--lom only")
    _fails([str(files["sem"]), *model, "--overlap", "500"], tmp_path / "o", "overlap")


def test_mask_size_mismatch(files, tmp_path):
    small = tmp_path / "small_mask.tif"
    write_image(small, np.ones((100, 120), np.uint8))
    _fails([str(files["sem"]), "--model", str(files["bundle"]), "--mask", str(small)],
           tmp_path / "o", "small_mask.tif", "100x120", f"{SHAPE[0]}x{SHAPE[1]}")
    lom = tmp_path / "lom.tif"
    write_image(lom, np.ones((100, 120), np.uint8))
    _fails([str(files["sem"]), "--model", str(files["bundle"]), "--lom", str(lom)],
           tmp_path / "o", "lom.tif", "register")


def test_second_image_bad_writes_nothing_for_the_first(files, tmp_path):
    small = tmp_path / "small_mask.tif"
    write_image(small, np.ones((100, 120), np.uint8))
    _fails([str(files["sem"]), str(files["sem"]), "--names", "a", "b", "--model",
            str(files["bundle"]), "--mask", str(files["mask"]), str(small)], tmp_path / "o",
           "small_mask.tif")
    _fails([str(files["sem"]), str(files["sem"]), "--model", str(files["bundle"])],
           tmp_path / "o", "same folder")


def test_model_from_another_class_set(files, tmp_path, classes):
    from mvfcnn.models.io import save_model

    other = {"classes": [{"index": 0, "name": "matrix", "color": "#000000"},
                         {"index": 1, "name": "network", "color": "#ff0000"},
                         {"index": 2, "name": "spheroidite", "color": "#00ff00"}]}
    # the expected class set differs from the model's
    _fails([str(files["sem"]), "--model", str(files["bundle"]), "--classes-json",
            json.dumps(other)], tmp_path / "o", "model_bundle.pt", "another class set",
           "spheroidite")
    # a model whose stored classes disagree with its output width
    model = tiny_fcn8s(classes.num_classes)
    wrong = tmp_path / "wrong_classes.pt"
    save_model(wrong, model, arch="fcn8s", kwargs=dict(model.kwargs), extra={"classes": other})
    _fails([str(files["sem"]), "--model", str(wrong)], tmp_path / "o", "wrong_classes.pt",
           "predicts 5 classes")
    # no class set at all
    bare = tmp_path / "no_classes.pt"
    save_model(bare, model, arch="fcn8s", kwargs=dict(model.kwargs))
    _fails([str(files["sem"]), "--model", str(bare)], tmp_path / "o", "no_classes.pt",
           "--classes-json")
    # not a model file
    junk = tmp_path / "junk.pt"
    junk.write_text("nope")
    _fails([str(files["sem"]), "--model", str(junk)], tmp_path / "o", "junk.pt")
    # the bundle writer refuses mismatching classes too
    with pytest.raises(InputError, match="another class set"):
        write_bundle(files["model"], tmp_path / "b.pt", classes=ClassSet.from_config(other),
                     inference=INFERENCE)
    assert not (tmp_path / "b.pt").exists()


def test_cli_main_prints_one_line(files, tmp_path, capsys):
    from mvfcnn.cli import main

    small = tmp_path / "m.tif"
    write_image(small, np.ones((10, 10), np.uint8))
    assert main(["classify", str(files["sem"]), "--model", str(files["bundle"]), "--mask",
                 str(small), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mvfcnn classify: error: file ")
    assert "m.tif" in err


def test_cli_precision_auto_is_resolved_and_recorded(files, tmp_path, capsys, monkeypatch):
    from mvfcnn.core import runtime

    # a CPU without native bf16: auto must pick fp32 and say why, in the log and in run.json
    monkeypatch.setattr(runtime, "cpu_arch", lambda: "x86_64")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    monkeypatch.setattr(runtime, "isa_limit", lambda: None)  # no ONEDNN/ATEN cap in the reason
    out = tmp_path / "out"
    assert classify_cli([str(files["sem"]), "--model", str(files["bundle"]), "--mask",
                         str(files["mask"]), "--out", str(out), "--names", "a",
                         "--precision", "auto", "--no-progress"]) == 0
    run = json.loads((out / "a" / "run.json").read_text())
    reason = "CPU lacks native bf16 (flags: avx2): fp32 + channels_last"
    assert run["inference"]["precision"] == "auto"
    assert run["precision_choice"] == {"precision": "fp32", "channels_last": True,
                                       "reason": reason, "requested": "auto"}
    assert f"precision fp32 (requested auto; {reason})" in capsys.readouterr().err


def test_cli_tta_switch_overrides_the_bundle(files, tmp_path):
    """--tta averages the 8 flips/rotations (recorded in run.json); --no-tta restores plain."""
    runs = {}
    for flag in ("--tta", "--no-tta"):
        out = tmp_path / flag.strip("-")
        assert classify_cli([str(files["sem"]), "--model", str(files["bundle"]), "--mask",
                             str(files["mask"]), "--out", str(out), "--names", "a", flag,
                             "--no-progress"]) == 0
        runs[flag] = json.loads((out / "a" / "run.json").read_text())["inference"]
    assert runs["--tta"]["tta_rotations"] and runs["--tta"]["tta_flips"]
    assert not runs["--no-tta"]["tta_rotations"] and not runs["--no-tta"]["tta_flips"]


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "", "..", "x/y"])
def test_output_names_refuse_control_characters_and_paths(name):
    from mvfcnn.classify.cli import output_names

    with pytest.raises(InputError, match="invalid output name"):
        output_names(["one.tif"], [name])
    assert output_names(["one.tif"], ["ok name.v2"]) == ["ok name.v2"]


def test_a_finer_stage_bundle_classifies_like_fcn8s(files, classes, default_config, tmp_path):
    """config/metaldam.yaml ends on FCN-2s: its bundle carries the stage and classifies a
    micrograph end to end (every output, one class or 'not segmented' per object)."""
    import torch

    from mvfcnn.models.fcn import fcn2s
    from mvfcnn.models.io import save_model

    torch.manual_seed(0)
    model = fcn2s(num_classes=classes.num_classes, width=0.0625, fc_channels=16).eval()
    path, bundle = tmp_path / "fcn2s.pt", tmp_path / "bundle.pt"
    save_model(path, model, arch="fcn2s", kwargs=dict(model.kwargs),
               extra={"classes": classes.to_dict(), "stage": "2s", "tile_size": 96,
                      "normalisation": "imagenet"})
    write_bundle(path, bundle, classes=classes, inference=INFERENCE,
                 masking=default_config["masking"], pixel_size_um=PIXEL_UM, modality="sem",
                 variant="tiny", training={"seed": 0}, metrics={})
    assert load_for_inference(bundle).extra["model"]["stage"] == "2s"
    out = tmp_path / "out"
    assert classify_cli([str(files["sem"]), "--model", str(bundle), "--mask", str(files["mask"]),
                         "--out", str(out), "--no-progress"]) == 0
    assert sorted(OUTPUT_FILES) == listing(out / "new_sem")
    objects = pd.read_csv(out / "new_sem" / "objects.csv", keep_default_na=False)
    assert len(objects) > 5 and set(objects["class_name"]) <= {*classes.names, "not_segmented"}


def test_a_bundle_trained_on_stretched_images_stretches_new_ones(files, classes, tmp_path):
    """A bundle whose training record has prepare.intensity_percentiles stretches each new
    image the same way before the network (run.json records it): its class map equals that of
    the pre-stretched image given with --prepared (the workflow's classify rule, whose images
    were already stretched by prepare), and differs from the unstretched image's."""
    from mvfcnn.core.io import read_image
    from mvfcnn.data.prepare import stretch_intensity

    bundle = tmp_path / "stretch_bundle.pt"
    write_bundle(files["model"], bundle, classes=classes, inference=INFERENCE,
                 masking={"min_object_area": 80}, pixel_size_um=PIXEL_UM, modality="sem",
                 training={"prepare": {"upscale": 1, "intensity_percentiles": [1, 99]}})
    image = np.asarray(read_image(files["sem"]))
    dim = (image // 2).astype(image.dtype)  # a darker, flatter take of the same field
    stretched, grey = stretch_intensity(dim, (1, 99))
    write_image(tmp_path / "dim.tif", dim)
    write_image(tmp_path / "stretched.tif", stretched)
    maps = {}
    for name, path, model, extra in (("raw", "dim.tif", bundle, []),
                                     ("prepared", "stretched.tif", bundle, ["--prepared"]),
                                     ("plain", "dim.tif", files["bundle"], [])):
        out = tmp_path / name
        assert classify_cli([str(tmp_path / path), "--model", str(model), "--mask",
                             str(files["mask"]), "--out", str(out), "--names", "a",
                             "--no-progress", *extra]) == 0
        with tifffile.TiffFile(out / "a" / "classmap.ome.tif") as tif:
            maps[name] = tif.series[0].asarray()[0]
        run = json.loads((out / "a" / "run.json").read_text())
        maps[name + "_run"] = run["intensity_stretch"]
    np.testing.assert_array_equal(maps["raw"], maps["prepared"])
    assert maps["raw_run"] == {"percentiles": [1.0, 99.0], "grey_values": grey,
                               "applied": "here"}
    assert maps["prepared_run"] == {"percentiles": [1.0, 99.0], "grey_values": None,
                                    "applied": "by prepare (--prepared)"}
    assert maps["plain_run"] is None
    assert not np.array_equal(maps["raw"], maps["plain"])


def test_a_bundle_trained_on_enlarged_images_refuses_a_raw_one(files, classes, tmp_path):
    """prepare.upscale 2 in the bundle's training record: a raw image would be classified at
    half the scale the model learned, so classify stops with one message naming the image
    (nothing written); --prepared (the image already enlarged) runs."""
    bundle = tmp_path / "upscale_bundle.pt"
    write_bundle(files["model"], bundle, classes=classes, inference=INFERENCE,
                 masking={"min_object_area": 80}, pixel_size_um=PIXEL_UM, modality="sem",
                 training={"prepare": {"upscale": 2, "intensity_percentiles": None}})
    argv = [str(files["sem"]), "--model", str(bundle), "--mask", str(files["mask"]),
            "--names", "a"]
    _fails(argv, tmp_path / "raw", "trained on images enlarged 2x", str(files["sem"]))
    assert classify_cli([*argv, "--out", str(tmp_path / "prepared"), "--prepared",
                         "--no-progress"]) == 0
