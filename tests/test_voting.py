"""Max-voting: exact classes, shares, ties, not-segmented objects, table alignment, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.evaluation.voting import VOTE_COLUMNS, vote, vote_table

CLASSES = ClassSet.from_config({"classes": [
    {"index": 0, "name": "ferrite", "color": "#000000"},
    {"index": 1, "name": "alpha", "color": "#ff0000"},
    {"index": 2, "name": "beta", "color": "#00ff00"},
    {"index": 3, "name": "gamma", "color": "#0000ff"},
]})

# object ids and predicted classes, pixel for pixel
IDS = np.array([
    [1, 1, 1, 1, 0, 6],
    [2, 2, 2, 2, 0, 6],
    [3, 3, 0, 5, 0, 6],
    [7, 7, 7, 7, 7, 6],
], dtype=np.uint32)
PRED = np.array([
    [1, 1, 2, 0, 3, 3],
    [2, 3, 2, 3, 3, 0],
    [0, 0, 1, 3, 1, 0],
    [0, 0, 0, 0, 2, 0],
], dtype=np.uint8)
# object 1: 1,1,2,0 -> alpha (2 of 3 non-matrix pixels), share 2/3
# object 2: 2,3,2,3 -> tie beta/gamma -> lowest index: beta, share 2/4
# object 3: 0,0     -> not segmented (-1), share 0
# object 5: 3       -> gamma, share 1
# object 6: 3,0,0,0 -> gamma: matrix pixels do not vote, share 1/1
# object 7: 0,0,0,0,2 -> beta, share 1
# id 4 does not occur; background (id 0) predictions are ignored


def test_vote_exact() -> None:
    votes = vote(PRED, IDS, 4, classes=CLASSES)
    assert list(votes.columns) == VOTE_COLUMNS
    assert votes["object_id"].tolist() == [1, 2, 3, 5, 6, 7]
    assert votes["pred_class"].tolist() == [1, 2, -1, 3, 3, 2]
    assert votes["pred_class_name"].tolist() == ["alpha", "beta", "not_segmented", "gamma",
                                                 "gamma", "beta"]
    np.testing.assert_allclose(votes["vote_share"], [2 / 3, 0.5, 0.0, 1.0, 1.0, 1.0])
    assert votes["n_pixels"].tolist() == [4, 4, 2, 1, 4, 5]
    assert votes["n_foreground"].tolist() == [3, 4, 0, 1, 1, 1]


def test_vote_without_names_and_empty_image() -> None:
    votes = vote(PRED, IDS, 4)
    assert "pred_class_name" not in votes.columns
    empty = vote(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint32), 4, classes=CLASSES)
    assert len(empty) == 0 and list(empty.columns) == VOTE_COLUMNS


def test_vote_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="shape"):
        vote(PRED[:, :5], IDS, 4)
    bad = PRED.copy()
    bad[0, 0] = 4
    with pytest.raises(InputError, match="class 4"):
        vote(bad, IDS, 4)


def test_vote_table_follows_objects_table() -> None:
    objects = pd.DataFrame({"object_id": [7, 1, 2, 3, 4, 5, 6]})  # id 4 has no pixel
    votes = vote_table(PRED, IDS, objects, CLASSES, sample="s")
    assert list(votes.columns) == VOTE_COLUMNS
    assert votes["object_id"].tolist() == [7, 1, 2, 3, 4, 5, 6]
    assert votes["pred_class"].tolist() == [2, 1, 2, -1, -1, 3, 3]
    assert votes.loc[4, "pred_class_name"] == "not_segmented"
    assert votes.loc[4, ["n_pixels", "n_foreground", "vote_share"]].tolist() == [0, 0, 0.0]
    assert votes["pred_class"].dtype == np.int64 and votes["n_pixels"].dtype == np.int64
    with pytest.raises(InputError, match="missing from the objects table"):
        vote_table(PRED, IDS, pd.DataFrame({"object_id": [1, 2, 3]}), CLASSES, sample="s")


def test_vote_matches_per_object_reference_on_a_larger_image() -> None:
    rng = np.random.default_rng(0)
    k = 5
    ids = rng.integers(0, 800, (600, 500), dtype=np.uint32)
    pred = rng.integers(0, k, ids.shape, dtype=np.uint8)
    pred[ids == 17] = 0  # one object fully matrix
    votes = vote(pred, ids, k).set_index("object_id")
    order = np.argsort(ids, axis=None, kind="stable")
    flat_ids, flat_pred = ids.reshape(-1)[order], pred.reshape(-1)[order]
    bounds = np.searchsorted(flat_ids, np.arange(1, 801))
    bounds = np.append(bounds, flat_ids.size)
    for obj in (1, 17, 250, 799):
        hist = np.bincount(flat_pred[bounds[obj - 1]:bounds[obj]], minlength=k)
        row = votes.loc[obj]
        assert row["n_pixels"] == hist.sum() and row["n_foreground"] == hist[1:].sum()
        if hist[1:].sum() == 0:
            assert row["pred_class"] == -1 and row["vote_share"] == 0
        else:
            assert row["pred_class"] == 1 + int(np.argmax(hist[1:]))
            assert row["vote_share"] == pytest.approx(hist[1:].max() / hist[1:].sum())
    assert votes.loc[17, "pred_class"] == -1


def test_cli_vote(tmp_path) -> None:
    import tifffile

    from mvfcnn.cli import main

    tifffile.imwrite(tmp_path / "pred.tif", PRED)
    tifffile.imwrite(tmp_path / "ids.tif", IDS)
    pd.DataFrame({"object_id": [1, 2, 3, 4, 5, 6, 7], "true_class": [1, 2, 3, 1, 3, 3, 0]}).to_csv(
        tmp_path / "objects.csv", index=False)
    argv = ["vote", "--pred", str(tmp_path / "pred.tif"), "--objects-ids",
            str(tmp_path / "ids.tif"), "--objects", str(tmp_path / "objects.csv"),
            "--classes-json", json.dumps(CLASSES.to_dict()), "--sample", "s1",
            "--out", str(tmp_path / "votes" / "s1.csv")]
    assert main(argv) == 0
    votes = pd.read_csv(tmp_path / "votes" / "s1.csv")
    assert list(votes.columns) == VOTE_COLUMNS
    assert votes["pred_class"].tolist() == [1, 2, -1, -1, 3, 3, 2]
    tifffile.imwrite(tmp_path / "ids.tif", IDS[:, :5])
    assert main(argv) == 1  # size mismatch: one-line error, exit 1
