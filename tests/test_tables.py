"""Tables 1-6: our numbers from fake evaluation files beside the paper's, typed in here from the
paper (Azimi et al. 2018) so a typo in workflow/resources/paper_tables.yaml fails a test."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest

from mvfcnn.cli import main as cli_main
from mvfcnn.core.config import ClassSet
from mvfcnn.core.errors import InputError
from mvfcnn.evaluation.evaluate import write_evaluation
from mvfcnn.report import collect as C
from mvfcnn.report import rendering as RN
from mvfcnn.report import tables as T
from mvfcnn.report.cli import tables as tables_cli

PAPER_YAML = "workflow/resources/paper_tables.yaml"

# Typed from the paper text, independently of the YAML.
PAPER_T1 = {"handcrafted_svm": 48.89, "cifarnet": 57.03, "vgg19_svm": 64.84, "vgg16": 66.50,
            "mvfcnn": 93.94}
PAPER_T2 = {"scratch_unbalanced": 55.50, "ft_unbalanced": 87.98, "ft_balanced": 90.97,
            "ft_balanced_aug": 93.94}
PAPER_T3_LOM = {"cifarnet": 51.27, "vgg19_svm": 56.56, "vgg16": 60.02, "mvfcnn": 70.14}
PAPER_T4_COUNTS = [[1190, 0, 11, 0], [24, 268, 0, 0], [39, 6, 325, 16], [0, 0, 9, 317]]
PAPER_T4_PERCENT = [[94.97, 0.00, 3.19, 0.00], [1.92, 97.81, 0.00, 0.00],
                    [3.11, 2.19, 94.20, 4.80], [0.00, 0.00, 2.61, 95.20]]
PAPER_T4_RECALL = [94.97, 97.81, 94.20, 95.19]
PAPER_T4_PRECISION = [99.08, 91.78, 84.19, 97.23]
PAPER_T5 = {("scratch_unbalanced", "sem"): [80.84, 33.99, 24.25, 71.74],
            ("ft_unbalanced", "sem"): [92.01, 76.26, 68.26, 86.80],
            ("ft_balanced", "sem"): [92.11, 79.63, 66.27, 86.91],
            ("ft_balanced_aug", "sem"): [93.92, 76.70, 67.84, 88.81],
            ("ft_balanced_aug", "lom"): [88.27, 54.01, 45.43, 81.66]}
PAPER_T6 = {("scratch_unbalanced", "sem"): [86.47, 36.08, 0, 0, 0],
            ("ft_unbalanced", "sem"): [92.03, 77.25, 71.43, 22.05, 63.27],
            ("ft_balanced", "sem"): [92.47, 74.71, 57.44, 33.25, 69.65],
            ("ft_balanced_aug", "sem"): [94.22, 79.85, 72.62, 37.32, 70.46],
            ("ft_balanced_aug", "lom"): [94.11, 50.11, 58.36, 5.21, 19.35]}


def _objects(n_correct: int, n_wrong: int, n_not_seg: int, classes: ClassSet) -> pd.DataFrame:
    """Objects cycling through the foreground classes: correct, wrong (next class), missed."""
    rows = []
    fg = list(classes.foreground)
    for i in range(n_correct + n_wrong + n_not_seg):
        true = fg[i % len(fg)]
        if i < n_correct:
            pred = true
        elif i < n_correct + n_wrong:
            pred = fg[(fg.index(true) + 1) % len(fg)]
        else:
            pred = -1
        rows.append({"sample": f"s{i % 2}", "object_id": i + 1, "true_class": true,
                     "pred_class": pred, "confidence": 0.9})
    return pd.DataFrame(rows)


def _write_run(root, classes, method, variant, modality, correct, wrong, not_seg, pixel=None):
    base = root / ("mvfcnn" if method == "mvfcnn" else "baselines")
    directory = base / (variant if method == "mvfcnn" else method) / modality
    return write_evaluation(
        _objects(correct, wrong, not_seg, classes), classes, method=method, modality=modality,
        variant=variant, out_metrics=directory / "metrics.json",
        out_objects=directory / "objects.csv", out_confusion=directory / "confusion.csv",
        pixel_confusion=pixel)


def _pixel_confusion(k: int, diag: int, off: int) -> np.ndarray:
    return np.full((k, k), off, dtype=np.int64) + np.eye(k, dtype=np.int64) * (diag - off)


def _config(default_config, **run):
    config = copy.deepcopy(default_config)
    config["run"] = {"variants": ["ft_balanced_aug", "scratch_balanced_aug"],
                     "modalities": ["sem"], "baselines": ["cifarnet", "vgg16"],
                     "baseline_modalities": ["sem", "lom"], **run}
    return config


@pytest.fixture()
def paper(repo_root):
    return C.load_paper(repo_root / PAPER_YAML)


@pytest.fixture()
def results(tmp_path, classes):
    """ft_balanced_aug/sem 6 of 8 right (1 missed), scratch_balanced_aug/sem 4 of 8, cifarnet sem
    and lom, vgg16 sem; no handcrafted_svm, vgg19_svm, no LOM MVFCNN."""
    k = classes.num_classes
    _write_run(tmp_path, classes, "mvfcnn", "ft_balanced_aug", "sem", 6, 1, 1,
               _pixel_confusion(k, 90, 10))
    _write_run(tmp_path, classes, "mvfcnn", "scratch_balanced_aug", "sem", 4, 4, 0,
               _pixel_confusion(k, 50, 10))
    _write_run(tmp_path, classes, "cifarnet", None, "sem", 3, 1, 0)
    _write_run(tmp_path, classes, "cifarnet", None, "lom", 1, 3, 0)
    _write_run(tmp_path, classes, "vgg16", None, "sem", 2, 2, 0)
    tiles = tmp_path / "tiles" / "ft_balanced_aug"
    tiles.mkdir(parents=True)
    pd.DataFrame({"sample": ["a", "a", "b"], "y": [0, 0, 0]}).to_csv(tiles / "sem.csv",
                                                                     index=False)
    bench = tmp_path / "benchmarks" / "predict"
    bench.mkdir(parents=True)
    (bench / "x.tsv").write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t100\n")
    (bench / "y.tsv").write_text("s\th:m:s\tmax_rss\n7.5\t0:00:07\t100\n")
    return tmp_path


def _row(frame, **keys):
    mask = np.ones(len(frame), dtype=bool)
    for key, value in keys.items():
        mask &= (frame[key] == value).to_numpy()
    assert mask.sum() == 1, (keys, frame)
    return frame[mask].iloc[0]


def test_paper_yaml_has_the_papers_numbers(paper):
    assert {e["method"]: e["accuracy"] for e in paper["table1"]} == PAPER_T1
    assert {e["variant"]: e["accuracy"] for e in paper["table2"]} == PAPER_T2
    t4 = paper["table4"]
    assert t4["counts"] == PAPER_T4_COUNTS
    assert t4["percent"] == PAPER_T4_PERCENT
    assert t4["total_accuracy"] == 95.23 and t4["not_segmented"] == 48
    # the printed percentages are the column-normalised counts (within rounding)
    counts = np.array(PAPER_T4_COUNTS, dtype=float)
    np.testing.assert_allclose(100 * counts / counts.sum(axis=0), PAPER_T4_PERCENT, atol=0.006)
    # (the paper truncates some: bainite 84.197 -> 84.19, pearlite 97.239 -> 97.23)
    np.testing.assert_allclose(100 * np.diag(counts) / counts.sum(axis=1), PAPER_T4_PRECISION,
                               atol=0.01)


def test_all_tables_columns_and_paper_values(results, classes, default_config, paper):
    config = _config(default_config)
    tables = T.build_tables(results, classes, config, paper)
    assert set(tables) == {f"table{i}" for i in range(1, 7)}

    t1 = tables["table1"]
    assert list(t1.columns) == ["method", "label", "type", "strategy", "ours", "paper",
                                "configuration"]
    assert dict(zip(t1["method"], t1["paper"], strict=True)) == PAPER_T1
    assert _row(t1, method="mvfcnn")["ours"] == 75.0          # 6 of 8, the missed one wrong
    assert _row(t1, method="cifarnet")["ours"] == 75.0
    assert _row(t1, method="vgg16")["ours"] == 50.0
    for missing in ("handcrafted_svm", "vgg19_svm"):           # not run: empty ours, paper kept
        row = _row(t1, method=missing)
        assert math.isnan(row["ours"]) and row["paper"] == PAPER_T1[missing]
    mv = _row(t1, method="mvfcnn")["configuration"]
    assert "ft_balanced_aug" in mv and "init=patches" in mv and "tile 384 px" in mv
    assert "2 train images (3 tiles)" in mv and "8 test objects" in mv

    t2 = tables["table2"]
    assert list(t2.columns) == ["variant", "training_data", "strategy", "ours", "paper",
                                "configuration"]
    for variant, value in PAPER_T2.items():
        assert _row(t2, variant=variant)["paper"] == value
    assert _row(t2, variant="ft_balanced_aug")["ours"] == 75.0
    assert math.isnan(_row(t2, variant="ft_balanced")["ours"])
    extra = _row(t2, variant="scratch_balanced_aug")              # ours only, no paper value
    assert extra["ours"] == 50.0 and math.isnan(extra["paper"])
    assert extra["strategy"] == "from scratch"

    t3 = tables["table3"]
    assert list(t3.columns) == ["method", "label", "input", "strategy", "lom_ours", "lom_paper",
                                "sem_ours", "sem_paper", "configuration"]
    assert dict(zip(t3["method"], t3["lom_paper"], strict=True)) == PAPER_T3_LOM
    assert _row(t3, method="cifarnet")["sem_paper"] == 57.03     # from Table 1
    assert _row(t3, method="mvfcnn")["sem_paper"] == 93.94
    assert _row(t3, method="cifarnet")["lom_ours"] == 25.0
    assert math.isnan(_row(t3, method="mvfcnn")["lom_ours"])     # LOM not run
    assert _row(t3, method="mvfcnn")["sem_ours"] == 75.0

    t5 = tables["table5"]
    metric_cols = [f"{m}_{s}" for m in T.PIXEL_METRICS for s in ("ours", "paper")]
    assert list(t5.columns) == ["network", "data", "balanced", "augmented", "strategy",
                                "variant", "modality", *metric_cols, "configuration"]
    for (variant, modality), values in PAPER_T5.items():
        row = _row(t5, variant=variant, modality=modality)
        assert [row[f"{m}_paper"] for m in T.PIXEL_METRICS] == values
    lom = _row(t5, variant="ft_balanced_aug", modality="lom")
    assert lom["data"] == "LOM" and lom["balanced"] and lom["augmented"]
    assert math.isnan(lom["pixel_accuracy_ours"])
    best = _row(t5, variant="ft_balanced_aug", modality="sem")
    assert best["pixel_accuracy_ours"] == 69.23                  # diag 90 of 90 + 4 * 10
    assert best["mean_iu_ours"] == 52.94                         # 90 / (130 + 130 - 90)
    extra5 = _row(t5, variant="scratch_balanced_aug", modality="sem")
    assert math.isnan(extra5["fw_iu_paper"]) and not math.isnan(extra5["fw_iu_ours"])

    t6 = tables["table6"]
    names = list(classes.names)
    assert list(t6.columns) == ["network", "data", "balanced", "augmented", "strategy",
                                "variant", "modality",
                                *[f"{n}_{s}" for n in names for s in ("ours", "paper")],
                                "configuration"]
    for (variant, modality), values in PAPER_T6.items():
        row = _row(t6, variant=variant, modality=modality)
        assert [row[f"{n}_paper"] for n in names] == values
    assert _row(t6, variant="ft_balanced_aug", modality="sem")["martensite_ours"] == 69.23


def test_table4_confusion_ours_and_paper(results, classes, default_config, paper):
    t4 = T.build_tables(results, classes, _config(default_config), paper)["table4"]
    names = [classes.names[i] for i in classes.foreground]
    assert list(t4.columns) == ["source", "predicted", "quantity", *names, "class_precision",
                                "overall"]
    paper_block = t4[t4["source"] == "paper"]
    counts = [[_row(paper_block, predicted=p, quantity="count")[a] for a in names]
              for p in names]
    assert counts == PAPER_T4_COUNTS
    percent = [[_row(paper_block, predicted=p, quantity="percent")[a] for a in names]
               for p in names]
    assert percent == PAPER_T4_PERCENT
    assert [_row(paper_block, predicted="class_recall")[a] for a in names] == PAPER_T4_RECALL
    assert [_row(paper_block, predicted=p, quantity="percent")["class_precision"]
            for p in names] == PAPER_T4_PRECISION
    assert _row(paper_block, predicted="total_accuracy")["overall"] == 95.23
    assert _row(paper_block, predicted="not_segmented")["overall"] == 48
    assert _row(paper_block, predicted="object_accuracy")["overall"] == 93.94

    ours = t4[t4["source"] == "ours"]
    # fake run: 8 objects over 4 classes, objects 1-6 right, 7 (class 3) -> 4, 8 (class 4) missed
    assert _row(ours, predicted=names[0], quantity="count")[names[0]] == 2
    assert _row(ours, predicted=names[3], quantity="count")[names[2]] == 1
    assert _row(ours, predicted=names[2], quantity="percent")[names[2]] == 50.0
    assert _row(ours, predicted="not_segmented")[names[3]] == 1
    assert _row(ours, predicted="not_segmented")["overall"] == 1
    assert _row(ours, predicted="total_accuracy")["overall"] == round(600 / 7, 2)
    assert _row(ours, predicted="object_accuracy")["overall"] == 75.0
    assert _row(ours, predicted="class_recall")[names[2]] == 50.0


def test_no_runs_at_all_gives_paper_rows_only(tmp_path, classes, default_config, paper):
    tables = T.build_tables(tmp_path, classes, _config(default_config), paper)
    assert tables["table1"]["ours"].isna().all()
    assert list(tables["table1"]["paper"]) == list(PAPER_T1.values())
    assert tables["table5"][[c for c in tables["table5"] if c.endswith("_ours")]].isna().all().all()
    t4 = tables["table4"]
    assert t4.loc[t4["source"] == "ours", "overall"].isna().all()
    assert (t4["source"] == "paper").sum() == (t4["source"] == "ours").sum()
    RN.write_tables(tables, tmp_path / "out")                    # renders without crashing
    assert "| MVFCNN | pixel-based | fine tuning |  | 93.94 |" in (
        tmp_path / "out" / "table1.md").read_text()


def test_best_variant_fallback_is_stated(tmp_path, classes, default_config, paper):
    k = classes.num_classes
    _write_run(tmp_path, classes, "mvfcnn", "scratch_balanced_aug", "sem", 2, 6, 0,
               _pixel_confusion(k, 50, 10))
    _write_run(tmp_path, classes, "mvfcnn", "ft_balanced", "sem", 5, 3, 0,
               _pixel_confusion(k, 60, 10))
    config = _config(default_config, variants=["scratch_balanced_aug", "ft_balanced"])
    runs = C.collect_runs(tmp_path, config)
    variant, why = C.best_variant(runs)
    assert variant == "ft_balanced" and "ft_balanced_aug was not run" in why
    t1 = T.build_tables(tmp_path, classes, config, paper, runs=runs)["table1"]
    row = _row(t1, method="mvfcnn")
    assert row["ours"] == 62.5 and "best variant: ft_balanced" in row["configuration"]
    # the same decision, once, as the best-run file the figure jobs read
    out = tmp_path / "best.json"
    assert cli_main(["best-run", "--results-dir", str(tmp_path), "--config-json",
                     json.dumps(config), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"sem": {"variant": "ft_balanced", "why": why}}
    assert C.read_best_run(out, "sem") == (variant, why)
    assert C.read_best_run(out, "lom") == (None, "no MVFCNN run on LOM")


def test_report_reads_only_the_runs_its_rule_declares(tmp_path, classes, default_config,
                                                      paper):
    k = classes.num_classes
    for variant, correct in (("scratch_balanced_aug", 2), ("ft_balanced", 5)):
        _write_run(tmp_path, classes, "mvfcnn", variant, "sem", correct, 8 - correct, 0,
                   _pixel_confusion(k, 50, 10))
    config = _config(default_config, variants=["scratch_balanced_aug", "ft_balanced"])
    scratch = tmp_path / "mvfcnn" / "scratch_balanced_aug" / "sem" / "metrics.json"
    assert set(C.collect_runs(tmp_path, config)) == {
        ("mvfcnn", "scratch_balanced_aug", "sem"), ("mvfcnn", "ft_balanced", "sem")}
    # a run on disk that the rule does not declare is not read ...
    assert set(C.collect_runs(tmp_path, config, [scratch])) == {
        ("mvfcnn", "scratch_balanced_aug", "sem")}
    out = tmp_path / "best.json"
    assert cli_main(["best-run", "--results-dir", str(tmp_path), "--config-json",
                     json.dumps(config), "--runs", str(scratch), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["sem"]["variant"] == "scratch_balanced_aug"
    # ... and a declared file that no configured run writes is named as an error
    stray = tmp_path / "mvfcnn" / "other" / "sem" / "metrics.json"
    with pytest.raises(InputError, match="no configured run writes it") as err:
        C.collect_runs(tmp_path, config, [scratch, stray])
    assert str(stray) in str(err.value)


def test_combinations_and_lom(tmp_path, classes, default_config, paper):
    k = classes.num_classes
    _write_run(tmp_path, classes, "mvfcnn", "ft_balanced_aug", "lom", 3, 5, 0,
               _pixel_confusion(k, 40, 10))
    config = _config(default_config, combinations=[
        {"variant": "ft_balanced_aug", "modality": "lom"}])
    tables = T.build_tables(tmp_path, classes, config, paper)
    assert _row(tables["table3"], method="mvfcnn")["lom_ours"] == 37.5
    row = _row(tables["table5"], variant="ft_balanced_aug", modality="lom")
    assert row["pixel_accuracy_ours"] == 50.0 and row["pixel_accuracy_paper"] == 88.27


def test_class_names_come_from_config(results, default_config, paper):
    config = _config(default_config)
    config["classes"][3]["name"] = "granular_bainite"
    classes = ClassSet.from_config(config)
    # the fake run was written with the old names; rewrite it with the new ones
    k = classes.num_classes
    _write_run(results, classes, "mvfcnn", "ft_balanced_aug", "sem", 6, 1, 1,
               _pixel_confusion(k, 90, 10))
    tables = T.build_tables(results, classes, config, paper)
    assert "granular_bainite" in tables["table4"].columns
    assert "bainite" not in tables["table4"].columns
    assert "granular_bainite_paper" in tables["table6"].columns
    assert _row(tables["table6"], variant="ft_balanced", modality="sem")[
        "granular_bainite_paper"] == 33.25                       # matched by index
    md = RN.render_markdown("table4", tables["table4"])
    assert "granular_bainite" in md
    assert "granular_bainite (ours)" in RN.render_markdown("table6", tables["table6"])


def test_other_class_count_leaves_paper_class_cells_empty(tmp_path, default_config, paper):
    config = _config(default_config)
    config["classes"] = [{"index": 0, "name": "matrix", "color": "#000000"},
                         {"index": 1, "name": "network", "color": "#ff00ff"},
                         {"index": 2, "name": "spheroidite", "color": "#00ffff"}]
    classes = ClassSet.from_config(config)
    tables = T.build_tables(tmp_path, classes, config, paper)
    assert tables["table6"][["matrix_paper", "network_paper"]].isna().all().all()
    assert list(tables["table1"]["paper"]) == list(PAPER_T1.values())
    paper_block = tables["table4"][tables["table4"]["source"] == "paper"]
    assert paper_block[["network", "spheroidite"]].isna().all().all()
    assert _row(paper_block, predicted="total_accuracy")["overall"] == 95.23


def test_cli_writes_every_file(results, default_config, repo_root, capsys):
    config = _config(default_config)
    out = results / "tables"
    assert tables_cli(["--results-dir", str(results), "--config-json", json.dumps(config),
                       "--paper", str(repo_root / PAPER_YAML), "--outdir", str(out)]) == 0
    for name in T.TABLE_NAMES:
        for suffix in ("csv", "md", "html"):
            assert (out / f"{name}.{suffix}").stat().st_size > 0
    csv = pd.read_csv(out / "table1.csv")
    assert csv.loc[csv["method"] == "vgg19_svm", "ours"].isna().all()   # empty cell in the CSV
    summary = (out / "summary.md").read_text()
    assert "| Pauly et al. [21] | n/a | 48.89% |" in summary
    assert "| MVFCNN | 75.00% | 93.94% | -18.94 |" in summary
    assert "width-reduced VGG16" in summary and "0:00:20" in summary
    assert "Missing runs" in summary and "vgg16/-/lom" in summary
    assert "<table>" in (out / "table4.html").read_text()
    assert "no metrics.json" not in capsys.readouterr().out     # warnings go to stderr


def test_a_dataset_with_other_classes_gets_no_paper_comparison(tmp_path, default_config,
                                                                 repo_root):
    """Issue 21 item 6: background/oxide/crack printed the steel paper's rows and an
    'ours - paper' column, comparing unrelated tasks."""
    config = _config(default_config)
    config["classes"] = [{"index": 0, "name": "background", "color": "#000000"},
                         {"index": 1, "name": "oxide", "color": "#ff00ff"},
                         {"index": 2, "name": "crack", "color": "#00ffff"}]
    classes = ClassSet.from_config(config)
    _write_run(tmp_path, classes, "mvfcnn", "ft_balanced_aug", "sem", 6, 1, 1,
               _pixel_confusion(3, 90, 10))
    _write_run(tmp_path, classes, "cifarnet", None, "sem", 5, 3, 0)
    paper = C.load_paper(repo_root / PAPER_YAML)
    assert not C.paper_classes_match(classes, paper)
    assert C.paper_classes_match(ClassSet.from_config(default_config), paper)
    out = tmp_path / "tables"
    assert tables_cli(["--results-dir", str(tmp_path), "--config-json", json.dumps(config),
                       "--paper", str(repo_root / PAPER_YAML), "--outdir", str(out)]) == 0
    table1 = pd.read_csv(out / "table1.csv")
    assert "paper" not in table1.columns
    assert sorted(table1["method"]) == ["cifarnet", "mvfcnn"]  # only what this run measured
    assert not [c for c in pd.read_csv(out / "table5.csv").columns if c.endswith("_paper")]
    assert list(pd.read_csv(out / "table5.csv")["variant"]) == ["ft_balanced_aug"]
    assert set(pd.read_csv(out / "table4.csv")["source"]) == {"ours"}
    summary = (out / "summary.md").read_text()
    assert "ours - paper" not in summary and "93.94" not in summary
    assert "are not this dataset's (background, oxide, crack)" in summary
    assert "| MVFCNN | 75.00% |" in summary
    for name in T.TABLE_NAMES:
        text = (out / f"{name}.md").read_text()
        assert "(paper)" not in text and "Paper (Azimi" not in text, name


# --- compare-tables: the same numbers and words, measured times aside


def test_measured_times_are_masked_and_nothing_else():
    from mvfcnn.report.describe import hms_text, seconds_text, without_measured_times

    text = (f"budget: FCN iterations 400/300/300 (32s/16s/8s), batch 1 ({seconds_text(64.2)}) + "
            f"trunk pretraining 400 iterations x 32 patches ({seconds_text(9.04)}); 78 test "
            f"objects, 97.96; tile 384 px; 0.25 s; Wall time: {hms_text(458)} (h:m:s)")
    assert seconds_text(9.04) == "9.0 s" and hms_text(458) == "0:07:38"
    assert without_measured_times(text) == (
        "budget: FCN iterations 400/300/300 (32s/16s/8s), batch 1 (<time>) + trunk pretraining "
        "400 iterations x 32 patches (<time>); 78 test objects, 97.96; tile 384 px; 0.25 s; "
        "Wall time: <time>")


def test_compare_tables_tells_times_from_numbers(tmp_path, capsys):
    from mvfcnn.report.compare import compare_tables

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    row = "method,ours,note\nvgg16,93.59,\"60 epochs ({})\"\n"
    (old / "table1.csv").write_text(row.format("11 s"))
    (new / "table1.csv").write_text(row.format("16 s"))
    (old / "table4.csv").write_text("a,b\n1,2\n")
    (new / "table4.csv").write_text("a,b\n1,2\n")
    (old / "summary.md").write_text("- **Wall time**: 0:07:38 (h:m:s)\n")
    (new / "summary.md").write_text("- **Wall time**: 0:07:21 (h:m:s)\n")
    verdicts = {c.name: c.verdict for c in compare_tables(old, new)}
    assert verdicts == {"table1.csv": "times only", "table4.csv": "identical",
                        "summary.md": "times only"}
    assert cli_main(["compare-tables", str(old), str(new)]) == 0

    (new / "table1.csv").write_text(row.format("16 s").replace("93.59", "93.60"))
    (old / "table5.csv").write_text("x\n")
    [table1] = [c for c in compare_tables(old, new) if c.name == "table1.csv"]
    assert table1.verdict == "different" and "93.59" in table1.first_difference
    assert {c.name: c.verdict for c in compare_tables(old, new)}["table5.csv"] == "only in old"
    assert cli_main(["compare-tables", str(old), str(new)]) == 1
    assert "DIFFERENT" in capsys.readouterr().err
    assert cli_main(["compare-tables", str(old), str(tmp_path / "missing")]) == 1
