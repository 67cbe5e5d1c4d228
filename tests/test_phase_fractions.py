"""Phase fractions (area share of each class) of a prediction against its truth: exact values on
hand-made maps with ignore pixels, the cross-validation summary over test images, and the
crossval rule's dry run listing the new outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.evaluation.metrics import area_fractions, phase_fractions

CLASSES = ClassSet((0, 1, 2), ("matrix", "a", "b"), ("#000000", "#ff0000", "#00ff00"))
X = 255  # ignore

# 4 x 5 = 20 pixels, 4 of them ignore (the right column): 16 labelled pixels
LABELS = np.array([[0, 0, 1, 1, X],
                   [0, 0, 1, 1, X],
                   [0, 0, 0, 2, X],
                   [0, 0, 0, 2, X]], dtype=np.uint8)
# truth over the 16 labelled pixels: matrix 10, a 4, b 2
PRED = np.array([[0, 1, 1, 1, 2],
                 [0, 0, 1, 1, 2],
                 [0, 0, 0, 0, 2],
                 [0, 0, 0, 2, 2]], dtype=np.uint8)
# prediction over the same 16 pixels: matrix 10, a 5, b 1 (the 4 b's on ignore do not count)


def test_area_fractions_all_pixels_and_valid_only():
    np.testing.assert_array_equal(area_fractions(PRED, 3), [10 / 20, 5 / 20, 5 / 20])
    valid = LABELS != X
    np.testing.assert_array_equal(area_fractions(PRED, 3, valid), [10 / 16, 5 / 16, 1 / 16])
    np.testing.assert_array_equal(area_fractions(LABELS, 3, valid), [10 / 16, 4 / 16, 2 / 16])


def test_area_fractions_strips_nan_and_bad_values(monkeypatch):
    import mvfcnn.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "_COUNT_ROWS", 1)  # one bincount per row: same numbers
    np.testing.assert_array_equal(area_fractions(PRED, 3, LABELS != X), [10 / 16, 5 / 16, 1 / 16])
    assert np.isnan(area_fractions(PRED, 3, np.zeros(PRED.shape, bool))).all()
    with pytest.raises(InputError, match=r"0\.\.2.*found 255"):
        area_fractions(LABELS, 3)  # ignore counted without a valid mask
    with pytest.raises(InputError, match="shape"):
        area_fractions(PRED, 3, np.ones((2, 2), bool))


def test_phase_fractions_share_the_labelled_pixels():
    truth, pred, n = phase_fractions(LABELS, PRED, CLASSES)
    assert n == 16
    np.testing.assert_array_equal(truth, [10 / 16, 4 / 16, 2 / 16])
    np.testing.assert_array_equal(pred, [10 / 16, 5 / 16, 1 / 16])
    with pytest.raises(InputError, match="differs"):
        phase_fractions(LABELS, PRED[:, :4], CLASSES)


# --- cross-validation: per image and per class over all test images

def _images() -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Three test images in two folds; image 3 has no labelled pixel (left out)."""
    perfect = LABELS.copy()
    perfect[:, 4] = 1  # predictions on ignore pixels count nowhere
    return [("0", "s1", LABELS, PRED),          # errors (pp): 0, +6.25, -6.25
            ("0", "s2", LABELS, perfect),       # errors 0, 0, 0
            ("1", "s3", np.full((2, 2), X, np.uint8), np.zeros((2, 2), np.uint8))]


def test_phase_rows_and_summary_exact():
    from mvfcnn.evaluation.crossval import phase_fraction_summary, phase_image_rows

    rows = [r for fold, sample, lab, pred in _images()
            for r in phase_image_rows(fold, sample, lab, pred, CLASSES)]
    per_image = pd.DataFrame(rows)
    s1 = per_image[per_image["sample"] == "s1"].set_index("class_name")
    assert s1["n_labelled_px"].tolist() == [16, 16, 16]
    assert s1["truth_pp"].tolist() == [62.5, 25.0, 12.5]
    assert s1["predicted_pp"].tolist() == [62.5, 31.25, 6.25]
    assert s1["error_pp"].tolist() == [0.0, 6.25, -6.25]
    assert per_image[per_image["sample"] == "s3"]["error_pp"].isna().all()
    summary = phase_fraction_summary(per_image, CLASSES).set_index("class_name")
    assert summary["n_images"].tolist() == [2, 2, 2]  # s3 has no labelled pixel
    assert summary.loc["a", "mean_abs_error_pp"] == 3.125
    assert summary.loc["a", "max_abs_error_pp"] == 6.25
    assert summary.loc["a", "bias_pp"] == 3.125
    assert summary.loc["b", "bias_pp"] == -3.125
    assert summary.loc["b", "mean_abs_error_pp"] == 3.125
    assert summary.loc["b", "max_abs_error_sample"] == "s1"
    assert summary.loc["matrix", "max_abs_error_pp"] == 0.0
    assert summary.loc["b", "truth_mean_pp"] == 12.5
    assert summary.loc["b", "predicted_mean_pp"] == (6.25 + 12.5) / 2


