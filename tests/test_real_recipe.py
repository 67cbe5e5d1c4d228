"""Issue 22's training-recipe levers on crops of real MetalDAM micrographs.

Rare-class-centred tiles, the Dice / capped-weight loss, SEM contrast augmentation and the
learning curves are exercised on 240x320 crops of three real images (all five classes present),
read from ../shared/data/metaldam; those tests skip when the release is absent. The release is
never copied into the repository (crops live in pytest's tmp_path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
METALDAM = ROOT.parent / "shared" / "data" / "metaldam"
#: (image id, y0, x0) of 240x320 crops holding matrix, austenite, M/A, precipitate and defect
CROPS = [(0, 160, 0), (2, 200, 200), (17, 400, 200)]
CROP_H, CROP_W = 240, 320

needs_metaldam = pytest.mark.skipif(not (METALDAM / "metadata.sqlite").exists(),
                                    reason="MetalDAM release not found at ../shared/data/metaldam")


@pytest.fixture(scope="module")
def classes():
    from mvfcnn.core.config import ClassSet

    return ClassSet.from_config(yaml.safe_load((ROOT / "config" / "metaldam.yaml").read_text()))


@pytest.fixture(scope="module")
def real_crops(tmp_path_factory, classes):
    """(image table for tile_index, [label maps]) of the crops, written as TIFFs."""
    if not (METALDAM / "metadata.sqlite").exists():
        pytest.skip("MetalDAM release not found at ../shared/data/metaldam")
    from mvfcnn.core.io import read_image, read_labels, write_image

    root = tmp_path_factory.mktemp("metaldam_crops")
    rows, maps = [], []
    for image_id, y0, x0 in CROPS:
        image = np.asarray(read_image(METALDAM / "images" / f"micrograph{image_id}.jpg",
                                      gray=True, mmap=False))
        labels = np.asarray(read_labels(METALDAM / "labels" / f"micrograph{image_id}.png"))
        window = (slice(y0, y0 + CROP_H), slice(x0, x0 + CROP_W))
        image, labels = np.ascontiguousarray(image[window]), np.ascontiguousarray(labels[window])
        sample = f"micrograph{image_id}"
        write_image(root / f"{sample}.tif", image)
        write_image(root / f"{sample}_labels.tif", labels.astype(np.uint8))
        rows.append({"sample": sample, "height": CROP_H, "width": CROP_W, "class": "austenite",
                     "image": str(root / f"{sample}.tif"),
                     "labels": str(root / f"{sample}_labels.tif")})
        maps.append(labels.astype(np.uint8))
    return pd.DataFrame(rows), maps


# --------------------------------------------------------------------------- 1. rare-class tiles


def _index(table, augment=True):
    from mvfcnn.fcn.tiling import tile_index

    return tile_index(table, size=96, stride=48, balanced=True, augment=augment)


@needs_metaldam
def test_rare_tiles_are_centred_on_rare_pixels_of_real_crops(real_crops, classes):
    from mvfcnn.fcn.tiling import CENTRED, add_rare_tiles, is_centred

    table, maps = real_crops
    plain = _index(table)
    index = add_rare_tiles(plain, maps, classes, share=0.15,
                           names=["martensite_austenite", "defect"], seed=3)
    tiles = index.tiles
    pd.testing.assert_frame_equal(tiles.iloc[:len(plain.tiles)], plain.tiles)
    extra = tiles[is_centred(tiles)]
    assert set(extra["class"]) == {f"{CENTRED}martensite_austenite", f"{CENTRED}defect"}
    assert set(extra["rot"]) == {0, 1, 2, 3}
    for name in ("martensite_austenite", "defect"):
        rows = extra[extra["class"] == f"{CENTRED}{name}"]
        # the configured share of the final index, up to rounding to whole positions
        assert abs(len(rows) / len(tiles) - 0.15) < 4 / len(tiles)
        assert index.rare[name]["rows"] == len(rows)
        value = classes.index_of(name)
        by_sample = dict(zip(table["sample"], maps, strict=True))
        for sample, y, x, h, w in rows[["sample", "y", "x", "h", "w"]].itertuples(index=False):
            window = by_sample[sample][y:y + h, x:x + w]
            assert (window == value).any()  # every window holds its class
            assert 0 <= y <= CROP_H - h and 0 <= x <= CROP_W - w
    # the rare classes cover far more of the training windows than in the plain index
    def share(frame, value):
        by_sample = dict(zip(table["sample"], maps, strict=True))
        hits = [(by_sample[s][y:y + h, x:x + w] == value).mean()
                for s, y, x, h, w in frame[["sample", "y", "x", "h", "w"]].itertuples(index=False)]
        return float(np.mean(hits))

    defect = classes.index_of("defect")
    assert share(extra[extra["class"] == f"{CENTRED}defect"], defect) > \
        2 * share(plain.tiles, defect)


@needs_metaldam
def test_rare_tiles_are_deterministic_and_off_by_default(real_crops, classes):
    from mvfcnn.core.settings import defaults
    from mvfcnn.fcn.tiling import add_rare_tiles

    table, maps = real_crops
    plain = _index(table, augment=False)
    assert defaults("tiles")["rare_share"] == 0
    assert add_rare_tiles(plain, maps, classes, share=0.0) is plain
    a = add_rare_tiles(plain, maps, classes, share=0.1, max_frequency=0.15, seed=1).tiles
    b = add_rare_tiles(plain, maps, classes, share=0.1, max_frequency=0.15, seed=1).tiles
    c = add_rare_tiles(plain, maps, classes, share=0.1, max_frequency=0.15, seed=2).tiles
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c) and len(a) == len(c)


@needs_metaldam
def test_rare_classes_from_pixel_frequency(real_crops, classes):
    from mvfcnn.fcn.tiling import class_pixel_counts, rare_classes

    _, maps = real_crops
    counts = class_pixel_counts(maps, classes)
    assert counts.sum() == len(maps) * CROP_H * CROP_W
    # precipitate 0.4 %, M/A 10.4 %, defect 11.4 % of these crops
    assert rare_classes(counts, classes, names=None, max_frequency=0.1) == ["precipitate"]
    assert rare_classes(counts, classes, names=None, max_frequency=0.15) == [
        "martensite_austenite", "precipitate", "defect"]
    assert rare_classes(counts, classes, names=["defect"], max_frequency=0.1) == ["defect"]


@needs_metaldam
def test_centred_tiles_always_train(real_crops, classes):
    from mvfcnn.fcn.tiling import add_rare_tiles, is_centred
    from mvfcnn.fcn.train import split_validation

    table, maps = real_crops
    plain = _index(table)
    index = add_rare_tiles(plain, maps, classes, share=0.2, names=["defect"], seed=0)
    train, val = split_validation(index.tiles, 4)
    _, val_plain = split_validation(plain.tiles, 4)
    pd.testing.assert_frame_equal(val, val_plain)
    assert is_centred(train).sum() == is_centred(index.tiles).sum()


@needs_metaldam
def test_tile_index_cli_adds_rare_tiles(real_crops, classes, tmp_path):
    from mvfcnn.cli import main

    table, _ = real_crops
    params = {"size": 96, "stride": 48, "rare_share": 0.1, "rare_classes": ["defect"]}
    args = ["tile-index", "--samples", *table["sample"], "--images", *table["image"],
            "--labels", *table["labels"], "--classes", *table["class"],
            "--classes-json", json.dumps(classes.to_dict()), "--params-json", json.dumps(params),
            "--balanced", "true", "--augment", "false", "--seed", "5",
            "--out", str(tmp_path / "tiles.csv"), "--out-summary", str(tmp_path / "tiles.json")]
    assert main(args) == 0
    tiles = pd.read_csv(tmp_path / "tiles.csv")
    summary = json.loads((tmp_path / "tiles.json").read_text())
    assert summary["rare"]["defect"]["rows"] == int((tiles["class"] == "centred:defect").sum())
    assert summary["n_tiles"] == len(tiles)


# --------------------------------------------------------------------------- 2. rare-class loss

#: a tiny FCN (width 1/16, fc 16) for short runs on 2 shared cores
TINY = {"width": 1 / 16, "fc_channels": 16, "iterations": {"32s": 6}, "batch_size": 2,
        "lr": {"32s": 1e-3}, "optimizer": "adam", "precision": "fp32", "checkpoint_every": 0,
        "validate_every": 3, "device": "cpu", "progress": False}


@pytest.fixture()
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_soft_dice_loss_values():
    import torch

    from mvfcnn.fcn.losses import soft_dice_loss

    labels = torch.tensor([[[0, 1], [2, 255]]])
    perfect = torch.nn.functional.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2) * 50.0
    assert soft_dice_loss(perfect, labels, ignore_index=255).item() == pytest.approx(0, abs=1e-6)
    # uniform scores over 3 classes, one labelled pixel each: Dice_c = (2/3 + 1) / (1 + 1 + 1)
    uniform = torch.zeros(1, 3, 2, 2)
    assert soft_dice_loss(uniform, labels, ignore_index=255).item() == pytest.approx(
        1 - (2 / 3 + 1) / 3, abs=1e-6)
    # the ignored pixel changes nothing
    other = uniform.clone()
    other[0, :, 1, 1] = torch.tensor([9.0, -9.0, 0.0])
    assert soft_dice_loss(other, labels, ignore_index=255).item() == pytest.approx(
        soft_dice_loss(uniform, labels, ignore_index=255).item())


def test_lovasz_loss_is_one_minus_iou_on_hard_predictions():
    import torch

    from mvfcnn.fcn.losses import lovasz_softmax_loss

    labels = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.nn.functional.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2) * 50.0
    assert lovasz_softmax_loss(perfect, labels, ignore_index=255).item() == pytest.approx(
        0, abs=1e-6)
    # predicted [[0, 0], [1, 2]]: class 0 IoU 1/2 (pred 2 px, true 1), class 1 IoU 1/2 (true 2,
    # pred 1); class 2 is absent from the labelled pixels and not averaged; the ignored pixel
    # predicts 2 and counts nowhere
    hard = torch.nn.functional.one_hot(torch.tensor([[[0, 0], [1, 2]]]), 3).permute(0, 3, 1, 2)
    assert lovasz_softmax_loss(hard * 50.0, labels, ignore_index=255).item() == pytest.approx(
        0.5, abs=1e-6)
    nothing = torch.full((1, 2, 2), 255)
    assert lovasz_softmax_loss(hard * 50.0, nothing, ignore_index=255).item() == 0.0


@pytest.mark.parametrize("term", ["dice_weight", "lovasz_weight"])
def test_region_terms_keep_sum_equal_n_times_mean(term):
    import torch

    from mvfcnn.fcn.losses import pixel_loss

    logits = torch.randn(2, 5, 6, 6)
    labels = torch.randint(0, 5, (2, 6, 6))
    labels[0, 0] = 255
    s, logged_s, n = pixel_loss(logits, labels, ignore_index=255, reduction="sum",
                                **{term: 0.5})
    m, logged_m, _ = pixel_loss(logits, labels, ignore_index=255, reduction="mean",
                                **{term: 0.5})
    plain, logged, _ = pixel_loss(logits, labels, ignore_index=255, reduction="mean")
    assert n == 66 and s.item() == pytest.approx(n * m.item(), rel=1e-5)
    assert logged_s == logged_m == logged  # the logged loss stays the plain cross-entropy
    assert m.item() > plain.item()


@needs_metaldam
def test_capped_class_weights_on_real_crops(real_crops, classes):
    from mvfcnn.fcn.dataset import TileDataset
    from mvfcnn.fcn.losses import class_balance_weights

    table, _ = real_crops
    data = TileDataset(_index(table, augment=False).tiles)
    raw = class_balance_weights(data, classes.num_classes, ignore_index=255)
    capped = class_balance_weights(data, classes.num_classes, ignore_index=255, cap=3.0)
    precipitate = classes.index_of("precipitate")
    assert raw[precipitate] > 10  # the weight that drove FCN-32s to "precipitate everywhere"
    assert capped.max().item() == pytest.approx(3.0) and capped.min().item() >= 1 / 3 - 1e-6
    kept = (raw >= 1 / 3) & (raw <= 3)
    assert np.allclose(raw[kept].numpy(), capped[kept].numpy())


@needs_metaldam
def test_region_terms_and_capped_weights_train_on_real_crops(real_crops, classes, tmp_path,
                                                     one_torch_thread):
    from mvfcnn.fcn.train import split_validation, train_stage

    table, _ = real_crops
    train, val = split_validation(_index(table).tiles, 4, 4)
    cfg = {**TINY, "dice_weight": 1.0, "lovasz_weight": 0.5,
           "class_weighting": "median_frequency", "class_weight_cap": 3.0}
    summary = train_stage(stage="32s", tiles=train, classes=classes, cfg=cfg,
                          variant={"pretrained": "none", "balanced": True, "augment": True},
                          parent=None, out_model=tmp_path / "fcn32s.pt",
                          out_csv=tmp_path / "train_32s.csv", out_png=tmp_path / "train_32s.png",
                          checkpoint_dir=tmp_path / "ckpt", seed=0, device="cpu", val_tiles=val)
    frame = pd.read_csv(tmp_path / "train_32s.csv")
    assert summary["iterations"] == 6 and np.isfinite(frame["loss"]).all()
    assert frame["mean_iu"].notna().sum() == 2


# --------------------------------------------------------------------------- 3. augmentation


@pytest.fixture(scope="module")
def real_tile(real_crops):
    """One 96 px tile of a real micrograph and its labels (several classes)."""
    from mvfcnn.fcn.dataset import TileDataset

    table, _ = real_crops
    return TileDataset(_index(table, augment=False).tiles).read(4)


def _draw(img, lab, params, position=0, seed=0):
    from mvfcnn.fcn.dataset import augment_tile

    rng = np.random.default_rng(np.random.SeedSequence([seed, position]))
    return augment_tile(img, lab, rng, params)


@needs_metaldam
def test_augmentation_off_is_the_identity_and_defaults_off(real_tile):
    from mvfcnn.core.settings import defaults
    from mvfcnn.fcn.dataset import augmentation_enabled

    params = defaults("fcn")["augmentation"]
    assert not augmentation_enabled(params)
    img, lab = real_tile
    out, out_lab = _draw(img, lab, params)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(out_lab, lab)


@needs_metaldam
def test_flips_move_image_and_labels_together(real_tile):
    img, lab = real_tile
    seen = set()
    for position in range(16):
        out, out_lab = _draw(img, lab, {"flips": True}, position)
        for name, (fi, fl) in {"id": (img, lab), "lr": (img[:, ::-1], lab[:, ::-1]),
                               "ud": (img[::-1], lab[::-1]),
                               "both": (img[::-1, ::-1], lab[::-1, ::-1])}.items():
            if np.array_equal(out, fi):
                np.testing.assert_array_equal(out_lab, fl)
                seen.add(name)
    assert seen == {"id", "lr", "ud", "both"}


@needs_metaldam
@pytest.mark.parametrize("key, value, check", [
    ("brightness", 0.2, lambda a, b: abs(float(b.mean()) - float(a.mean())) > 2),
    ("contrast", 0.5, lambda a, b: abs(float(b.std()) - float(a.std())) > 1),
    ("gamma", 0.5, lambda a, b: abs(float(b.mean()) - float(a.mean())) > 1),
    ("blur_sigma", 3.0, lambda a, b: _roughness(b) < _roughness(a)),
    ("noise_std", 0.1, lambda a, b: _roughness(b) > _roughness(a)),
])
def test_each_sem_contrast_augmentation_on_a_real_tile(real_tile, key, value, check):
    img, lab = real_tile
    hits = 0
    for position in range(6):
        out, out_lab = _draw(img, lab, {key: value}, position)
        assert out.dtype == np.uint8 and out.shape == img.shape
        np.testing.assert_array_equal(out_lab, lab)  # grey-level changes keep the labels
        hits += bool(check(img, out))
        a, _ = _draw(img, lab, {key: value}, position)
        np.testing.assert_array_equal(a, out)  # a function of (seed, position) alone
    assert hits >= 4  # some draws are near the identity (U(-v, v) close to 0)


def _roughness(img: np.ndarray) -> float:
    x = img.astype(np.float64)
    return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


@needs_metaldam
def test_augmented_training_resumes_bit_identically_on_real_crops(real_crops, classes, tmp_path,
                                                                 one_torch_thread):
    """Each visit's draw depends on its position in the visiting order, so a run resumed from a
    checkpoint takes the draws the uninterrupted run took."""
    import torch

    from mvfcnn.fcn.train import train_stage
    from mvfcnn.models.io import load_model

    table, _ = real_crops
    tiles = _index(table).tiles
    cfg = {**TINY, "validate_every": 0, "checkpoint_every": 3, "keep_checkpoints": True,
           "augmentation": {"flips": True, "brightness": 0.1, "contrast": 0.2, "gamma": 0.2,
                            "blur_sigma": 1.0, "noise_std": 0.03}}
    variant = {"pretrained": "none", "balanced": True, "augment": True}

    def run(out: Path, ckpt: Path, config: dict) -> tuple[dict, int]:
        out.mkdir()
        summary = train_stage(stage="32s", tiles=tiles, classes=classes, cfg=config,
                              variant=variant, parent=None, out_model=out / "m.pt",
                              out_csv=out / "t.csv", out_png=out / "t.png", checkpoint_dir=ckpt,
                              seed=4, device="cpu")
        return load_model(out / "m.pt")[0].state_dict(), summary["resumed_from"]

    whole, start = run(tmp_path / "a", tmp_path / "ckpt", cfg)  # leaves ckpt_3.pt behind
    resumed, restart = run(tmp_path / "b", tmp_path / "ckpt", cfg)
    assert (start, restart) == (0, 3)
    assert pd.read_csv(tmp_path / "b" / "t.csv")["iteration"].tolist() == list(range(1, 7))
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
    plain, _ = run(tmp_path / "c", tmp_path / "ckpt_plain", {**cfg, "augmentation": {}})
    assert any(not torch.equal(value, plain[key]) for key, value in whole.items())


# --------------------------------------------------------------------------- 5. learning curves


@needs_metaldam
def test_learning_curve_of_two_stages_trained_on_real_crops(real_crops, classes, tmp_path,
                                                           one_torch_thread):
    """train_32s.csv and train_16s.csv of a short run on real crops become one curve of
    validation mean IU per stage (CSV + PNG) through the `mvfcnn learning-curve` verb."""
    from mvfcnn.cli import main
    from mvfcnn.fcn.curves import CURVE_COLUMNS
    from mvfcnn.fcn.train import split_validation, train_stage

    table, _ = real_crops
    train, val = split_validation(_index(table).tiles, 4, 4)
    cfg = {**TINY, "iterations": {"32s": 4, "16s": 4}, "lr": {"32s": 1e-3, "16s": 1e-4},
           "validate_every": 2}
    parent = None
    for stage in ("32s", "16s"):
        train_stage(stage=stage, tiles=train, classes=classes, cfg=cfg,
                    variant={"pretrained": "none", "balanced": True, "augment": True},
                    parent=parent, out_model=tmp_path / f"fcn{stage}.pt",
                    out_csv=tmp_path / f"train_{stage}.csv",
                    out_png=tmp_path / f"train_{stage}.png", checkpoint_dir=tmp_path / stage,
                    seed=0, device="cpu", val_tiles=val)
        parent = tmp_path / f"fcn{stage}.pt"
    assert main(["learning-curve", "--stages", "32s", "16s", "--csvs",
                 str(tmp_path / "train_32s.csv"), str(tmp_path / "train_16s.csv"),
                 "--out-csv", str(tmp_path / "curve.csv"),
                 "--out-png", str(tmp_path / "curve.png")]) == 0
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert list(curve.columns) == CURVE_COLUMNS
    assert curve["stage"].tolist() == ["32s", "32s", "16s", "16s"]
    assert curve["iteration"].tolist() == [2, 4, 2, 4]
    assert curve["step"].tolist() == [2, 4, 6, 8]
    assert curve["mean_iu"].between(0, 1).all() and curve["train_loss"].notna().all()
    # the gain is per stage: NaN at each stage's first validation
    assert curve["mean_iu_gain"].isna().tolist() == [True, False, True, False]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_learning_curve_from_training_rows():
    from mvfcnn.fcn.curves import learning_curve

    rows = pd.DataFrame({"iteration": [1, 2, 3, 4], "loss": [4.0, 2.0, 3.0, 1.0],
                         "lr": 1e-3, "seconds": 0.1,
                         "pixel_accuracy": [None, 0.5, None, 0.7],
                         "mean_iu": [None, 0.2, None, 0.35]})
    curve = learning_curve({"32s": rows, "16s": rows.iloc[:2]})
    assert curve["step"].tolist() == [2, 4, 6]
    assert curve["train_loss"].tolist() == [3.0, 2.5, 3.0]
    assert curve["mean_iu_gain"].iloc[1] == pytest.approx(0.15)
    assert learning_curve({}).empty


def test_crossval_learning_curves_of_every_fold(tmp_path):
    """`mvfcnn crossval-curves`: the folds' curves in one table (fold column) and one figure."""
    from mvfcnn.cli import main
    from mvfcnn.fcn.curves import CURVE_COLUMNS, learning_curve

    rows = pd.DataFrame({"iteration": [1, 2, 3, 4], "loss": [4.0, 2.0, 3.0, 1.0], "lr": 1e-3,
                         "seconds": 0.1, "pixel_accuracy": [None, 0.5, None, 0.7],
                         "mean_iu": [None, 0.2, None, 0.35]})
    paths = []
    for fold in ("0", "1"):
        path = tmp_path / f"fold{fold}.csv"
        learning_curve({"32s": rows, "16s": rows}).to_csv(path, index=False)
        paths.append(str(path))
    assert main(["crossval-curves", "--folds", "0", "1", "--curves", *paths,
                 "--out-csv", str(tmp_path / "curves.csv"),
                 "--out-png", str(tmp_path / "curves.png")]) == 0
    frame = pd.read_csv(tmp_path / "curves.csv", dtype={"fold": str})
    assert list(frame.columns) == ["fold", *CURVE_COLUMNS]
    assert frame["fold"].tolist() == ["0"] * 4 + ["1"] * 4
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["crossval-curves", "--folds", "0", "--curves", str(tmp_path / "none.csv"),
                 "--out-csv", str(tmp_path / "x.csv"), "--out-png", str(tmp_path / "x.png")]) == 1


