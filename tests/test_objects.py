"""Objects table against hand-made masks and labels with exact expected values; bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import write_image
from mvfcnn.objects.cli import objects as cli
from mvfcnn.objects.components import COLUMNS, check_labels, find_objects, object_table

IGN = 255


@pytest.fixture()
def uhcs() -> ClassSet:
    """A non-steel class set: nothing may depend on the default class names."""
    return ClassSet.from_config({"classes": [
        {"index": 0, "name": "matrix", "color": "#000000"},
        {"index": 1, "name": "network", "color": "#ff0000"},
        {"index": 2, "name": "spheroidite", "color": "#00ff00"},
        {"index": 3, "name": "widmanstatten", "color": "#0000ff"},
        {"index": 4, "name": "pearlite", "color": "#ffff00"}], "ignore_index": IGN})


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """Five objects (ids in raster order of their first pixel) and their labels.

    A (id 1): 2x3 block, labels 4x class 2, 1x class 1, 1x ignore -> class 2, share 4/5
    B (id 2): a diagonal of 3 px (one object only with 8-connectivity) -> 2 matrix, 1 class 3
    E (id 3): 2 px, one class 2 and one class 1 -> tie -> lowest index 1, share 1/2
    C (id 4): 5 px, all ignore -> unknown (-1), share 0
    D (id 5): 1 px of class 4
    """
    mask = np.zeros((8, 10), np.uint8)
    labels = np.zeros((8, 10), np.uint8)
    mask[1:3, 1:4] = 1
    labels[1:3, 1:4] = [[2, 2, 2], [2, 1, IGN]]
    for y, x, lab in [(1, 6, 3), (2, 7, 0), (3, 8, 0)]:
        mask[y, x], labels[y, x] = 1, lab
    mask[4, 3:5] = 1
    labels[4, 3:5] = [2, 1]
    mask[5:7, 0:2] = 1
    mask[7, 0] = 1
    labels[5:8, 0:2] = IGN
    mask[6, 8], labels[6, 8] = 1, 4
    labels[0, 9] = 3  # a labelled pixel outside every object: irrelevant
    return mask, labels


def test_find_objects_eight_connected_raster_order():
    mask, _ = hand_made()
    ids = find_objects(mask)
    assert ids.dtype == np.uint32 and ids.max() == 5
    assert ids[1, 1] == 1 and ids[1, 6] == ids[2, 7] == ids[3, 8] == 2
    assert ids[4, 3] == 3 and ids[5, 0] == ids[7, 0] == 4 and ids[6, 8] == 5
    assert np.array_equal(ids > 0, mask > 0)


def test_object_table_exact_values(uhcs):
    mask, labels = hand_made()
    table = object_table(find_objects(mask), labels, uhcs)
    assert list(table.columns) == COLUMNS
    expected = pd.DataFrame({
        "object_id": [1, 2, 3, 4, 5],
        "bbox_y0": [1, 1, 4, 5, 6], "bbox_x0": [1, 6, 3, 0, 8],
        "bbox_y1": [3, 4, 5, 8, 7], "bbox_x1": [4, 9, 5, 2, 9],
        "area": [6, 3, 2, 5, 1],
        "centroid_y": [1.5, 2.0, 4.0, 5.8, 6.0], "centroid_x": [2.0, 7.0, 3.5, 0.4, 8.0],
        "true_class": [2, 0, 1, -1, 4],
        "true_class_name": ["spheroidite", "matrix", "network", "unknown", "pearlite"],
        "true_share": [0.8, round(2 / 3, 6), 0.5, 0.0, 1.0],
    })
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False)


def test_image_class_and_no_labels(uhcs):
    mask, labels = hand_made()
    ids = find_objects(mask)
    # binary labels (0 / 1 / ignore): the phase majority takes the image's class, matrix stays 0
    binary = np.where(labels == IGN, IGN, labels > 0).astype(np.uint8)
    table = object_table(ids, binary, uhcs, image_class="pearlite")
    assert table["true_class"].tolist() == [4, 0, 4, -1, 4]
    assert table["true_class_name"].tolist() == ["pearlite", "matrix", "pearlite", "unknown",
                                                 "pearlite"]
    assert table["true_share"].tolist() == [1.0, round(2 / 3, 6), 1.0, 0.0, 1.0]
    # multi-class labels are more precise than the image-level class: they decide
    multi = object_table(ids, labels, uhcs, image_class="pearlite")
    assert multi["true_class"].tolist() == [2, 0, 1, -1, 4]
    # no labels: every object gets the image's class
    table = object_table(ids, None, uhcs, image_class="network")
    assert (table["true_class"] == 1).all() and (table["true_class_name"] == "network").all()
    assert (table["true_share"] == 1.0).all()
    table = object_table(ids, None, uhcs)
    assert (table["true_class"] == -1).all() and (table["true_class_name"] == "unknown").all()
    assert table["area"].tolist() == [6, 3, 2, 5, 1]


def test_empty_mask_gives_empty_table(uhcs):
    table = object_table(find_objects(np.zeros((4, 5), bool)), np.zeros((4, 5), np.uint8), uhcs)
    assert list(table.columns) == COLUMNS and len(table) == 0


def test_check_labels(uhcs):
    _, labels = hand_made()
    check_labels(labels, uhcs, shape=labels.shape)
    labels[0, 0] = 7
    labels[0, 1] = 9
    with pytest.raises(InputError, match=r"\[7, 9\]"):
        check_labels(labels, uhcs, sample="s", path="l.tif")


# --------------------------------------------------------------------------- CLI
def _files(tmp_path: Path, mask: np.ndarray, labels: np.ndarray | None) -> list[str]:
    write_image(tmp_path / "mask.tif", mask)
    argv = ["--sample", "s7", "--mask", str(tmp_path / "mask.tif"),
            "--out-table", str(tmp_path / "out" / "s7.csv"),
            "--out-ids", str(tmp_path / "out" / "s7.tif")]
    if labels is not None:
        write_image(tmp_path / "labels.tif", labels)
        argv += ["--labels", str(tmp_path / "labels.tif")]
    return argv


def test_cli_writes_table_and_ids(tmp_path, uhcs):
    import tifffile

    mask, labels = hand_made()
    argv = _files(tmp_path, mask, labels) + ["--classes-json", json.dumps(uhcs.to_dict())]
    assert cli(argv) == 0
    table = pd.read_csv(tmp_path / "out" / "s7.csv")
    assert list(table.columns) == COLUMNS
    assert table["true_class"].tolist() == [2, 0, 1, -1, 4]
    ids = tifffile.imread(tmp_path / "out" / "s7.tif")
    assert ids.dtype == np.uint32 and np.array_equal(ids, find_objects(mask))
    no_labels = argv[:argv.index("--labels")] + argv[argv.index("--labels") + 2:]
    assert cli(no_labels + ["--image-class", "network"]) == 0
    assert (pd.read_csv(tmp_path / "out" / "s7.csv")["true_class_name"] == "network").all()


def _assert_clean_failure(tmp_path: Path, argv: list[str], *fragments: str) -> None:
    with pytest.raises(InputError) as info:
        cli(argv)
    for fragment in fragments:
        assert fragment in str(info.value)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_cli_bad_inputs(tmp_path, uhcs):
    mask, labels = hand_made()
    cj = ["--classes-json", json.dumps(uhcs.to_dict())]
    argv = _files(tmp_path, mask, labels) + cj
    bad = labels.copy()
    bad[0, 0] = 17
    write_image(tmp_path / "labels.tif", bad)
    _assert_clean_failure(tmp_path, argv, "'s7'", "labels.tif", "[17]")
    write_image(tmp_path / "labels.tif", np.zeros((8, 11), np.uint8))
    _assert_clean_failure(tmp_path, argv, "'s7'", "labels.tif", "8x11", "8x10")
    (tmp_path / "labels.tif").write_bytes(b"\x00garbage, not an image" * 20)
    _assert_clean_failure(tmp_path, argv, "'s7'", "labels.tif", "cannot read")
    (tmp_path / "mask.tif").unlink()
    _assert_clean_failure(tmp_path, argv, "'s7'", "mask.tif", "not found")
    argv = _files(tmp_path, mask, None) + cj
    _assert_clean_failure(tmp_path, argv + ["--image-class", "bogus"], "'s7'", "bogus")


def test_objects_from_labels_per_class_or_as_one_second_phase():
    """Two touching objects of different classes: two pure objects per class, one object (of
    the majority class) when cut as a binary second-phase mask would cut them; min area drops
    small components either way."""
    from mvfcnn.objects.components import label_objects

    classes = ClassSet((0, 1, 2), ("matrix", "a", "b"), ("#000000", "#ff0000", "#00ff00"))
    labels = np.zeros((6, 8), np.uint8)
    labels[1:4, 1:4] = 1          # 9 px of a
    labels[1:4, 4:6] = 2          # 6 px of b, touching a
    labels[5, 7] = 2              # 1 px speckle
    per_class = label_objects(labels, classes, min_area=2)
    assert sorted(np.bincount(per_class.ravel())[1:].tolist()) == [6, 9]
    assert per_class[5, 7] == 0
    joined = label_objects(labels, classes, min_area=2, mode="second_phase")
    assert np.bincount(joined.ravel())[1:].tolist() == [15]
    table = object_table(joined, labels, classes)
    assert table["true_class"].tolist() == [1] and table["true_share"].iloc[0] == pytest.approx(
        9 / 15)
    assert label_objects(labels, classes, mode="second_phase")[5, 7] == 2  # no min area: kept
    with pytest.raises(ValueError, match="mode"):
        label_objects(labels, classes, mode="blobs")
