"""Object-based baselines: CIFARNet size, crop/warp geometry, features, SVM, end-to-end runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from conftest import stripe_images  # noqa: E402

from mvfcnn.baselines.crops import CropSet, crop_sample, warp  # noqa: E402
from mvfcnn.core.errors import InputError  # noqa: E402

CLASSES = {"classes": [{"index": 0, "name": "matrix", "color": "#000000"},
                       {"index": 1, "name": "alpha", "color": "#ff0000"},
                       {"index": 2, "name": "beta", "color": "#00ff00"},
                       {"index": 3, "name": "gamma", "color": "#0000ff"}],
           "ignore_index": 255}


@pytest.fixture()
def class_set():
    from mvfcnn.core.config import ClassSet

    return ClassSet.from_config(CLASSES)


# --------------------------------------------------------------------------- CIFARNet


def test_cifarnet_parameter_count_and_init():
    from mvfcnn.models.cifarnet import CIFARNet, cifarnet, count_parameters

    grey = cifarnet(num_classes=4, input_size=224)
    assert count_parameters(grey) == 409_828  # 224 -> 75 -> 25 -> 9 (pool 3/3, ceil)
    assert count_parameters(cifarnet(num_classes=4, input_size=224, in_channels=3)) == 411_428
    assert abs(count_parameters(grey) - 431_000) / 431_000 < 0.05
    # pool stride 2 at 32x32 RGB, 10 classes is exactly Caffe's cifar10_quick
    assert count_parameters(cifarnet(num_classes=10, input_size=32, in_channels=3,
                                     pool_stride=2)) == 145_578
    assert grey(torch.zeros(1, 1, 224, 224)).shape == (1, 4)
    weights = [m.weight for m in grey.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(weights) == 5  # three convolutions, two fully-connected layers
    assert weights[0].std().item() == pytest.approx(1e-4, rel=0.2)
    for weight in weights[1:4]:
        assert weight.std().item() == pytest.approx(1e-2, rel=0.2)
    small = cifarnet(num_classes=3, input_size=32, init="torch")
    assert isinstance(small, CIFARNet)
    assert small(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)).shape == (2, 3)
    with pytest.raises(ValueError):
        small(torch.zeros(1, 1, 64, 64))


# --------------------------------------------------------------------------- crops


def test_warp_values():
    ramp = np.array([[0, 40, 80, 120]] * 2, dtype=np.uint8)  # upsampling: no smoothing
    assert warp(ramp, 8).tolist() == [[0, 10, 30, 50, 70, 90, 110, 120]] * 8
    rows = np.array([[50] * 6, [150] * 6], dtype=np.uint8)  # aspect ratio is not kept
    assert warp(rows, 4).tolist() == [[50] * 4, [75] * 4, [125] * 4, [150] * 4]
    down = np.tile(np.arange(0, 80, 10, dtype=np.uint8), (8, 1))  # anti-aliased shrink
    assert warp(down, 4)[:, 1:3].tolist() == [[25, 45]] * 4  # a ramp survives the blur inside
    assert warp(np.full((7, 30), 77, np.uint8), 16).tolist() == [[77] * 16] * 16


def _scene():
    """40x60 image: object 3 (class 2) with a column ramp in bbox rows 10-19, cols 5-24, a
    neighbour object 4 (class 0) inside that bbox, and a mask that hides column 24."""
    image = np.zeros((40, 60), dtype=np.uint8)
    ids = np.zeros((40, 60), dtype=np.uint32)
    ids[10:20, 5:25] = 3
    ids[10:12, 5:8] = 4  # a spurious neighbour in object 3's bbox
    image[10:20, 5:25] = (np.arange(20, dtype=np.uint8) * 10)[None, :]
    mask = (ids > 0).astype(np.uint8)
    mask[:, 24] = 0
    table = pd.DataFrame({"object_id": [3, 4], "bbox_y0": [10, 10], "bbox_x0": [5, 5],
                          "bbox_y1": [20, 12], "bbox_x1": [25, 8], "area": [194, 6],
                          "true_class": [2, 0]})
    return image, ids, mask, table


def test_crop_sample_geometry():
    image, ids, mask, table = _scene()
    out = crop_sample(image, ids, table, size=20, sample="s", mask=mask)
    assert out["object_id"] == [3] and out["true_class"] == [2]  # class-0 object skipped
    assert out["bbox"] == [(10, 5, 20, 25)] and out["area"] == [194]
    crop = out["images"][0]
    assert crop.shape == (20, 20) and crop.dtype == np.uint8
    # 10x20 -> 20x20 stretches rows only: every row is the bbox's column ramp, last column masked
    expected = np.arange(20) * 10
    expected[19] = 0
    assert (crop == expected[None, :]).all()
    rgb = np.repeat(image[..., None], 3, axis=2)  # LOM path: colour -> grey, same values
    assert (crop_sample(rgb, ids, table, size=20, sample="s", mask=mask)["images"][0]
            == crop).all()
    bad = table.assign(bbox_x1=[61, 8])
    with pytest.raises(InputError, match="outside"):
        crop_sample(image, ids, bad, size=20, sample="s")


def test_crop_objects_cli(tmp_path):
    from mvfcnn.baselines.cli import crop_objects as cli
    from mvfcnn.core.io import write_image, write_table

    image, ids, mask, table = _scene()
    write_image(tmp_path / "img.tif", image)
    write_image(tmp_path / "ids.tif", ids)
    write_image(tmp_path / "mask.tif", mask)
    write_table(tmp_path / "obj.csv", table)
    out = tmp_path / "crops.npz"
    assert cli(["--modality", "sem", "--split", "train", "--samples", "a", "b",
                "--images", *[str(tmp_path / "img.tif")] * 2,
                "--masks", *[str(tmp_path / "mask.tif")] * 2,
                "--objects-tables", *[str(tmp_path / "obj.csv")] * 2,
                "--objects-ids", *[str(tmp_path / "ids.tif")] * 2,
                "--params-json", '{"crop_size": 16}', "--out", str(out)]) == 0
    crops = CropSet.load(out)
    assert len(crops) == 2 and crops.images.shape == (2, 16, 16)
    assert crops.sample.tolist() == ["a", "b"] and crops.object_id.tolist() == [3, 3]
    assert crops.modality == "sem" and crops.split == "train" and crops.crop_size == 16
    assert crops.handcrafted.shape == (2, len(crops.handcrafted_names))
    assert np.isfinite(crops.handcrafted).all()


# --------------------------------------------------------------------------- features


def test_handcrafted_features_morphology():
    from mvfcnn.baselines.features import handcrafted_features, handcrafted_names

    mask = np.zeros((12, 20), dtype=bool)
    mask[1:11, 2:18] = True  # a 10 x 16 rectangle
    grey = np.where(mask, 100, 0).astype(np.uint8)
    names = handcrafted_names()
    values = dict(zip(names, handcrafted_features(grey, mask), strict=True))
    assert len(names) == 48
    assert values["area"] == 160 and values["solidity"] == 1 and values["extent"] == 1
    assert values["euler_number"] == 1
    assert values["intensity_mean"] == pytest.approx(100 / 255)
    assert values["intensity_std"] == 0
    assert values["glcm_contrast_d1_mean"] == 0 and values["glcm_energy_d1_mean"] == 1
    assert sum(values[f"lbp_{i}"] for i in range(10)) == pytest.approx(1)


def test_decaf_feature_shape():
    from mvfcnn.baselines.features import decaf_features

    crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    features = decaf_features(crops, pretrained="none", batch_size=2, progress=False)
    assert features.shape == (2, 4096) and features.dtype == np.float32
    assert np.isfinite(features).all() and (features >= 0).all()  # fc7 after ReLU


def test_vgg16_finetune_head():
    from mvfcnn.models.vgg_classifier import vgg16_finetune

    torch.manual_seed(0)
    model = vgg16_finetune(num_classes=3, pretrained="none")
    head = model.classifier[6]
    assert head.out_features == 3 and torch.all(head.bias == 0)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.1)
    with pytest.raises(InputError, match="not found"):
        vgg16_finetune(num_classes=3, pretrained="/nonexistent/weights.pth")


# --------------------------------------------------------------------------- SVM


def test_svm_separable_and_tiny_classes():
    from mvfcnn.baselines.svm import fit_svm

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0]], dtype=float)
    y = np.repeat([0, 1, 2], 6)
    x = centres[y] + rng.normal(0, 0.3, (len(y), 3))
    grid = {"C": [1.0, 100.0], "gamma_factor": [0.1, 1.0]}
    fitted = fit_svm(x, y, seed=0, params=grid)
    pred, conf = fitted.predict(x)
    assert (pred == y).all() and conf.shape == (18,)
    assert fitted.folds == 5 and set(fitted.best_params) >= {"C", "gamma"}
    tiny = fit_svm(x[:13], y[:13], seed=0, params=grid)  # class 2 has one object: still fits
    assert tiny.folds == 2 and len(tiny.predict(x)[0]) == 18
    single = fit_svm(x[:4], y[:4], seed=0)  # one class only: constant prediction
    assert (single.predict(x)[0] == 0).all()


# --------------------------------------------------------------------------- end to end


def _tiny_cropset(n_per_class: int, *, seed: int, split: str) -> CropSet:
    """Three classes of stripes told apart by their period (not orientation, which the
    rotation-invariant hand-crafted features ignore by design); 32x32 crops."""
    images, classes = stripe_images(n_per_class, seed=seed)
    n = len(images)
    from mvfcnn.baselines.features import handcrafted_features, handcrafted_names

    full = np.ones((32, 32), dtype=bool)
    return CropSet(
        images=np.stack(images), true_class=np.asarray(classes, dtype=np.int64),
        sample=np.asarray([f"{split}_{i // 4}" for i in range(n)]),
        object_id=np.arange(1, n + 1, dtype=np.int64), bbox=np.tile([0, 0, 32, 32], (n, 1)),
        area=np.full(n, 1024, dtype=np.int64),
        handcrafted=np.stack([handcrafted_features(im, full) for im in images]),
        handcrafted_names=np.asarray(handcrafted_names()), modality="sem", split=split,
        crop_size=32)


@pytest.fixture()
def tiny_npz(tmp_path):
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    _tiny_cropset(6, seed=1, split="train").save(train)
    _tiny_cropset(3, seed=2, split="test").save(test)
    return train, test


def test_per_sample_crops_concatenate_in_order_and_disagreeing_files_are_refused(tmp_path):
    first, second = _tiny_cropset(2, seed=1, split="sample"), _tiny_cropset(1, seed=2,
                                                                            split="sample")
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    first.save(paths[0])
    second.save(paths[1])
    joined = CropSet.load_all(paths, split="train")
    assert len(joined) == len(first) + len(second) == 9 and joined.split == "train"
    assert np.array_equal(joined.images[len(first):], second.images)
    assert np.array_equal(joined.true_class, np.concatenate([first.true_class,
                                                             second.true_class]))
    assert CropSet.load_all(paths[:1], split="test").split == "test"
    from dataclasses import replace

    replace(second, crop_size=64, images=np.zeros((3, 64, 64), np.uint8)).save(paths[1])
    with pytest.raises(InputError, match="crops files disagree"):
        CropSet.load_all(paths, split="train")


@pytest.mark.parametrize("method", ["handcrafted_svm", "cifarnet"])
def test_train_baseline_cli(tmp_path, tiny_npz, class_set, method):
    from mvfcnn.baselines.cli import train_baseline as cli
    from mvfcnn.evaluation.evaluate import OBJECT_COLUMNS, write_evaluation

    params = {"cifarnet": {"epochs": 3, "batch_size": 6}, "svm": {"C": [1, 10],
                                                                  "gamma_factor": [1]}}
    out = tmp_path / method
    argv = ["--method", method, "--modality", "sem", "--train", str(tiny_npz[0]),
            "--test", str(tiny_npz[1]), "--classes-json", json.dumps(CLASSES),
            "--params-json", json.dumps(params), "--seed", "0",
            "--out-metrics", str(out / "metrics.json"), "--out-objects", str(out / "objects.csv"),
            "--out-confusion", str(out / "confusion.csv"), "--out-info", str(out / "info.json"),
            "--out-model", str(out / "model.bin"), "--device", "cpu", "--threads", "1"]
    assert cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    objects = pd.read_csv(out / "objects.csv")
    assert list(objects.columns) == OBJECT_COLUMNS
    assert metrics["method"] == method and metrics["variant"] is None
    assert metrics["n_objects"] == 9 and set(objects["pred_class"]) <= {1, 2, 3}
    assert objects["confidence"].notna().all()
    if method == "handcrafted_svm":
        assert metrics["object_accuracy"] == 1.0  # stripes are trivially separable by texture
    # the very same keys as an MVFCNN evaluation (which adds only the pixel section)
    mvfcnn_style = objects.assign(pred_class=-1, confidence=0.0)
    reference = write_evaluation(mvfcnn_style, class_set, method="mvfcnn", modality="sem",
                                 variant="ft_balanced_aug", out_metrics=tmp_path / "m.json",
                                 out_objects=tmp_path / "o.csv", out_confusion=tmp_path / "c.csv")
    assert list(metrics) == list(reference)
    assert list(metrics["per_class"]) == list(reference["per_class"]) == ["alpha", "beta",
                                                                           "gamma"]
    confusion = pd.read_csv(out / "confusion.csv")
    assert list(confusion.columns) == list(pd.read_csv(tmp_path / "c.csv").columns)
    if method == "cifarnet":
        from mvfcnn.models.io import load_model

        model, meta = load_model(out / "model.bin")
        assert meta["arch"] == "cifarnet" and meta["extra"]["classes"] == [1, 2, 3]
        crops = CropSet.load(tiny_npz[1])
        with torch.inference_mode():
            logits = model(torch.from_numpy(crops.images)[:, None])
        pred = np.asarray(meta["extra"]["classes"])[logits.argmax(1).numpy()]
        assert (pred == objects["pred_class"].to_numpy()).all()


def test_train_baseline_rejects_wrong_modality(tmp_path, tiny_npz):
    from mvfcnn.baselines.cli import train_baseline as cli

    with pytest.raises(InputError, match="modality"):
        cli(["--method", "handcrafted_svm", "--modality", "lom", "--train", str(tiny_npz[0]),
             "--test", str(tiny_npz[1]), "--classes-json", json.dumps(CLASSES),
             "--out-metrics", str(tmp_path / "m"), "--out-objects", str(tmp_path / "o"),
             "--out-confusion", str(tmp_path / "c")])


def test_schema_lists_the_package_methods(repo_root):
    """The workflow takes its method names from mvfcnn.baselines; the schema enum and default
    (config validation) must name the same methods, in the same order."""
    import yaml

    from mvfcnn.baselines import METHODS, NETWORK_METHODS

    schema = yaml.safe_load((repo_root / "workflow/schemas/config.schema.yaml").read_text())
    entry = schema["properties"]["run"]["properties"]["baselines"]
    assert tuple(entry["items"]["enum"]) == METHODS
    assert tuple(entry["default"]) == METHODS
    assert set(NETWORK_METHODS) <= set(METHODS)
