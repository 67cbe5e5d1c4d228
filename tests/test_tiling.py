"""Tile index counts (hand-computed), stride balancing, rotations, and the tile dataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.fcn.dataset import TileDataset, sample_order
from mvfcnn.fcn.tiling import (
    TILE_INDEX_COLUMNS,
    build_image_table,
    choose_stride,
    count_windows,
    image_class_from_labels,
    tile_index,
)

CLASSES = ClassSet((0, 1, 2), ("bg", "A", "B"), ("#000000", "#ff0000", "#00ff00"))


def _images(spec: list[tuple[str, int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"sample": s, "height": h, "width": w, "class": c,
                          "image": f"{s}.tif", "labels": f"{s}_labels.tif"}
                         for s, h, w, c in spec])


def test_paper_example_4331():
    # §4.3.4: 7000x8000 px, 1000 px tiles, stride 100 -> 61 * 71 = 4331
    assert count_windows(7000, 8000, 1000, 100) == 61 * 71 == 4331
    index = tile_index(_images([("s", 7000, 8000, "A")]), size=1000, stride=100,
                       balanced=False, augment=False)
    assert len(index.tiles) == 4331
    assert index.tiles["y"].max() == 6000 and index.tiles["x"].max() == 7000


def test_no_flush_to_edge_and_small_images():
    # (1050 - 200) // 100 + 1 = 9 positions: 0..800; the last 50 px are not covered (no flush)
    assert count_windows(1050, 1000, 200, 100) == 9 * 9
    index = tile_index(_images([("s", 1050, 1000, "A")]), size=200, stride=100,
                       balanced=False, augment=False)
    assert index.tiles["y"].max() == 800
    # an image smaller than the tile: one window of the whole image (padded by the dataset)
    small = tile_index(_images([("t", 150, 300, "A")]), size=200, stride=100,
                       balanced=False, augment=False).tiles
    assert len(small) == 2 and set(small["h"]) == {150} and set(small["w"]) == {200}


def test_unbalanced_counts_and_columns():
    # one 1000x1000 A, three B, size 200, stride 100: 9 * 9 = 81 per image
    spec = [("a1", 1000, 1000, "A")] + [(f"b{i}", 1000, 1000, "B") for i in range(3)]
    index = tile_index(_images(spec), size=200, stride=100, balanced=False, augment=False)
    assert list(index.tiles.columns) == TILE_INDEX_COLUMNS
    assert index.counts == {"A": 81, "B": 243}
    assert index.strides == {"A": 100, "B": 100}
    assert set(index.tiles["rot"]) == {0}
    assert (index.tiles[["h", "w"]] == 200).all().all()


def test_balanced_strides_within_tolerance():
    # one A and two B images, 1000x1000, size 200, stride 100: A 81, B 2 * 81 = 162 (target).
    # A: n(s)^2 with n = 800 // s + 1; n = 13 -> 169 (|7|), n = 12 -> 144 (|18|); the largest
    # stride with n = 13 is 66 (800 // 66 = 12).
    spec = [("a1", 1000, 1000, "A"), ("b1", 1000, 1000, "B"), ("b2", 1000, 1000, "B")]
    index = tile_index(_images(spec), size=200, stride=100, balanced=True, augment=False)
    assert index.strides == {"A": 66, "B": 100}
    assert index.counts == {"A": 169, "B": 162}
    assert index.within_tolerance
    counts = list(index.counts.values())
    assert max(counts) <= 1.05 * min(counts)
    summary = index.summary()
    assert summary["classes"]["A"]["count_at_common_stride"] == 81
    json.dumps(summary)  # serialisable as is


def test_balanced_out_of_tolerance_is_reported_or_raised():
    # one A vs three B: target 243; A can only make squares: 225 (stride 57) or 256 (stride 53).
    # 256 is closer (|13| vs |18|) but 5.3% off -> recorded, and an error when strict.
    spec = [("a1", 1000, 1000, "A")] + [(f"b{i}", 1000, 1000, "B") for i in range(3)]
    index = tile_index(_images(spec), size=200, stride=100, balanced=True, augment=False)
    assert index.strides["A"] == 53 and index.counts["A"] == 256
    assert not index.classes["A"].within_tolerance and index.classes["B"].within_tolerance
    with pytest.raises(InputError, match="'A'"):
        tile_index(_images(spec), size=200, stride=100, balanced=True, augment=False,
                   strict=True)
    # unreachable even at stride 1: a 210 px image has at most 11 * 11 tiles
    tiny = _images([("a", 210, 210, "A"), ("b", 1000, 1000, "B"), ("c", 1000, 1000, "B")])
    result = tile_index(tiny, size=200, stride=100, balanced=True, augment=False)
    assert result.strides["A"] == 1 and result.counts["A"] == 121
    assert not result.within_tolerance


def test_choose_stride_prefers_larger_stride_on_ties():
    # 1 image 300x300, size 100: n = 200 // s + 1; target 9 -> n = 3 for s in 67..100
    assert choose_stride([(300, 300)], size=100, common_stride=100, target=9) == 100
    assert choose_stride([(300, 300)], size=100, common_stride=100, target=16) == 66


def test_augment_multiplies_rows_by_four():
    spec = [("a1", 1000, 1000, "A"), ("b1", 1000, 1000, "B"), ("b2", 1000, 1000, "B")]
    plain = tile_index(_images(spec), size=200, stride=100, balanced=True, augment=False)
    aug = tile_index(_images(spec), size=200, stride=100, balanced=True, augment=True)
    assert len(aug.tiles) == 4 * len(plain.tiles)
    assert aug.tiles["rot"].value_counts().to_dict() == {r: len(plain.tiles) for r in range(4)}
    assert aug.counts == {k: 4 * v for k, v in plain.counts.items()}


def test_image_class_from_labels():
    labels = np.zeros((20, 20), np.uint8)
    labels[:5] = 1
    labels[5:12] = 2
    labels[12:] = 255  # ignored; matrix (0) never wins
    assert image_class_from_labels(labels, CLASSES) == "B"
    assert image_class_from_labels(np.zeros((4, 4), np.uint8), CLASSES) == "bg"


def _write_fixture(tmp_path, h=64, w=80, rgb=False):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    labels = rng.integers(0, 3, (h, w), dtype=np.uint8)
    labels[:3, :3] = 255
    ipath, lpath = tmp_path / f"img{int(rgb)}.tif", tmp_path / f"lab{int(rgb)}.tif"
    tifffile.imwrite(ipath, image)  # uncompressed: memory-mappable
    tifffile.imwrite(lpath, labels)
    return image, labels, ipath, lpath


def test_build_image_table_and_cli(tmp_path):
    _, labels, ipath, lpath = _write_fixture(tmp_path)
    table = build_image_table(["s1", "s2"], [str(ipath)] * 2, [str(lpath)] * 2, ["A", ""],
                              CLASSES)
    assert table["height"].tolist() == [64, 64] and table["width"].tolist() == [80, 80]
    assert table["class"].tolist() == ["A", image_class_from_labels(labels, CLASSES)]
    from mvfcnn.cli import main

    out, summary = tmp_path / "tiles.csv", tmp_path / "tiles.json"
    rc = main(["tile-index", "--samples", "s1", "s2", "--images", str(ipath), str(ipath),
               "--labels", str(lpath), str(lpath), "--classes", "A", "B",
               "--classes-json", json.dumps(CLASSES.to_dict()),
               "--params-json", json.dumps({"size": 32, "stride": 16, "balance_tolerance": 0.05}),
               "--balanced", "false", "--augment", "true", "--out", str(out),
               "--out-summary", str(summary)])
    assert rc == 0
    tiles = pd.read_csv(out)
    assert list(tiles.columns) == TILE_INDEX_COLUMNS
    assert len(tiles) == 2 * 4 * count_windows(64, 80, 32, 16)  # 2 images x 4 rot x 3*4
    assert json.loads(summary.read_text())["classes"]["A"]["stride"] == 16
    with pytest.raises(InputError, match="unknown class"):
        build_image_table(["s"], [str(ipath)], [str(lpath)], ["nope"], CLASSES)


@pytest.mark.parametrize("rgb", [False, True])
def test_dataset_rotation_and_memmap(tmp_path, rgb):
    image, labels, ipath, lpath = _write_fixture(tmp_path, rgb=rgb)
    rows = [{"sample": "s", "y": 8, "x": 16, "h": 32, "w": 32, "rot": r, "class": "A",
             "image": str(ipath), "labels": str(lpath)} for r in range(4)]
    data = TileDataset(pd.DataFrame(rows))
    img0, lab0 = data[0]
    assert img0.dtype.is_floating_point is False and img0.dtype.itemsize == 1
    assert img0.shape == ((3, 32, 32) if rgb else (1, 32, 32)) and lab0.shape == (32, 32)
    expect = image[8:40, 16:48]
    chw = expect.transpose(2, 0, 1) if rgb else expect[None]
    np.testing.assert_array_equal(img0.numpy(), chw)
    np.testing.assert_array_equal(lab0.numpy(), labels[8:40, 16:48])
    for r in (1, 2, 3):
        img, lab = data[r]
        hwc = np.rot90(expect, k=r, axes=(0, 1))
        np.testing.assert_array_equal(img.numpy(), hwc.transpose(2, 0, 1) if rgb else hwc[None])
        np.testing.assert_array_equal(lab.numpy(), np.rot90(lab0.numpy(), k=r))
        assert lab.dtype.itemsize == 8 and img.is_contiguous() and lab.is_contiguous()
    # opened once, memory-mapped, and the returned tensors do not alias the map
    assert all(isinstance(a, np.memmap) for a in data._cache.values())
    assert len(data._cache) == 2
    img0[:] = 0
    np.testing.assert_array_equal(data[0][0].numpy(), chw)
    import pickle

    assert pickle.loads(pickle.dumps(data))._cache == {}


def test_dataset_pads_small_windows(tmp_path):
    _, labels, ipath, lpath = _write_fixture(tmp_path, h=20, w=40)
    tiles = tile_index(_images([("s", 20, 40, "A")]).assign(image=str(ipath), labels=str(lpath)),
                       size=32, stride=16, balanced=False, augment=False).tiles
    img, lab = TileDataset(tiles, size=32)[0]
    assert img.shape == (1, 32, 32)
    assert (lab[20:] == 255).all() and (lab[:20].numpy() == labels[:, :32]).all()


def test_sample_order_deterministic_and_epochwise():
    a = sample_order(10, 7, 3, seed=5)
    assert a.shape == (7, 3) and a.dtype == np.int64
    np.testing.assert_array_equal(a, sample_order(10, 7, 3, seed=5))
    assert not np.array_equal(a, sample_order(10, 7, 3, seed=6))
    flat = a.ravel()
    assert sorted(flat[:10]) == list(range(10))  # epoch 1 is a permutation
    assert sorted(flat[10:20]) == list(range(10))  # and so is epoch 2
    # a longer run shares the prefix: a resumed/extended run takes the same batches
    np.testing.assert_array_equal(sample_order(10, 12, 3, seed=5)[:7], a)