# --------------------------------------------------------------------------- config + real TTA


def _readme_overlay() -> dict:
    """The trial overlay of README "Training levers for real micrographs"."""
    text = (ROOT / "README.md").read_text()
    start = text.index("tiles: {rare_share:")
    return yaml.safe_load(text[start:text.index("```", start)])


def test_lever_defaults_and_the_readme_overlay_validate():
    """Defaults keep today's behaviour; the README's overlay on config/metaldam.yaml passes the
    schema; out-of-range values fail it."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from mvfcnn.core.settings import defaults, merge

    assert defaults("tiles")["rare_share"] == 0 and defaults("tiles")["rare_classes"] is None
    assert defaults("fcn")["dice_weight"] == 0 and defaults("fcn")["class_weight_cap"] is None
    assert not any(defaults("fcn")["augmentation"].values())
    assert not defaults("inference")["tta_flips"] and not defaults("inference")["tta_rotations"]
    schema = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    base = yaml.safe_load((ROOT / "config" / "metaldam.yaml").read_text())
    config = merge(base, _readme_overlay())
    validate(config, schema)
    assert config["fcn"]["augmentation"]["flips"] is True
    for bad in ({"tiles": {"rare_share": 1.0}}, {"fcn": {"class_weight_cap": 0.5}},
                {"fcn": {"augmentation": {"flip": True}}}, {"fcn": {"dice_weight": -1}}):
        with pytest.raises(WorkflowError):
            validate(merge(base, bad), schema)


@needs_metaldam
def test_tta_on_a_real_crop(real_crops, one_torch_thread):
    """The 8-view TTA through predict_image on a real micrograph crop with a small FCN-8s:
    a valid class map and probabilities, not the plain map bit for bit."""
    import torch

    from mvfcnn.core.io import read_image
    from mvfcnn.inference.predict import predict_image
    from mvfcnn.models.fcn import build_fcn

    table, _ = real_crops
    image = np.asarray(read_image(table["image"].iloc[0]))
    torch.manual_seed(0)
    model = build_fcn("8s", pretrained="none", num_classes=5, width=1 / 16, fc_channels=16)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("score") and name.endswith("weight"):
                torch.nn.init.normal_(param, std=0.5)
    kwargs = {"tile_size": 128, "overlap": 32, "batch_size": 2, "precision": "fp32",
              "device": "cpu", "progress": False, "return_probs": True}
    plain, p_plain = predict_image(model, image, **kwargs)
    tta, p_tta = predict_image(model, image, tta_rotations=True, tta_flips=True, **kwargs)
    assert tta.shape == plain.shape == image.shape and tta.max() < 5
    np.testing.assert_allclose(p_tta.astype(np.float32).sum(0), 1.0, atol=5e-3)
    assert not np.array_equal(p_tta, p_plain)


@pytest.mark.parametrize("overlay", sorted((ROOT / "benchmarks" / "overlays").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_benchmark_overlays_validate_on_metaldam(overlay):
    """The lever overlays the MetalDAM ablation runs with pass the schema on config/metaldam.yaml
    + the former default they were measured against, and each switches at least one lever on."""
    from snakemake.utils import validate

    from mvfcnn.core.settings import merge

    schema = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    base = yaml.safe_load((ROOT / "config" / "metaldam.yaml").read_text())
    former = ROOT / "benchmarks" / "overlays" / "metaldam_former_default.yaml"
    if overlay != former:
        base = merge(base, yaml.safe_load(former.read_text()))
    config = merge(base, yaml.safe_load(overlay.read_text()))
    validate(config, schema)
    validate(base, schema)  # fills the schema defaults the overlay must differ from
    assert config != base


def test_the_metaldam_default_is_the_measured_recipe():
    """config/metaldam.yaml is what the 6-fold measurement of the README ran: the former default
    + the FCN-4s and FCN-2s levers + test-time augmentation + size-keeping convolutions +
    averaged weights + 6000 pretraining steps (benchmarks/results/metaldam.json)."""
    from mvfcnn.core.settings import merge

    def load(path: str) -> dict:
        return yaml.safe_load((ROOT / path).read_text())

    default = merge(load("config/config.yaml"), load("config/metaldam.yaml"))
    measured = default
    for name in ("metaldam_former_default", "metaldam_lever_fcn4s", "metaldam_lever_fcn2s",
                 "metaldam_lever_tta", "metaldam_lever_same", "metaldam_lever_ema",
                 "metaldam_lever_pretrain", "metaldam_lever_pretrain_long"):
        measured = merge(measured, load(f"benchmarks/overlays/{name}.yaml"))
    assert measured == default
    former = merge(default, load("benchmarks/overlays/metaldam_former_default.yaml"))
    assert former["fcn"]["stages"] == ["32s", "16s", "8s"] and former["prepare"]["upscale"] == 2
    assert former["tiles"]["rare_share"] == 0 and not former["inference"]["tta_flips"]
    assert former["fcn"]["padding"] == "caffe" and default["fcn"]["padding"] == "same"
    assert former["fcn"]["ema_decay"] == 0 and default["fcn"]["ema_decay"] == 0.995
    assert former["pretrain"]["iterations"] == 400 and default["pretrain"]["iterations"] == 6000
    paper = merge(default, load("config/metaldam_paper.yaml"))
    assert paper["fcn"]["stages"] == ["32s", "16s", "8s"] and paper["prepare"]["upscale"] == 2
    assert paper["fcn"]["padding"] == "caffe"  # the paper's FCN for ImageNet weights
    assert paper["fcn"]["ema_decay"] == 0
    assert not paper["inference"]["tta_flips"] and paper["fcn"]["dice_weight"] == 0


# --------------------------------------------------------------------------- schedule, 4s, SSL


@needs_metaldam
def test_poly_schedule_keep_best_and_fcn4s_on_real_crops(real_crops, classes, tmp_path,
                                                         one_torch_thread):
    """The session-7 levers on real crops: the chain to FCN-4s with a decaying rate and each
    stage's best validated weights; the 4s output is the input size, finite everywhere."""
    import torch

    from mvfcnn.fcn.losses import lr_factor
    from mvfcnn.fcn.train import split_validation, train_stage
    from mvfcnn.models.io import load_model

    table, _ = real_crops
    train, val = split_validation(_index(table).tiles, 4, 4)
    stages = ["32s", "16s", "8s", "4s"]
    cfg = {**TINY, "stages": stages, "iterations": dict.fromkeys(stages, 4),
           "lr": dict.fromkeys(stages, 1e-3), "validate_every": 2, "lr_schedule": "poly",
           "keep_best": True}
    parent = None
    for stage in stages:
        out = tmp_path / f"fcn{stage}.pt"
        train_stage(stage=stage, tiles=train, classes=classes, cfg=cfg,
                    variant={"pretrained": "none", "balanced": True, "augment": True},
                    parent=parent, out_model=out, out_csv=tmp_path / f"train_{stage}.csv",
                    out_png=tmp_path / f"train_{stage}.png", checkpoint_dir=tmp_path / stage,
                    seed=0, device="cpu", val_tiles=val)
        rows = pd.read_csv(tmp_path / f"train_{stage}.csv")
        np.testing.assert_allclose(rows["lr"], [1e-3 * lr_factor("poly", i, 4) for i in range(4)])
        kept = load_model(out)[1]["extra"]["kept_iteration"]
        best = rows.dropna(subset=["mean_iu"])
        assert kept == int(best["iteration"].iloc[int(np.argmax(best["mean_iu"]))])
        parent = out
    model = load_model(parent)[0].eval()
    x = torch.rand(1, 3, 75, 90)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, classes.num_classes, 75, 90) and torch.isfinite(y).all()


