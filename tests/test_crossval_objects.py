"""MVFCNN vs the object-based baselines on cross-validation folds
(mvfcnn.evaluation.crossval_objects), and
the data-chosen minimum object area (mvfcnn.objects.components.min_area_for_area_loss)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.evaluation.crossval_cli import crossval_objects as cli
from mvfcnn.evaluation.crossval_objects import (
    add_majority,
    check_same_objects,
    fold_rows,
    paired_differences,
    summarize,
    verdict,
)
from mvfcnn.objects.components import component_areas, min_area_for_area_loss

CLASSES = ClassSet((0, 1, 2), ("matrix", "a", "b"), ("#000000", "#ff0000", "#00ff00"))


def metrics(correct_a: int, support_a: int, correct_b: int, support_b: int) -> dict:
    """A metrics.json in the shared evaluation format (recall None without objects)."""
    n = support_a + support_b
    return {"n_objects": n, "n_correct": correct_a + correct_b,
            "object_accuracy": (correct_a + correct_b) / n,
            "per_class": {"a": {"recall": correct_a / support_a if support_a else None,
                                "support": support_a},
                          "b": {"recall": correct_b / support_b if support_b else None,
                                "support": support_b}}}


RUNS = {
    ("mvfcnn", "0"): metrics(8, 8, 1, 2),       # 90 %, recall a 1.0, b 0.5
    ("mvfcnn", "1"): metrics(6, 8, 2, 2),       # 80 %, recall a 0.75, b 1.0
    ("cifarnet", "0"): metrics(8, 8, 0, 2),     # 80 %
    ("cifarnet", "1"): metrics(8, 8, 0, 2),     # 80 %
}


def test_rows_summary_and_majority_have_exact_values():
    rows = add_majority(fold_rows(RUNS, CLASSES), CLASSES)
    table = summarize(rows)
    get = table.set_index(["method", "fold"])
    assert get.loc[("mvfcnn", "0"), "object_accuracy"] == pytest.approx(0.9)
    assert get.loc[("mvfcnn", "0"), "mean_recall"] == pytest.approx(0.75)
    assert get.loc[("mvfcnn", "mean"), "object_accuracy"] == pytest.approx(0.85)
    # SE of (0.9, 0.8): std 0.0707 / sqrt 2 = 0.05
    assert get.loc[("mvfcnn", "se"), "object_accuracy"] == pytest.approx(0.05)
    assert get.loc[("mvfcnn", "mean"), "recall_b"] == pytest.approx(0.75)
    assert get.loc[("mvfcnn", "mean"), "n_objects"] == 20
    assert get.loc[("cifarnet", "se"), "object_accuracy"] == pytest.approx(0.0)
    # always "a" (16 of 20 test objects): 80 % accuracy, 50 % mean recall
    assert get.loc[("majority", "0"), "object_accuracy"] == pytest.approx(0.8)
    assert get.loc[("majority", "1"), "mean_recall"] == pytest.approx(0.5)
    assert get.loc[("majority", "mean"), "recall_b"] == pytest.approx(0.0)


def test_accuracy_without_a_class_counts_the_other_classes_objects_only():
    from mvfcnn.evaluation.crossval_objects import SECONDARY, add_accuracy_without

    rows = add_accuracy_without(add_majority(fold_rows(RUNS, CLASSES), CLASSES), ("b",))
    table = summarize(rows).set_index(["method", "fold"])
    # without class b only a's 8 objects per fold: MVFCNN 8/8 and 6/8, CIFARNet 8/8 twice
    assert table.loc[("mvfcnn", "0"), SECONDARY] == pytest.approx(1.0)
    assert table.loc[("mvfcnn", "mean"), SECONDARY] == pytest.approx(0.875)
    assert table.loc[("cifarnet", "mean"), SECONDARY] == pytest.approx(1.0)
    assert table.loc[("majority", "1"), SECONDARY] == pytest.approx(1.0)
    assert add_accuracy_without(rows, ()) is rows


def test_a_class_without_test_objects_is_left_out_of_its_recall_and_the_mean_recall():
    runs = {("mvfcnn", "0"): metrics(3, 4, 0, 0), ("mvfcnn", "1"): metrics(1, 4, 1, 1)}
    table = summarize(fold_rows(runs, CLASSES)).set_index(["method", "fold"])
    assert table.loc[("mvfcnn", "0"), "mean_recall"] == pytest.approx(0.75)
    assert np.isnan(table.loc[("mvfcnn", "0"), "recall_b"])
    assert table.loc[("mvfcnn", "mean"), "recall_b"] == pytest.approx(1.0)
    assert np.isnan(table.loc[("mvfcnn", "se"), "recall_b"])  # one fold only


def test_paired_differences_and_the_verdict():
    table = summarize(add_majority(fold_rows(RUNS, CLASSES), CLASSES))
    diff = paired_differences(table).set_index("method")
    # mvfcnn - cifarnet per fold: 0.1, 0.0 -> mean 0.05, SE 0.05: not beyond one SE
    assert diff.loc["cifarnet", "mvfcnn_minus_method"] == pytest.approx(0.05)
    assert diff.loc["cifarnet", "se"] == pytest.approx(0.05)
    assert not diff.loc["cifarnet", "mvfcnn_ahead_beyond_1se"]
    assert diff.loc["cifarnet", "mvfcnn_standing"] == "within 1 SE"
    assert diff.loc["cifarnet", "folds_mvfcnn_ahead"] == 1
    assert verdict(paired_differences(table)).endswith(
        "MVFCNN's object accuracy is within one standard error of CIFARNet (paired per-fold "
        "differences).")
    worse = dict(RUNS)
    worse[("mvfcnn", "0")] = metrics(5, 8, 0, 2)  # 50 % vs CIFARNet's 80 % on both folds:
    worse[("mvfcnn", "1")] = metrics(5, 8, 0, 2)  # -0.3 ± 0.0, behind beyond one SE
    table = summarize(fold_rows(worse, CLASSES))
    assert paired_differences(table)["mvfcnn_standing"].tolist() == ["behind"]
    assert "below CIFARNet by more than one standard error" in verdict(paired_differences(table))
    better = dict(RUNS)
    better[("mvfcnn", "1")] = metrics(8, 8, 1, 2)  # 90 %, 90 %: +0.1 each fold, SE 0
    table = summarize(fold_rows(better, CLASSES))
    assert verdict(paired_differences(table)).startswith("The paper's ordering holds")


def test_unsegmented_objects_count_as_missed_in_the_class_recall():
    # MVFCNN left 2 of class a's 10 objects without any predicted second-phase pixel; of the 8
    # segmented ones 6 are right: recall 6/10 over all of a's objects (Table 4's 6/8 is over
    # the segmented ones), and the support is all 10, as for a baseline that crops all 10
    report = metrics(6, 8, 2, 2)
    report["per_class"]["a"]["not_segmented"] = 2
    report["n_objects"], report["object_accuracy"] = 12, 8 / 12
    rows = fold_rows({("mvfcnn", "0"): report, ("cifarnet", "0"): metrics(10, 10, 0, 2)},
                     CLASSES).set_index("method")
    assert rows.loc["mvfcnn", "recall_a"] == pytest.approx(0.6)
    assert rows.loc["mvfcnn", "support_a"] == rows.loc["cifarnet", "support_a"] == 10
    assert rows.loc["mvfcnn", "mean_recall"] == pytest.approx(0.8)
    check_same_objects(rows.reset_index())  # the same 12 objects


def test_methods_scored_on_different_objects_are_refused():
    runs = dict(RUNS)
    runs[("cifarnet", "1")] = metrics(8, 9, 0, 2)
    with pytest.raises(InputError, match="fold 1: the methods were scored on different"):
        check_same_objects(fold_rows(runs, CLASSES))


def test_cli_writes_the_three_files_with_each_methods_budget(tmp_path, capsys):
    from mvfcnn.core.settings import defaults

    args = []
    for (method, fold), report in RUNS.items():
        run = tmp_path / method / fold
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(report))
        if method == "mvfcnn":  # each stage's training CSV: 10 s + 20 s + 30 s, then 20 + ...
            for k, stage in enumerate(("32s", "16s", "8s")):
                pd.DataFrame({"seconds": [5.0 * (k + 1) * (int(fold) + 1)] * 2}).to_csv(
                    run / f"train_{stage}.csv", index=False)
        else:
            (run / "info.json").write_text(json.dumps({"train_seconds": 40.0 + 20 * int(fold)}))
        args += ["--run", method, fold, str(run / "metrics.json")]
    config = defaults()
    config["baselines"]["cifarnet"]["epochs"] = 3
    out = {ext: tmp_path / f"objects.{ext}" for ext in ("csv", "md", "html")}
    assert cli([*args, "--classes-json", json.dumps(CLASSES.to_dict()),
                "--config-json", json.dumps(config), "--secondary-exclude", "b",
                "--out-csv", str(out["csv"]), "--out-md", str(out["md"]),
                "--out-html", str(out["html"])]) == 0
    table = pd.read_csv(out["csv"])
    assert set(table["method"]) == {"mvfcnn", "cifarnet", "majority"}
    markdown = out["md"].read_text()
    assert "| **mean ± SE** | 20 | **85.0 ± 5.0** | **80.0 ± 0.0** | **80.0 ± 0.0** |" in markdown
    assert "does not hold" in markdown
    assert "## Object accuracy without b objects (%)" in markdown
    assert "| **mean ± SE** | 16 | **87.5 ± 12.5** | **100.0 ± 0.0** |" in markdown
    assert "Without b objects: CIFARNet -12.5 ± 12.5 pp (within 1 SE)" in markdown
    # MVFCNN trained 60 s (fold 0) and 120 s (fold 1); CIFARNet 40 s and 60 s
    assert "- MVFCNN: FCN iterations" in markdown and "training 90 s per fold (mean)" in markdown
    assert "- CIFARNet: 3 epochs, batch 16; init=none" in markdown
    assert "training 50 s per fold (mean)" in markdown
    assert "<table>" in out["html"].read_text()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json"):
        cli(["--run", "mvfcnn", "0", str(tmp_path / "broken.json"), "--classes-json",
             json.dumps(CLASSES.to_dict()), "--out-csv", str(out["csv"]),
             "--out-md", str(out["md"]), "--out-html", str(out["html"])])


def test_component_areas_per_class_are_8_connected():
    labels = np.zeros((6, 6), np.uint8)
    labels[0, 0] = labels[1, 1] = 1          # diagonal neighbours: one component of 2
    labels[4:6, 4:6] = 1                     # 4
    labels[0, 4:6] = 2                       # 2
    areas = component_areas(labels, CLASSES)
    assert sorted(areas["a"].tolist()) == [2, 4] and areas["b"].tolist() == [2]


@pytest.mark.parametrize(("loss", "expected"), [
    (0.0, 1),      # nothing may go: keep every component
    (0.05, 5),     # a may lose its 1 px (0.9 % of 106), not also the 5 px one (5.7 %)
    (0.10, 50),    # a may lose 1 + 5; b's 50 px components bound it (one would be 50 %)
    (0.5, 50),     # b may lose one of its two 50s, but "< area" cannot drop one tie: keep both
])
def test_min_area_keeps_every_class_within_the_loss(loss, expected):
    areas = {"a": np.array([100, 1, 5]), "b": np.array([50, 50])}
    assert min_area_for_area_loss(areas, loss) == expected
    kept = {k: v[v >= expected] for k, v in areas.items()}
    for name, values in areas.items():
        assert values.sum() - kept[name].sum() <= loss * values.sum() + 1e-9


def test_min_area_rejects_a_loss_outside_0_1():
    with pytest.raises(ValueError):
        min_area_for_area_loss({"a": np.array([1])}, 1.0)
