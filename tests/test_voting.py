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


# --- inference.object_offsets: offsets on the second-phase vote --------------------------------

# three objects in rows (ids 1, 2, 3; column 3 is matrix, id 0), true classes beta, alpha, gamma;
# every pixel of an object has the same softmax over ferrite, alpha, beta, gamma
OFFSET_IDS = np.array([[1, 1, 1, 0], [2, 2, 2, 0], [3, 3, 3, 0]], dtype=np.uint32)
OFFSET_SOFTMAX = {1: [0.05, 0.5, 0.4, 0.05],   # beta, but alpha wins by log(0.5/0.4) = 0.22
                  2: [0.25, 0.5, 0.2, 0.05],   # alpha; beta would need +0.92 to win
                  3: [0.05, 0.6, 0.05, 0.3],   # gamma, but alpha wins by log(0.6/0.3) = 0.69
                  0: [0.9, 0.04, 0.03, 0.03]}
OFFSET_OBJECTS = pd.DataFrame({"object_id": [1, 2, 3], "true_class": [2, 1, 3]})


def _offset_probs() -> np.ndarray:
    rows = [OFFSET_SOFTMAX[int(i)] for i in OFFSET_IDS.reshape(-1)]
    return np.asarray(rows, np.float16).T.reshape(4, *OFFSET_IDS.shape)


@pytest.mark.parametrize("objective", ["accuracy", "balanced"])
def test_object_offsets_flip_exactly_the_objects_they_should(objective) -> None:
    from mvfcnn.evaluation.voting import (
        fit_object_offsets,
        object_evidence,
        object_scores,
        offset_votes,
        second_phase_map,
    )

    probs = _offset_probs()
    evidence = [object_evidence(probs, OFFSET_IDS, OFFSET_OBJECTS)]
    true, voted = offset_votes(evidence, np.zeros(4))
    assert voted.tolist() == [1, 1, 1]  # alpha everywhere: 1 of 3 right
    assert object_scores(true, voted, 4) == pytest.approx((1 / 3, 1 / 3))
    offsets = fit_object_offsets(evidence, objective, 4)
    # the smallest grid values that flip beta (> 0.22, < 0.92 or alpha flips too) and gamma
    # (> 0.69); matrix and alpha stay at 0; one row: no size bins
    assert offsets.tolist() == [[0.0, 0.0, 0.5, 1.0]]
    assert offset_votes(evidence, offsets)[1].tolist() == [2, 1, 3]
    # the map the vote rule votes on: matrix pixels too take their best non-matrix class
    assert second_phase_map(probs).tolist() == [[1] * 4] * 3
    assert second_phase_map(probs, offsets[0])[:, :3].tolist() == [[2] * 3, [1] * 3, [3] * 3]


def test_object_offsets_stay_zero_when_nothing_beats_them_and_reject_bad_input() -> None:
    from mvfcnn.evaluation.voting import fit_object_offsets, object_evidence, second_phase_map

    objects = OFFSET_OBJECTS.assign(true_class=[1, 1, 1])  # alpha everywhere is already right
    evidence = [object_evidence(_offset_probs(), OFFSET_IDS, objects)]
    assert fit_object_offsets(evidence, "accuracy", 4).tolist() == [[0.0] * 4]
    with pytest.raises(InputError, match="objective"):
        fit_object_offsets(evidence, "recall", 4)
    with pytest.raises(InputError, match="true_class"):
        object_evidence(_offset_probs(), OFFSET_IDS, OFFSET_OBJECTS[["object_id"]])
    with pytest.raises(InputError, match="differ in size"):
        object_evidence(_offset_probs(), OFFSET_IDS[:, :3], OFFSET_OBJECTS)
    with pytest.raises(InputError, match="3 object offsets for 4 classes"):
        second_phase_map(_offset_probs(), np.zeros(3))


# three alpha objects that beta wins narrowly (log(0.5/0.4) = 0.22), one beta object that beta
# wins more narrowly still (log(0.5/0.45) = 0.11), one gamma object alpha wins by 0.69
FLOOR_SOFTMAX = {1: [0.05, 0.4, 0.5, 0.05], 2: [0.05, 0.45, 0.5, 0.0],
                 3: [0.05, 0.6, 0.05, 0.3], 0: [0.9, 0.04, 0.03, 0.03]}
FLOOR_OBJECT_SOFTMAX = [1, 1, 1, 2, 3]  # object id (row) -> softmax row
FLOOR_TRUE = [1, 1, 1, 2, 3]


def _floor_evidence() -> list:
    from mvfcnn.evaluation.voting import object_evidence

    ids = np.repeat(np.arange(1, 6, dtype=np.uint32)[:, None], 3, axis=1)
    rows = [FLOOR_SOFTMAX[FLOOR_OBJECT_SOFTMAX[int(i) - 1]] for i in ids.reshape(-1)]
    probs = np.asarray(rows, np.float16).T.reshape(4, *ids.shape)
    objects = pd.DataFrame({"object_id": range(1, 6), "true_class": FLOOR_TRUE})
    return [object_evidence(probs, ids, objects)]