@needs_metaldam
def test_same_padding_chain_on_real_crops(real_crops, classes, tmp_path, one_torch_thread):
    """fcn.padding same on real tiles: the chain to FCN-2s keeps the padding in every model
    file, its output is the input size, and a parent of the other padding is refused."""
    import torch

    from mvfcnn.core.errors import InputError
    from mvfcnn.fcn.train import split_validation, train_stage
    from mvfcnn.models.io import load_model

    table, _ = real_crops
    train, val = split_validation(_index(table).tiles, 4, 4)
    stages = ["32s", "16s", "8s", "4s", "2s"]
    cfg = {**TINY, "stages": stages, "iterations": dict.fromkeys(stages, 2),
           "lr": dict.fromkeys(stages, 1e-3), "padding": "same"}
    variant = {"pretrained": "none", "balanced": True, "augment": True}

    def train_one(stage, parent, stage_cfg, name):
        out = tmp_path / f"{name}.pt"
        train_stage(stage=stage, tiles=train, classes=classes, cfg=stage_cfg, variant=variant,
                    parent=parent, out_model=out, out_csv=tmp_path / f"{name}.csv",
                    out_png=tmp_path / f"{name}.png", checkpoint_dir=tmp_path / name,
                    seed=0, device="cpu", val_tiles=val)
        return out

    parent = None
    for stage in stages:
        parent = train_one(stage, parent, cfg, f"fcn{stage}")
        assert load_model(parent)[1]["kwargs"]["padding"] == "same"
    model = load_model(parent)[0].eval()
    assert model.trunk.features[0].padding == (1, 1)
    with torch.no_grad():
        y = model(torch.rand(1, 3, 75, 90))
    assert y.shape == (1, classes.num_classes, 75, 90) and torch.isfinite(y).all()
    with pytest.raises(InputError, match="padding=same, the config says caffe"):
        train_one("16s", tmp_path / "fcn32s.pt", {**cfg, "padding": "caffe"}, "mixed")


