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
    from mvfcnn.config import ClassSet

    return ClassSet.from_config(yaml.safe_load((ROOT / "config" / "metaldam.yaml").read_text()))


@pytest.fixture(scope="module")
def real_crops(tmp_path_factory, classes):
    """(image table for tile_index, [label maps]) of the crops, written as TIFFs."""
    if not (METALDAM / "metadata.sqlite").exists():
        pytest.skip("MetalDAM release not found at ../shared/data/metaldam")
    from mvfcnn.io import read_image, read_labels, write_image

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
    from mvfcnn.tiling import tile_index

    return tile_index(table, size=96, stride=48, balanced=True, augment=augment)


@needs_metaldam
def test_rare_tiles_are_centred_on_rare_pixels_of_real_crops(real_crops, classes):
    from mvfcnn.tiling import CENTRED, add_rare_tiles, is_centred

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
    from mvfcnn.settings import defaults
    from mvfcnn.tiling import add_rare_tiles

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
    from mvfcnn.tiling import class_pixel_counts, rare_classes

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
    from mvfcnn.tiling import add_rare_tiles, is_centred
    from mvfcnn.training import split_validation

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