def test_recall_floor_blocks_the_flip_that_trades_a_class_away() -> None:
    from mvfcnn.evaluation.voting import class_recalls, fit_object_offsets, offset_votes

    evidence = _floor_evidence()
    true, voted = offset_votes(evidence, np.zeros(4))
    assert voted.tolist() == [2, 2, 2, 2, 1]
    assert class_recalls(true, voted, 4).tolist() == [0.0, 1.0, 0.0]
    # accuracy: beta -0.5 turns the three alpha objects right and the beta object wrong
    accuracy = fit_object_offsets(evidence, "accuracy", 4)
    assert accuracy.tolist() == [[0.0, 0.0, -0.5, 1.0]]
    assert offset_votes(evidence, accuracy)[1].tolist() == [1, 1, 1, 1, 3]
    # the floor keeps beta's recall (1.0 - 0.1): only gamma's free flip is left
    floored = fit_object_offsets(evidence, "accuracy_recall_floor", 4, recall_slack=0.1)
    assert floored.tolist() == [[0.0, 0.0, 0.0, 1.0]]
    assert offset_votes(evidence, floored)[1].tolist() == [2, 2, 2, 2, 3]
    # a slack of 1 allows any loss: accuracy's offsets
    assert fit_object_offsets(evidence, "accuracy_recall_floor", 4,
                              recall_slack=1.0).tolist() == accuracy.tolist()
    for slack in (None, -0.1, 1.5):
        with pytest.raises(InputError, match="recall slack"):
            fit_object_offsets(evidence, "accuracy_recall_floor", 4, recall_slack=slack)


# two objects with the same softmax (alpha wins by log(0.5/0.4) = 0.22): a small beta object
# (id 1, 2 px) and a large alpha one (id 2, 6 px); one set of offsets can get only one right
SIZE_IDS = np.array([[1, 1, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2]], dtype=np.uint32)
SIZE_OBJECTS = pd.DataFrame({"object_id": [1, 2], "true_class": [2, 1]})


def _size_probs() -> np.ndarray:
    probs = np.empty((4, *SIZE_IDS.shape), np.float16)
    probs[:] = np.array([0.9, 0.04, 0.03, 0.03], np.float16)[:, None, None]
    probs[:, SIZE_IDS > 0] = np.array([0.05, 0.5, 0.4, 0.05], np.float16)[:, None]
    return probs


def test_size_bins_give_small_and_large_objects_their_own_offsets() -> None:
    from mvfcnn.evaluation.voting import (
        fit_object_offsets,
        object_evidence,
        object_second_phase_map,
        offset_votes,
        size_bins,
    )

    evidence = [object_evidence(_size_probs(), SIZE_IDS, SIZE_OBJECTS)]
    assert evidence[0].area.tolist() == [2, 6]
    assert size_bins(np.array([1, 3, 4, 10, 30]), [4, 30]).tolist() == [0, 0, 1, 1, 2]
    # one row: beta +0.5 would trade the large object for the small one; ties keep 0
    assert fit_object_offsets(evidence, "accuracy", 4).tolist() == [[0.0] * 4]
    # objects under 4 px get their own row: beta +0.5 there, nothing for the large one
    offsets = fit_object_offsets(evidence, "accuracy", 4, size_edges=[4])
    assert offsets.tolist() == [[0.0, 0.0, 0.5, 0.0], [0.0] * 4]
    assert offset_votes(evidence, offsets, [4])[1].tolist() == [2, 1]
    voted_map = object_second_phase_map(_size_probs(), SIZE_IDS, offsets, [4])
    assert voted_map[SIZE_IDS == 1].tolist() == [2, 2] and (voted_map[SIZE_IDS == 2] == 1).all()


def test_size_edges_and_offset_files_reject_bad_input(tmp_path) -> None:
    from mvfcnn.evaluation.voting import (
        check_size_edges,
        offset_table,
        read_object_offsets,
        write_object_offsets,
    )

    for edges in ([30, 30], [300, 30], [0, 30]):
        with pytest.raises(InputError, match="strictly ascending"):
            check_size_edges(edges)
    with pytest.raises(InputError, match="for 3 size bin"):
        offset_table(np.zeros((2, 4)), [30, 300])
    path = tmp_path / "offsets.json"
    names = list(CLASSES.names)
    write_object_offsets(path, np.ones((2, 4)), objective="accuracy", recall_slack=None,
                         size_edges=[30], class_names=names, extra={"fit_objects": 2})
    table, edges = read_object_offsets(path, names)
    assert table.shape == (2, 4) and edges == [30.0]
    with pytest.raises(InputError, match="object offsets are for classes"):
        read_object_offsets(path, [*names[:3], "delta"])
    # a file of one row of offsets and no size_edges (before size bins) still reads
    path.write_text(json.dumps({"classes": names, "offsets": [0.0, 0.0, 0.5, 1.0]}))
    table, edges = read_object_offsets(path, names)
    assert table.tolist() == [[0.0, 0.0, 0.5, 1.0]] and edges == []
    path.write_text(json.dumps({"classes": names, "offsets": [[0.0] * 4], "size_edges": [9]}))
    with pytest.raises(InputError, match="not an object-offsets file"):
        read_object_offsets(path, names)