@needs_metaldam
def test_weight_average_on_real_crops(real_crops, classes, tmp_path, one_torch_thread):
    """fcn.ema_decay on real tiles: the same steps as a plain run, but the kept model is the
    average of the stage's weights, not its last iterate."""
    import torch

    from mvfcnn.fcn.train import split_validation, train_stage
    from mvfcnn.models.io import load_model

    table, _ = real_crops
    train, val = split_validation(_index(table).tiles, 4, 4)
    states, rows = {}, {}
    for name, decay in (("plain", 0.0), ("ema", 0.9)):
        out = tmp_path / f"{name}.pt"
        train_stage(stage="32s", tiles=train, classes=classes, cfg={**TINY, "ema_decay": decay},
                    variant={"pretrained": "none", "balanced": True, "augment": True},
                    parent=None, out_model=out, out_csv=tmp_path / f"{name}.csv",
                    out_png=tmp_path / f"{name}.png", checkpoint_dir=tmp_path / name, seed=0,
                    device="cpu", val_tiles=val)
        model, meta = load_model(out)
        assert meta["extra"]["ema_decay"] == decay
        states[name] = model.state_dict()
        rows[name] = pd.read_csv(tmp_path / f"{name}.csv")
        assert all(torch.isfinite(v).all() for v in states[name].values())
    assert any(not torch.equal(states["plain"][k], states["ema"][k]) for k in states["plain"])
    np.testing.assert_array_equal(rows["plain"]["loss"], rows["ema"]["loss"])  # same steps


@needs_metaldam
def test_ssl_pretraining_on_real_crops(real_crops, classes, tmp_path, one_torch_thread):
    from mvfcnn.fcn.pretrain import pretrain_trunk

    table, maps = real_crops
    summary = pretrain_trunk(
        images=list(table["image"]), labels=list(table["labels"]), classes=classes,
        cfg={"patch_size": 32, "iterations": 2, "ssl_iterations": 6, "ssl_patch_size": 64,
             "batch_size": 4, "precision": "fp32", "progress": False},
        fcn_cfg={"width": 1 / 16, "fc_channels": 16}, seed=0, out_model=tmp_path / "trunk.pt",
        out_csv=tmp_path / "pretrain.csv")
    rows = pd.read_csv(tmp_path / "pretrain.csv")
    assert rows["phase"].tolist() == ["ssl"] * 6 + ["patches"] * 2
    assert np.isfinite(rows["loss"]).all() and summary["ssl_iterations"] == 6
