"""Config schema, class set and sample-sheet checks: bad input must fail with a clear message."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from mvfcnn.core.config import ClassSet, check_sample_sheet, load_sample_sheet
from mvfcnn.core.errors import InputError

SCHEMA = "workflow/schemas/config.schema.yaml"


def test_default_config_validates_and_fills_defaults(repo_root, default_config):
    config = copy.deepcopy(default_config)
    del config["masking"]
    validate(config, str(repo_root / SCHEMA))
    assert config["masking"]["min_object_area"] == 80
    assert config["masking"]["threshold"] is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["classes"][1].update(color="red"),
        lambda c: c.update(seed=-1),
        lambda c: c["masking"].update(threshold=1.5),
        lambda c: c["registration"].update(model="projective"),
        lambda c: c.pop("classes"),
    ],
)
def test_bad_config_fails_schema(repo_root, default_config, mutate):
    config = copy.deepcopy(default_config)
    mutate(config)
    with pytest.raises(WorkflowError):
        validate(config, str(repo_root / SCHEMA))


def test_classes_from_config(default_config):
    classes = ClassSet.from_config(default_config)
    assert classes.names == ("matrix", "martensite", "tempered_martensite", "bainite", "pearlite")
    assert classes.foreground == (1, 2, 3, 4)
    assert classes.rgb()[1] == (255, 0, 0)
    assert classes.rgb()[4] == (255, 255, 0)
    assert classes.index_of("bainite") == 3
    with pytest.raises(InputError, match="unknown class 'ferrite'"):
        classes.index_of("ferrite")


def test_class_indices_must_be_contiguous(default_config):
    config = copy.deepcopy(default_config)
    config["classes"][2]["index"] = 7
    with pytest.raises(InputError, match="without gaps"):
        ClassSet.from_config(config)


def _sheet(**overrides):
    rows = [
        {"sample": "a", "split": "train", "sem": "a.tif", "lom": "a_lom.tif", "labels": "a_l.tif"},
        {"sample": "b", "split": "test", "sem": "b.tif", "mask": "b_m.tif", "labels": "b_l.tif",
         "class": "pearlite"},
        {"sample": "c", "split": "predict", "sem": "c.tif", "lom": "c_lom.tif"},
    ]
    for key, value in overrides.items():
        index, column = key.split("__")
        rows[int(index)][column] = value
    return pd.DataFrame(rows)


def test_unlabelled_rows_need_an_image_only_and_join_no_fold(classes):
    """Split `unlabelled` (issue 22): a micrograph without labels, LOM or mask, for the SSL
    pretraining; it is neither a training nor a test sample of any fold."""
    from mvfcnn.core.config import fold_samples

    sheet = _sheet(**{"2__split": "unlabelled", "2__lom": ""})
    frame = check_sample_sheet(sheet, classes=classes)
    assert frame.loc["c", "split"] == "unlabelled"
    assert fold_samples(frame, None, "train") == ["a"]
    assert fold_samples(frame, None, "test") == ["b"]
    frame.loc["b", "fold"], frame.loc["a", "split"], frame.loc["a", "fold"] = "1", "test", "2"
    assert fold_samples(frame, "1", "train") == ["a"] and fold_samples(frame, "2", "train") == ["b"]


def test_good_sheet(classes):
    frame = check_sample_sheet(_sheet(), classes=classes)
    assert list(frame.index) == ["a", "b", "c"]
    assert frame.loc["c", "labels"] == ""


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"1__sample": "a"}, "duplicate sample id"),
        ({"0__split": "validation"}, "unknown split 'validation'"),
        ({"1__class": "ferrite"}, "unknown class 'ferrite'"),
        ({"0__labels": ""}, "needs a 'labels' image"),
        ({"2__lom": ""}, "needs a 'lom' image, a 'mask' or 'labels'"),
        ({"2__split": "unlabelled", "2__labels": "c_l.tif"}, "belongs to split 'train'"),
        ({"2__split": "unlabelled", "2__fold": "1"}, "needs\nsplit 'test'|needs split 'test'"),
    ],
)
def test_bad_sheet(classes, overrides, message):
    with pytest.raises(InputError, match=message):
        check_sample_sheet(_sheet(**overrides), classes=classes, source="samples.tsv")


def test_sheet_file_errors(tmp_path, classes):
    with pytest.raises(InputError, match="sample sheet not found"):
        load_sample_sheet(tmp_path / "missing.tsv", classes)
    path = tmp_path / "samples.tsv"
    path.write_text("sample\tsem\nx\tx.tif\n")
    with pytest.raises(InputError, match=r"lacks required column\(s\) \['split'\]"):
        load_sample_sheet(path, classes)