def test_cli_fits_object_offsets_and_votes_with_them(tmp_path) -> None:
    import tifffile

    from mvfcnn.cli import main
    from mvfcnn.core.io import write_probabilities

    write_probabilities(tmp_path / "probs.tif", _offset_probs())  # as predict --out-probs
    tifffile.imwrite(tmp_path / "ids.tif", OFFSET_IDS)
    OFFSET_OBJECTS.to_csv(tmp_path / "objects.csv", index=False)
    classes = json.dumps(CLASSES.to_dict())
    offsets = tmp_path / "object_offsets.json"
    fit = ["fit-object-offsets", "--classes-json", classes, "--samples", "s1", "--probs",
           str(tmp_path / "probs.tif"), "--objects-ids", str(tmp_path / "ids.tif"),
           "--objects", str(tmp_path / "objects.csv"), "--objective", "balanced",
           "--out", str(offsets)]
    assert main(fit) == 0
    record = json.loads(offsets.read_text())
    assert record["offsets"] == [[0.0, 0.0, 0.5, 1.0]] and record["size_edges"] == []
    assert record["classes"] == list(CLASSES.names) and record["fit_objects"] == 3
    assert record["recall_slack"] is None  # only accuracy_recall_floor has one
    assert record["fit_accuracy"] == pytest.approx([1 / 3, 1.0], abs=1e-6)
    vote_argv = ["vote", "--probs", str(tmp_path / "probs.tif"), "--objects-ids",
                 str(tmp_path / "ids.tif"), "--objects", str(tmp_path / "objects.csv"),
                 "--classes-json", classes, "--sample", "s1", "--out", str(tmp_path / "v.csv")]
    assert main([*vote_argv, "--object-offsets", str(offsets)]) == 0
    assert pd.read_csv(tmp_path / "v.csv")["pred_class"].tolist() == [2, 1, 3]
    assert main(vote_argv) == 0  # the plain second-phase vote
    assert pd.read_csv(tmp_path / "v.csv")["pred_class"].tolist() == [1, 1, 1]
    assert main([*fit[:4], "s1", "s2", *fit[5:]]) == 1  # one entry per sample: a clear error
    # size bins on the command line reach the file and the vote
    write_probabilities(tmp_path / "size_probs.tif", _size_probs())
    tifffile.imwrite(tmp_path / "size_ids.tif", SIZE_IDS)
    SIZE_OBJECTS.to_csv(tmp_path / "size_objects.csv", index=False)
    sized = tmp_path / "sized.json"
    assert main(["fit-object-offsets", "--classes-json", classes, "--samples", "s2", "--probs",
                 str(tmp_path / "size_probs.tif"), "--objects-ids", str(tmp_path / "size_ids.tif"),
                 "--objects", str(tmp_path / "size_objects.csv"), "--objective", "accuracy",
                 "--size-edges", "4", "--out", str(sized)]) == 0
    assert json.loads(sized.read_text())["size_edges"] == [4.0]
    assert main(["vote", "--probs", str(tmp_path / "size_probs.tif"), "--objects-ids",
                 str(tmp_path / "size_ids.tif"), "--objects", str(tmp_path / "size_objects.csv"),
                 "--classes-json", classes, "--sample", "s2", "--out", str(tmp_path / "s.csv"),
                 "--object-offsets", str(sized)]) == 0
    assert pd.read_csv(tmp_path / "s.csv")["pred_class"].tolist() == [2, 1]
    floor = [*fit[:-3], "accuracy_recall_floor", "--out", str(offsets)]
    assert main(floor) == 1  # the floor objective without its slack: a clear error
    assert main([*floor, "--recall-slack", "0.1"]) == 0  # here no class loses recall
    record = json.loads(offsets.read_text())
    assert record["offsets"] == [[0.0, 0.0, 0.5, 1.0]] and record["recall_slack"] == 0.1
    other = dict(record, classes=["ferrite", "alpha", "beta", "delta"])
    offsets.write_text(json.dumps(other))
    assert main([*vote_argv, "--object-offsets", str(offsets)]) == 1  # other classes


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_probabilities_round_trip_for_any_class_count(tmp_path, k) -> None:
    """K of 3 or 4 must not turn into colour samples on the way (tifffile's RGB guess)."""
    from mvfcnn.core.io import read_probabilities, write_probabilities

    rng = np.random.default_rng(k)
    probs = rng.dirichlet(np.ones(k), size=(7, 9)).transpose(2, 0, 1).astype(np.float16)
    write_probabilities(tmp_path / "p.tif", probs)
    back = read_probabilities(tmp_path / "p.tif", num_classes=k, sample="s")
    assert back.shape == (k, 7, 9) and back.dtype == np.float16
    assert np.array_equal(back, probs)
    with pytest.raises(InputError, match=rf"p\.tif.: expected probabilities of {k + 1} classes"):
        read_probabilities(tmp_path / "p.tif", num_classes=k + 1, sample="s")
    with pytest.raises(InputError, match="file not found"):
        read_probabilities(tmp_path / "none.tif", num_classes=k)