def test_crossval_cli_writes_the_phase_fractions(tmp_path):
    from mvfcnn.core.io import write_image
    from mvfcnn.evaluation.crossval_cli import crossval as cli

    pairs = []
    for fold, sample, lab, pred in _images():
        write_image(tmp_path / f"{sample}_labels.tif", lab)
        write_image(tmp_path / f"{sample}_pred.tif", pred)
        pairs += ["--test-pair", fold, sample, str(tmp_path / f"{sample}_labels.tif"),
                  str(tmp_path / f"{sample}_pred.tif")]
    for fold in ("0", "1"):
        pd.DataFrame(np.eye(3, dtype=int), index=pd.Index(CLASSES.names, name="true"),
                     columns=CLASSES.names).reset_index().to_csv(tmp_path / f"c{fold}.csv",
                                                                 index=False)
    out = {k: str(tmp_path / f"out.{k}") for k in ("csv", "md", "html", "conf", "pf", "pfi")}
    assert cli(["--folds", "0", "1", "--confusions", str(tmp_path / "c0.csv"),
                str(tmp_path / "c1.csv"), "--classes-json", json.dumps(CLASSES.to_dict()),
                "--out-csv", out["csv"], "--out-md", out["md"], "--out-html", out["html"],
                "--out-confusion", out["conf"], *pairs, "--out-phase-fractions", out["pf"],
                "--out-phase-fractions-per-image", out["pfi"]]) == 0
    per_image = pd.read_csv(out["pfi"])
    assert len(per_image) == 3 * 3 and per_image["fold"].astype(str).tolist()[-1] == "1"
    summary = pd.read_csv(out["pf"]).set_index("class_name")
    assert summary.loc["a", "max_abs_error_pp"] == 6.25
    markdown = open(out["md"]).read()
    assert "## Phase fractions" in markdown
    assert "| a | 25.00 | 28.12 | 3.12 | 6.25 | s1 | 3.12 |" in markdown
    assert "Phase fractions per class" in open(out["html"]).read()


def test_crossval_cli_phase_arguments_go_together(tmp_path):
    from mvfcnn.evaluation.crossval_cli import crossval as cli

    with pytest.raises(InputError, match="go together"):
        cli(["--folds", "0", "--confusions", "c.csv", "--classes-json",
             json.dumps(CLASSES.to_dict()), "--out-csv", "a", "--out-md", "b", "--out-html", "c",
             "--out-confusion", "d", "--out-phase-fractions", "e"])


# --- the workflow: the crossval rule plans the phase-fraction outputs

def test_crossval_rule_dry_run_lists_the_phase_fraction_outputs(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from mvfcnn.core.io import write_image
    from mvfcnn.core.layout import crossval_table

    root = Path(__file__).resolve().parents[1]
    snakemake = Path(sys.executable).with_name("snakemake")
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for n, fold in enumerate(["a", "a", "b", "b"]):
        write_image(data / f"s{n}.tif", np.full((64, 64), 100 + n, np.uint8))
        write_image(data / f"s{n}_labels.tif", np.tile(np.arange(64) // 32, (64, 1))
                    .astype(np.uint8))
        rows.append({"sample": f"s{n}", "split": "test", "sem": str(data / f"s{n}.tif"),
                     "labels": str(data / f"s{n}_labels.tif"), "fold": fold})
    pd.DataFrame(rows).to_csv(data / "samples.tsv", sep="\t", index=False)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "samples": str(data / "samples.tsv"),
        "run": {"variants": ["ft_balanced_aug"], "modalities": ["sem"], "baselines": []}}))
    work = tmp_path / "work"
    outputs = crossval_table("crossval")
    command = [str(snakemake), "-n", outputs["phase_fractions"],
               outputs["phase_fractions_per_image"],
               "--snakefile", str(root / "workflow" / "Snakefile"),
               "--directory", str(work), "--configfile", str(root / "config" / "config.yaml"),
               str(root / "tests" / "data" / "mini.yaml"), str(overlay), "--cores", "1",
               "--resources", "gpu=1"]
    env = {**os.environ, "PATH": f"{snakemake.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "rule crossval_table:" in result.stdout
    assert "results/tables/crossval_phase_fractions.csv" in result.stdout
    assert "results/tables/crossval_phase_fractions_per_image.csv" in result.stdout
    # every fold's test predictions feed the rule
    for fold, sample in (("a", "s0"), ("a", "s1"), ("b", "s2"), ("b", "s3")):
        assert f"fold{fold}/pred/{sample}.tif" in result.stdout
