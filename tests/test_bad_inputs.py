"""Bad or unusual input, as a user's real data brings it (issue 15): every case either gives the
correct result or stops with exit status != 0 and one line naming the file/key and the fault,
with nothing written. One parametrised case per input; in-process (mvfcnn.cli.main, library
functions) except one Snakemake dry run for the config check.

The data stage on file names with spaces, #, ;, parentheses and quotes runs in
tests/test_workflow.py::test_data_stage_with_hostile_file_names (a real Snakemake run).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from mvfcnn.cli import main
from mvfcnn.core.config import ClassSet, check_config_keys, load_sample_sheet
from mvfcnn.core.errors import InputError
from mvfcnn.core.io import read_image, read_labels, write_image

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SIZE = 64


# ----------------------------------------------------------------------------------------------
# helpers: a tiny SEM / mask / labels triple and the two data-stage verbs run in-process


def _blobs() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 44) ** 2 + (xx - 40) ** 2 < 81)


def _sem() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(60 + 120 * _blobs() + rng.normal(0, 8, (SIZE, SIZE)), 0, 255).astype(np.uint8)


def _write(path: Path, array: np.ndarray) -> str:
    write_image(path, array)
    return str(path)


def _classes_json(default_config: dict) -> str:
    return json.dumps(ClassSet.from_config(default_config).to_dict())


def _run(verb: str, argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main([verb, *argv])
    return code, capsys.readouterr().err


def _mask_argv(tmp: Path, sem: str, *, mask: str | None = None, lom: str | None = None,
               labels: str | None = None, params: str = "{}") -> list[str]:
    argv = ["--sample", "s1", "--sem", sem, "--params-json", params]
    argv += ["--mask", mask] if mask else ["--lom", str(lom)]
    if labels:
        argv += ["--labels", labels]
    out = tmp / "out"
    return argv + ["--out-mask", str(out / "m.tif"), "--out-json", str(out / "m.json"),
                   "--out-masked-sem", str(out / "ms.tif")]


def _objects_argv(tmp: Path, mask: str, labels: str | None, classes: str) -> list[str]:
    argv = ["--sample", "s1", "--mask", mask, "--classes-json", classes]
    if labels:
        argv += ["--labels", labels]
    out = tmp / "out"
    return argv + ["--out-table", str(out / "o.csv"), "--out-ids", str(out / "o.tif")]


def _written(tmp: Path) -> list[str]:
    out = tmp / "out"
    return sorted(p.name for p in out.rglob("*")) if out.exists() else []


# ----------------------------------------------------------------------------------------------
# image files through `mvfcnn mask` / `mvfcnn objects`: (id, builder, verb, fragments)
# A builder gets (tmp_path, classes_json) and returns the argv; fragments must all appear in the
# one error line. Class numbers refer to issue 15.


def _float_sem_0_255(tmp, cj):  # class 4: float SEM holding 0..255
    sem = _write(tmp / "sem_f32.tif", _sem().astype(np.float32))
    return _mask_argv(tmp, sem, mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _nan_sem(tmp, cj):  # class 4: NaN pixels
    sem = _sem().astype(np.float32) / 255
    sem[3, 3] = np.nan
    return _mask_argv(tmp, _write(tmp / "sem_nan.tif", sem),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _inf_sem(tmp, cj):
    sem = _sem().astype(np.float64) / 255
    sem[0, 0] = np.inf
    return _mask_argv(tmp, _write(tmp / "sem_inf.tif", sem),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _negative_sem(tmp, cj):
    sem = _sem().astype(np.float32) / 255 - 0.5
    return _mask_argv(tmp, _write(tmp / "sem_neg.tif", sem),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _complex_sem(tmp, cj):
    path = tmp / "sem_complex.tif"
    tifffile.imwrite(path, _sem().astype(np.complex64))
    return _mask_argv(tmp, str(path), mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _empty_file(tmp, cj):
    (tmp / "empty.tif").write_bytes(b"")
    return _mask_argv(tmp, str(tmp / "empty.tif"),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _truncated_tiff(tmp, cj):
    good = Path(_write(tmp / "full.tif", _sem()))
    data = good.read_bytes()
    (tmp / "truncated.tif").write_bytes(data[: len(data) // 3])
    return _mask_argv(tmp, str(tmp / "truncated.tif"),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _not_an_image(tmp, cj):
    (tmp / "notes.png").write_text("this is text")
    return _mask_argv(tmp, str(tmp / "notes.png"),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _four_d(tmp, cj):
    path = tmp / "stack4d.tif"
    tifffile.imwrite(path, np.zeros((2, 3, SIZE, SIZE), np.uint8), photometric="minisblack")
    return _mask_argv(tmp, str(path), mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _missing_file(tmp, cj):
    return _mask_argv(tmp, str(tmp / "nowhere.tif"),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _directory(tmp, cj):
    (tmp / "folder.tif").mkdir()
    return _mask_argv(tmp, str(tmp / "folder.tif"),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)))


def _mask_other_size(tmp, cj):
    return _mask_argv(tmp, _write(tmp / "sem.tif", _sem()),
                      mask=_write(tmp / "small_mask.tif", np.ones((32, 40), np.uint8)))


def _empty_mask(tmp, cj):
    return _mask_argv(tmp, _write(tmp / "sem.tif", _sem()),
                      mask=_write(tmp / "zero_mask.tif", np.zeros((SIZE, SIZE), np.uint8)))


def _labels_rgb_differ(tmp, cj):  # class 7: a 3-channel label was reported as a size mismatch
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[_blobs()] = (255, 0, 0)
    return _mask_argv(tmp, _write(tmp / "sem.tif", _sem()),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)),
                      labels=_write(tmp / "labels_rgb.png", rgb))


def _labels_other_size(tmp, cj):
    return _mask_argv(tmp, _write(tmp / "sem.tif", _sem()),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)),
                      labels=_write(tmp / "labels_small.tif", np.zeros((32, 32), np.uint8)))


def _threshold_out_of_range(tmp, cj):
    return _mask_argv(tmp, _write(tmp / "sem.tif", _sem()),
                      mask=_write(tmp / "m.tif", _blobs().astype(np.uint8)),
                      params='{"threshold": 1.5}')


def _labels_value_too_big(tmp, cj):  # label values >= class count
    labels = _blobs().astype(np.uint8) * 7
    return _objects_argv(tmp, _write(tmp / "m.tif", _blobs().astype(np.uint8)),
                         _write(tmp / "labels7.tif", labels), cj)


def _labels_16bit_bad(tmp, cj):
    labels = _blobs().astype(np.uint16) * 300
    return _objects_argv(tmp, _write(tmp / "m.tif", _blobs().astype(np.uint8)),
                         _write(tmp / "labels16.tif", labels), cj)


def _labels_float(tmp, cj):
    labels = _blobs().astype(np.float32)
    return _objects_argv(tmp, _write(tmp / "m.tif", _blobs().astype(np.uint8)),
                         _write(tmp / "labels_float.tif", labels), cj)


def _labels_rgb_objects(tmp, cj):
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[_blobs()] = (1, 2, 1)
    return _objects_argv(tmp, _write(tmp / "m.tif", _blobs().astype(np.uint8)),
                         _write(tmp / "labels_rgb.tif", rgb), cj)


def _labels_other_size_objects(tmp, cj):
    return _objects_argv(tmp, _write(tmp / "m.tif", _blobs().astype(np.uint8)),
                         _write(tmp / "labels_small.tif", np.zeros((30, 30), np.uint8)), cj)


def _bad_classes_json(tmp, cj):
    return _objects_argv(tmp, _write(tmp / "m.tif", _blobs().astype(np.uint8)), None,
                         '{"classes": [{"index": 0, "name": "matrix"}]}')


FAILING = [
    ("float32-sem-0-255", _float_sem_0_255, "mask", ["sem_f32.tif", "span [", "0, 1"]),
    ("nan-pixel", _nan_sem, "mask", ["sem_nan.tif", "NaN"]),
    ("inf-pixel", _inf_sem, "mask", ["sem_inf.tif", "NaN or inf"]),
    ("negative-float-pixel", _negative_sem, "mask", ["sem_neg.tif", "outside the accepted"]),
    ("complex-pixel-type", _complex_sem, "mask", ["sem_complex.tif", "unsupported pixel type"]),
    ("empty-file", _empty_file, "mask", ["empty.tif", "cannot read image"]),
    ("truncated-tiff", _truncated_tiff, "mask", ["truncated.tif", "cannot read image"]),
    ("text-as-png", _not_an_image, "mask", ["notes.png", "cannot read image"]),
    ("4-d-image", _four_d, "mask", ["stack4d.tif", "expected a 2-D"]),
    ("missing-file", _missing_file, "mask", ["nowhere.tif", "file not found"]),
    ("directory-as-image", _directory, "mask", ["folder.tif", "is a directory"]),
    ("mask-of-another-size", _mask_other_size, "mask", ["small_mask.tif", "32x40", "64x64"]),
    ("empty-mask", _empty_mask, "mask", ["zero_mask.tif", "empty mask"]),
    ("labels-rgb-channels-differ", _labels_rgb_differ, "mask",
     ["labels_rgb.png", "3 channels that differ"]),
    ("labels-of-another-size", _labels_other_size, "mask", ["labels_small.tif", "32x32"]),
    ("threshold-out-of-range", _threshold_out_of_range, "mask", ["masking.threshold", "1.5"]),
    ("label-value-beyond-classes", _labels_value_too_big, "objects",
     ["labels7.tif", "label value(s) [7]"]),
    ("16-bit-labels-beyond-classes", _labels_16bit_bad, "objects",
     ["labels16.tif", "[300]"]),
    ("float-labels", _labels_float, "objects", ["labels_float.tif", "integer image"]),
    ("labels-rgb-channels-differ-objects", _labels_rgb_objects, "objects",
     ["labels_rgb.tif", "3 channels that differ"]),
    ("labels-of-another-size-objects", _labels_other_size_objects, "objects",
     ["labels_small.tif", "30x30"]),
    ("classes-json-without-colour", _bad_classes_json, "objects", ["--classes-json"]),
]


@pytest.mark.parametrize(("builder", "verb", "fragments"), [c[1:] for c in FAILING],
                         ids=[c[0] for c in FAILING])
def test_bad_image_input_fails_with_one_line(tmp_path, capsys, default_config,
                                            builder: Callable, verb: str,
                                            fragments: list[str]):
    argv = builder(tmp_path, _classes_json(default_config))
    code, err = _run(verb, argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith(f"mvfcnn {verb}: error: "), err
    assert "sample 's1'" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert _written(tmp_path) == [], "a failed job must not leave outputs"


# ----------------------------------------------------------------------------------------------
# legitimate unusual images: the correct result


def test_float_sem_in_unit_range_is_accepted(tmp_path, capsys):
    sem = _write(tmp_path / "sem.tif", _sem().astype(np.float32) / 255)
    code, err = _run("mask", _mask_argv(tmp_path, sem, mask=_write(
        tmp_path / "m.tif", _blobs().astype(np.uint8))), capsys)
    assert code == 0, err


def test_stated_float_range_is_rescaled(tmp_path):
    path = _write(tmp_path / "sem_f32.tif", _sem().astype(np.float32))
    image = read_image(path, value_range=(0, 255))
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    np.testing.assert_allclose(image, _sem() / 255, atol=1e-6)
    with pytest.raises(InputError, match="outside the accepted range"):
        read_image(path, value_range=(0, 100))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint32, np.int8])
def test_signed_and_wide_integer_micrographs_are_refused_unless_their_range_is_stated(
        tmp_path, capsys, dtype):
    """Issue 21 item 2: an int16 SEM holding -128..127 was read as flat grey (0 objects, exit 0);
    a uint32 holding 0..255000 from values near 0.006 of its range."""
    sem = _sem().astype(np.int64)
    values = sem - 128 if np.issubdtype(dtype, np.signedinteger) else sem * 1000
    values = np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    path = _write(tmp_path / "sem_wide.tif", values)
    code, err = _run("mask", _mask_argv(tmp_path, path, mask=_write(
        tmp_path / "m.tif", _blobs().astype(np.uint8))), capsys)
    assert code != 0 and f"{np.dtype(dtype)} micrograph" in err and "no fixed white level" in err
    assert "sem_wide.tif" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    lo, hi = float(values.min()), float(values.max())
    image = read_image(path, value_range=(lo, hi), micrograph=True)
    assert image.dtype == np.float32 and image.min() == 0 and image.max() == 1
    np.testing.assert_allclose(image, (values - lo) / (hi - lo), atol=1e-6)
    with pytest.raises(InputError, match="outside the stated range"):
        read_image(path, value_range=(lo + 1, hi), micrograph=True)
    # labels and object ids are not micrographs: any integer type stays valid there
    assert read_image(path).dtype == dtype


def test_a_micrograph_using_little_of_its_bit_depth_warns_once(tmp_path, caplog,
                                                                default_config):
    values = _sem().astype(np.uint16) * 8
    values[0, :2] = (0, 2040)  # 0..2040 of 65535: 3.1 %
    dark = _write(tmp_path / "dark16.tif", values)
    with caplog.at_level("WARNING", logger="mvfcnn.core.io"):
        image = read_image(dark, sample="s1", micrograph=True)
    assert image.dtype == np.uint16  # read by bit depth, like every image: one scale per dataset
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "uses 3.1 % of its bit depth" in warnings[0]
    assert "sample s1" in warnings[0] and "dark16.tif" in warnings[0]
    from mvfcnn.data.prepare import prepare_sample

    record = prepare_sample("s1", dark, None, ClassSet.from_config(default_config))[2]
    assert record.intensity_warning == warnings[0]  # and in prepare's JSON
    caplog.clear()
    with caplog.at_level("WARNING", logger="mvfcnn.core.io"):
        read_image(_write(tmp_path / "ok16.tif", _sem().astype(np.uint16) * 256),
                   micrograph=True)
        read_image(dark)  # not a micrograph: no intensity rule
    assert not caplog.records


def test_grey_rgb_reads_as_its_channel_and_any_rgb_as_luminance(tmp_path):
    sem = _sem()
    grey_rgb = _write(tmp_path / "sem_rgb.png", np.stack([sem] * 3, axis=-1))
    assert np.array_equal(read_image(grey_rgb, gray=True), sem)
    colour = np.stack([sem, sem // 2, np.zeros_like(sem)], axis=-1)
    got = read_image(_write(tmp_path / "colour.png", colour), gray=True)
    assert got.shape == sem.shape and got.dtype == np.uint8
    assert abs(int(got[20, 20]) - round(0.299 * sem[20, 20] + 0.587 * (sem[20, 20] // 2))) <= 1
    grey_alpha = np.stack([sem, np.full_like(sem, 255)], axis=-1)
    assert np.array_equal(read_image(_write(tmp_path / "la.png", grey_alpha)), sem)


def test_labels_saved_as_grey_rgb_and_16_bit(tmp_path, capsys, default_config):
    labels = _blobs().astype(np.uint8)
    rgb = _write(tmp_path / "labels_rgb.png", np.stack([labels] * 3, axis=-1))
    assert np.array_equal(read_labels(rgb), labels)
    rgba = np.concatenate([np.stack([labels] * 3, axis=-1), np.full((SIZE, SIZE, 1), 255,
                                                                    np.uint8)], axis=-1)
    assert np.array_equal(read_labels(_write(tmp_path / "labels_rgba.png", rgba)), labels)
    sixteen = _write(tmp_path / "labels16.tif", labels.astype(np.uint16) * 2)
    code, err = _run("objects", _objects_argv(tmp_path, _write(tmp_path / "m.tif", labels),
                                              sixteen, _classes_json(default_config)), capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "o.csv")
    assert len(table) == 2 and set(table["true_class_name"]) == {"tempered_martensite"}


# ----------------------------------------------------------------------------------------------
# class 6: numbers that mislead -> null with a reason, or a warning line + JSON entry


def test_all_ignore_labels_give_null_iou_with_reason(tmp_path, capsys):
    argv = _mask_argv(tmp_path, _write(tmp_path / "sem.tif", _sem()),
                      mask=_write(tmp_path / "m.tif", _blobs().astype(np.uint8)),
                      labels=_write(tmp_path / "ignore.tif",
                                    np.full((SIZE, SIZE), 255, np.uint8)))
    code, err = _run("mask", argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "m.json").read_text())
    assert report["iou"] is None and report["iou_all"] is None
    assert "ignore" in report["iou_undefined"]


def test_all_foreground_mask_warns_once(tmp_path, capsys):
    argv = _mask_argv(tmp_path, _write(tmp_path / "sem.tif", _sem()),
                      mask=_write(tmp_path / "full.tif", np.ones((SIZE, SIZE), np.uint8)))
    code, err = _run("mask", argv, capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "100.0 %" in warnings[0] and "full.tif" in warnings[0]
    report = json.loads((tmp_path / "out" / "m.json").read_text())
    assert len(report["warnings"]) == 1 and report["warnings"][0] in warnings[0]


def test_low_lom_coverage_warns_once(tmp_path, capsys):
    """A registered LOM that covers only half of the SEM (a bad registration)."""
    lom = np.where(_blobs(), 40, 200).astype(np.uint8)
    shift = [[1.0, 0.0, 32.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    path = tmp_path / "lom_reg.tif"
    tifffile.imwrite(path, lom, metadata={"lom_to_sem": shift, "lom_shape": [SIZE, SIZE]})
    argv = _mask_argv(tmp_path, _write(tmp_path / "sem.tif", _sem()), lom=str(path),
                      params='{"min_object_area": 0}')
    code, err = _run("mask", argv, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "covers only" in warnings[0], err
    report = json.loads((tmp_path / "out" / "m.json").read_text())
    assert report["lom_coverage"] < 0.6 and len(report["warnings"]) == 1


# ----------------------------------------------------------------------------------------------
# sample sheets (classes 2, 5, 7 and more): (id, sheet text, expected fragments or None = valid)

HEADER = "sample\tsplit\tsem\tlom\tmask\tlabels\tclass\n"
SHEETS = [
    ("hash-in-path-kept",  # class 2
     "# a whole-line comment\n" + HEADER + "a\tpredict\td/040617#2_S127(2)0015.tif\td/l#1.tif"
     "\t\t\t\n", None),
    ("indented-comment-line", "  # note\n" + HEADER + "a\tpredict\ts.tif\tl.tif\t\t\t\n", None),
    ("class-without-lom-column",  # class 5: crashed with AttributeError '_6'
     "sample\tsplit\tsem\tmask\tlabels\tclass\na\ttest\ts.tif\tm.tif\tl.tif\tpearlite\n"
     "b\ttrain\ts.tif\tm.tif\tl.tif\tpearlite\n", None),
    ("quotes-and-spaces-in-path",
     HEADER + "a\tpredict\tmy dir/it's \"a\" file.tif\tx;touch y.tif\t\t\t\n", None),
    ("bad-sample-id",  # class 7: was reported as a "config file" error
     HEADER + "a/b\tpredict\ts.tif\tl.tif\t\t\t\n", ["samples.tsv", "invalid sample id 'a/b'"]),
    ("sample-id-with-space", HEADER + "my sample\tpredict\ts.tif\tl.tif\t\t\t\n",
     ["samples.tsv", "'my sample'"]),
    ("empty-sample-id", HEADER + "\tpredict\ts.tif\tl.tif\t\t\t\n",
     ["samples.tsv", "invalid sample id ''"]),
    ("duplicate-id", HEADER + "a\tpredict\ts.tif\tl.tif\t\t\t\na\tpredict\tt.tif\tl.tif\t\t\t\n",
     ["samples.tsv", "duplicate sample id(s) ['a']"]),
    ("unknown-split", HEADER + "a\tvalidation\ts.tif\tl.tif\t\t\t\n",
     ["sample 'a'", "unknown split 'validation'"]),
    ("missing-column", "sample\tsem\tlom\na\ts.tif\tl.tif\n",
     ["samples.tsv", "lacks required column(s) ['split']"]),
    ("misspelt-column", "sample\tsplit\tsem\tlom\tlabel\na\ttest\ts.tif\tl.tif\tx.tif\n",
     ["samples.tsv", "unknown column 'label'", "did you mean 'labels'"]),
    ("unknown-class", HEADER + "a\tpredict\ts.tif\tl.tif\t\t\tferrite\n",
     ["sample 'a'", "unknown class 'ferrite'"]),
    ("train-without-labels", HEADER + "a\ttrain\ts.tif\tl.tif\t\t\t\n",
     ["sample 'a'", "needs a 'labels' image"]),
    ("neither-lom-nor-mask", HEADER + "a\tpredict\ts.tif\t\t\t\t\n",
     ["sample 'a'", "needs a 'lom' image, a 'mask' or 'labels'"]),
    ("empty-sem", HEADER + "a\tpredict\t\tl.tif\t\t\t\n", ["sample 'a'", "needs a 'sem'"]),
    ("empty-sheet", "", ["samples.tsv", "sample sheet is empty"]),
    ("only-comments", "# nothing here\n# yet\n", ["samples.tsv", "sample sheet is empty"]),
    ("comma-separated", "sample,split,sem,lom\na,predict,s.tif,l.tif\n",
     ["samples.tsv", "unknown column"]),
    # real releases: labels-only objects, folds, information band, scale bar
    ("labels-only-objects", "sample\tsplit\tsem\tlabels\na\ttest\ts.jpg\tl.png\n"
     "b\ttrain\ts.jpg\tl.png\n", None),
    # issue 21 item 3: empty work is an error when the DAG is built
    ("header-only", HEADER, ["samples.tsv", "sample sheet has no samples"]),
    ("test-without-train", "sample\tsplit\tsem\tlabels\na\ttest\ts.jpg\tl.png\n",
     ["samples.tsv", "test samples but no training sample"]),
    ("fold-on-a-train-row", "sample\tsplit\tsem\tlabels\tfold\na\ttrain\ts.jpg\tl.png\t1\n"
     "b\ttest\ts.jpg\tl.png\t2\n", ["sample 'a'", "needs split 'test', not 'train'"]),
    ("single-fold", "sample\tsplit\tsem\tlabels\tfold\na\ttest\ts.jpg\tl.png\t1\n",
     ["samples.tsv", "needs at least 2 folds"]),
    ("test-row-without-fold", "sample\tsplit\tsem\tlabels\tfold\na\ttest\ts.jpg\tl.png\t1\n"
     "b\ttest\ts.jpg\tl.png\t2\nc\ttest\ts.jpg\tl.png\t\n",
     ["samples.tsv", "test sample(s) ['c'] have no fold"]),
    ("crop-bottom-not-rows", "sample\tsplit\tsem\tlabels\tcrop_bottom\na\ttest\ts.jpg\tl.png"
     "\t6.5\n", ["sample 'a'", "crop_bottom must be a non-negative integer"]),
    ("scale-bar-not-a-length", "sample\tsplit\tsem\tlabels\tscale_bar_um\na\ttest\ts.jpg"
     "\tl.png\t-2\n", ["sample 'a'", "scale_bar_um must be a positive length"]),
]


@pytest.mark.parametrize(("text", "fragments"), [c[1:] for c in SHEETS],
                         ids=[c[0] for c in SHEETS])
def test_sample_sheet(tmp_path, classes, text: str, fragments: list[str] | None):
    path = tmp_path / "samples.tsv"
    path.write_text(text)
    if fragments is None:
        frame = load_sample_sheet(path, classes)
        row = frame.iloc[0]
        for line in text.splitlines():
            if line.startswith(row["sample"] + "\t"):
                values = line.split("\t")
                assert row["sem"] == values[2]  # the full path, nothing cut at '#'
        return
    with pytest.raises(InputError) as err:
        load_sample_sheet(path, classes)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_sheet_paths_that_are_directories_or_padded(tmp_path, classes, caplog):
    path = tmp_path / "samples.tsv"
    path.write_text(f"sample\tsplit\tsem\tlabels\na\ttrain\t{tmp_path}\tl.png\n")
    with pytest.raises(InputError, match=r"sample 'a'.*'sem' .* is a directory, not an image"):
        load_sample_sheet(path, classes)
    path.write_text("sample\tsplit\tsem\tlabels\na\ttrain\ts.tif \t l.png\n")
    with caplog.at_level("WARNING", logger="mvfcnn.core.config"):
        frame = load_sample_sheet(path, classes)
    assert frame.loc["a", "sem"] == "s.tif" and frame.loc["a", "labels"] == "l.png"
    assert "whitespace removed from column 'sem' of sample(s) ['a']" in caplog.text
    assert "column 'labels'" in caplog.text


def test_sheet_not_utf8(tmp_path, classes):
    path = tmp_path / "samples.tsv"
    path.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(InputError, match="cannot read sample sheet"):
        load_sample_sheet(path, classes)


# ----------------------------------------------------------------------------------------------
# class 3: config typos, anywhere in the config


def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        node = config
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[keys[-1]] = value
    return mutate


CONFIG_TYPOS = [
    ("sample", "x.tsv", "'sample' (did you mean 'samples'?)"),
    ("masking.treshold", 0.9, "'masking.treshold' (did you mean 'threshold'?)"),
    ("fcn.iteratons", {"32s": 5}, "'fcn.iteratons' (did you mean 'iterations'?)"),
    ("fcn.iterations.64s", 5, "'fcn.iterations.64s'"),
    ("synthetic.lom.blur", 1.0, "'synthetic.lom.blur' (did you mean 'blur_sigma'?)"),
    ("baselines.cifarnet.epoch", 3, "'baselines.cifarnet.epoch' (did you mean 'epochs'?)"),
    ("baselines.svm.c", [1], "'baselines.svm.c' (did you mean 'C'?)"),
    ("baselines.crop", 32, "'baselines.crop' (did you mean 'crop_size'?)"),
    ("variants.ft_balanced.augmnt", True,
     "'variants.ft_balanced.augmnt' (did you mean 'augment'?)"),
    ("resources.train_fnc", {"threads": 2}, "'resources.train_fnc' (did you mean 'train_fcn'?)"),
    ("resources.predict.memory", 10, "'resources.predict.memory'"),
    ("classes.1.colour", "#ff0000", "'classes[1].colour' (did you mean 'color'?)"),
    ("run.modality", ["sem"], "'run.modality' (did you mean 'modalities'?)"),
    ("inference.tilesize", 256, "'inference.tilesize' (did you mean 'tile_size'?)"),
    ("classify.low_confidance", 0.5, "'classify.low_confidance' (did you mean 'low_confidence'?)"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), CONFIG_TYPOS,
                         ids=[c[0] for c in CONFIG_TYPOS])
def test_config_typo_names_the_key_and_the_closest(default_config, key, value, fragment):
    config = copy.deepcopy(default_config)
    _set(key, value)(config)
    with pytest.raises(InputError) as err:
        check_config_keys(config, SCHEMA)
    assert str(err.value).startswith("config: unknown key ") and fragment in str(err.value)


@pytest.mark.parametrize("name", ["config/config.yaml", "config/paper.yaml",
                                  "tests/data/mini.yaml"])
def test_shipped_configs_have_no_unknown_keys(name):
    import yaml

    check_config_keys(yaml.safe_load((ROOT / name).read_text()), SCHEMA)


def test_config_typo_stops_snakemake_before_any_job(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("masking:\n  treshold: 0.9\n")
    snakemake = Path(sys.executable).with_name("snakemake")
    result = subprocess.run(
        [str(snakemake), "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
         "--configfile", str(ROOT / "config" / "config.yaml"), str(overlay), "-n", "--cores", "1"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config: unknown key 'masking.treshold' (did you mean 'threshold'?)" in output
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------------------------
# class 1: every rule quotes what it pastes into the shell; class 5: classify --out


def test_every_shell_placeholder_is_quoted():
    """Static guard beside the end-to-end test: a new rule must quote its paths too."""
    allowed = {"threads", "params.classes"}  # tile_index's class names are shlex-quoted in params
    unquoted = []
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for block in re.findall(r"\n\s+shell:\n((?:\s+\".*\"\n)+)", text):
            for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", block):
                if not field.endswith(":q") and field not in allowed:
                    unquoted.append(f"{path.name}: {{{field}}}")
            assert "'{" not in block, f"{path.name}: hand-written quotes around a placeholder"
    assert not unquoted, unquoted


def test_classify_out_is_a_file_fails_before_the_work(tmp_path, capsys):
    image = _write(tmp_path / "new.tif", _sem())
    out = tmp_path / "results.txt"
    out.write_text("an existing file")
    code, err = _run("classify", [image, "--model", str(tmp_path / "never_loaded.pt"),
                                  "--out", str(out), "--no-progress"], capsys)
    assert code != 0 and "results.txt" in err and "is a file" in err, err
    assert "never_loaded" not in err  # checked before the model is even loaded
    assert out.read_text() == "an existing file"


def test_classify_output_folder_is_taken_by_a_folder(tmp_path, capsys):
    image = _write(tmp_path / "new.tif", _sem())
    (tmp_path / "out" / "new" / "objects.csv").mkdir(parents=True)
    code, err = _run("classify", [image, "--model", str(tmp_path / "never_loaded.pt"),
                                  "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code != 0 and "objects.csv" in err and "a folder of that name exists" in err, err


def test_learning_curve_clis_name_the_missing_csv_and_mismatched_lists(tmp_path):
    """mvfcnn learning-curve / crossval-curves: one line naming the file or the list lengths,
    nothing written."""
    from mvfcnn.evaluation.crossval_cli import crossval_curves
    from mvfcnn.fcn.cli import learning_curve

    out = ["--out-csv", str(tmp_path / "c.csv"), "--out-png", str(tmp_path / "c.png")]
    missing = tmp_path / "train_32s.csv"
    with pytest.raises(InputError, match="training CSV not found") as err:
        learning_curve(["--stages", "32s", "--csvs", str(missing), *out])
    assert str(missing) in str(err.value)
    with pytest.raises(InputError, match="2 names but 1 training CSVs"):
        learning_curve(["--stages", "32s", "16s", "--csvs", str(missing), *out])
    with pytest.raises(InputError, match="learning curve not found"):
        crossval_curves(["--folds", "0", "--curves", str(tmp_path / "none.csv"), *out])
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# issue 21 item 3: rules between keys, checked when the DAG is built


CROSS_FIELD = [
    ("inference: {overlap: 200, tile_size: 128}\n",
     "config: inference.overlap (200) must be smaller than inference.tile_size (128)"),
    ("tiles: {size: 96, stride: 128}\n", "config: tiles.stride (128) must not exceed tiles.size"),
    ("ignore_index: 1\n", "config: ignore_index 1 is also the index of class 'martensite'"),
    ("run: {variants: [ft_balanced_agu]}\n",
     "config: run.variants names 'ft_balanced_agu', which is not defined under variants "
     "(did you mean 'ft_balanced_aug'?)"),
    ("run: {combinations: [{variant: nope, modality: sem}]}\n",
     "config: run.combinations names 'nope', which is not defined under variants"),
    ("variants: {ft_balanced_aug: {pretrained: no/such/weights.pt, balanced: true, "
     "augment: true}}\n",
     "config: variants.ft_balanced_aug.pretrained: 'no/such/weights.pt' is none of"),
    ("baselines: {vgg16: {pretrained: results}}\n",
     "config: baselines.vgg16.pretrained: 'results' is none of ['none', 'imagenet', 'patches', "
     "'match'] and no existing weights file (it is a directory)"),
    ("fcn: {stages: [32s, 8s]}\n",
     "config: fcn.stages ['32s', '8s'] must be the staged chain from 32s in order"),
    ("fcn: {stages: [32s, 16s, 8s, 4s]}\n",
     "config: fcn.iterations needs an entry for every stage in fcn.stages; missing ['4s']"),
    ("prepare: {intensity_percentiles: [99, 1]}\n",
     "config: prepare.intensity_percentiles [99, 1] needs low < high"),
    ("inference: {object_offsets: accuracy}\n",
     "config: inference.object_offsets accuracy needs inference.object_vote second_phase"),
    ("inference: {object_vote: second_phase, object_offsets: balanced}\n",
     "config: inference.object_offsets balanced needs a sample sheet with 2 or more "
     "cross-validation folds (a `fold` column; this one has 0)"),
    ("inference: {object_offset_size_edges: [300, 30]}\n",
     "config: inference.object_offset_size_edges [300.0, 30.0] must be strictly ascending"),
    ("seed: 1\nfcn: {batch_size: 2}\nfcn: {batch_size: 3}\n",
     "overlay.yaml': config file: key 'fcn' appears twice (lines 2 and 3); the last would "
     "silently win"),
]


@pytest.mark.parametrize(("overlay", "message"), CROSS_FIELD,
                         ids=["overlap", "stride", "ignore_index", "variant", "combination",
                              "pretrained_file", "pretrained_dir", "stage_chain",
                              "stage_iterations", "stretch", "object_offsets_vote",
                              "object_offsets_folds", "object_offset_size_edges",
                              "duplicate_key"])
def test_cross_field_config_errors_stop_the_dag_build(tmp_path, overlay, message):
    """One line naming the key, exit code != 0, no job and nothing written."""
    (tmp_path / "results").mkdir()  # a directory where a weights file is expected
    path = tmp_path / "overlay.yaml"
    path.write_text(overlay)
    snakemake = Path(sys.executable).with_name("snakemake")
    result = subprocess.run(
        [str(snakemake), "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
         "--configfile", str(ROOT / "config" / "config.yaml"), str(path), "-n", "--cores", "1"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-2000:]
    assert "Traceback" not in output
    assert not any((tmp_path / "results").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".snakemake") == [
        "overlay.yaml", "results"]
