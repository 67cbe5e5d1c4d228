"""The benchmark scripts keep working: their core functions on tiny inputs (fast, default run)
and each script end to end with ``--quick`` (slow: one process per variant)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _common

    return _common


def test_network_flops_match_the_layer_arithmetic(bench) -> None:
    # Without the 100 px padding and on a multiple of 32 the FLOPs per pixel are VGG16's 845k;
    # the real layer shapes (pad 100, valid 7x7 fc6) make a 1000 px tile cost ~1125 GFLOP/MP.
    flops = bench.network_flops(bench.REAL_LAYOUT, 1000, 1000)
    assert 1.10e12 < flops < 1.15e12
    assert bench.network_flops(bench.REAL_LAYOUT, 1000, 1000, batch=2) == 2 * flops
    small = bench.network_flops(bench.REAL_LAYOUT, 192, 192) / 192**2
    assert small > 2.5 * flops / 1000**2  # the padding overhead dominates small tiles


def test_random_model_predicts_several_classes(bench) -> None:
    import torch

    from mvfcnn.inference.predict import predict_image

    torch.set_num_threads(1)
    # seed 1: the thin quick network's seed 0 happens to favour one class on this small image
    # (5 of seeds 0-5 give 3-4 classes; the RNG stream moved when the upsamplers stopped
    # drawing a random init that reset_head overwrote anyway)
    model = bench.random_fcn8s(bench.QUICK_LAYOUT, seed=1)
    sem, ids, n_objects = bench.synthetic_sem(96, 128, seed=3)
    assert sem.dtype == np.uint8 and ids.shape == sem.shape and n_objects == ids.max()
    pred = predict_image(model, sem, tile_size=64, overlap=8, batch_size=2, progress=False)
    assert len(np.unique(pred)) >= 2  # calibrated score layers: not one class everywhere


def test_run_config_reports_consistent_figures(bench) -> None:
    import inference as bench_inference
    import torch

    torch.set_num_threads(1)
    sem, ids, _ = bench.synthetic_sem(80, 100, seed=1)
    config = {**bench_inference.DEFAULT, "tile_size": 64, "overlap": 8}
    result = bench_inference.run_config(config, sem, bench.QUICK_LAYOUT, ids)
    pred = result.pop("_pred")
    assert pred.shape == sem.shape
    assert result["tiles"] == 4 and result["tile_shape"] == [44, 54]  # fitted windows
    assert result["network_flop"] == 4 * bench.network_flops(bench.QUICK_LAYOUT, 44, 54)
    assert result["breakdown_s"]["network"] <= result["wall_s"]
    assert sum(result["class_histogram"]) == sem.size
    assert result["objects_voted"] is not None and result["peak_rss_mb"] > 0


def test_matmul_peak_and_machine_info(bench) -> None:
    peak = bench.matmul_peak("fp32", size=128, repeats=2)
    assert peak["best_tflops"] > 0 and peak["best_tflops"] >= peak["median_tflops"]
    info = bench.machine_info(("torch",))
    assert info["torch_threads"] >= 1 and info["logical_cores"] >= 1 and "cpu_flags" in info
    assert set(info["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert info["precision_auto"] in ("fp32", "bf16") and info["precision_reason"]
    assert len(info["loadavg"]) == 3
    assert "family" in info["cpu_generation"] or not Path("/proc/cpuinfo").exists()


@pytest.mark.parametrize(("family", "flags", "expected"), [
    ("26", "avx2 avx512f avx512_bf16", "AuthenticAMD family 26 model 2 (AMD Zen 5)"),
    ("25", "avx2 avx512f avx512_bf16", "AuthenticAMD family 25 model 2 (AMD Zen 4)"),
    ("25", "avx2", "AuthenticAMD family 25 model 2 (AMD Zen 3)"),
])
def test_cpu_generation_names_amd_cores_a_vm_hides(bench, family, flags, expected) -> None:
    text = (f"vendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: 2\n"
            f"model name\t: AMD EPYC\nflags\t\t: {flags}\n")
    assert bench.cpu_generation(text) == expected
    intel = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
    assert bench.cpu_generation(intel) == "GenuineIntel family 6 model 143"
    assert bench.cpu_generation("") == ""


def test_report_names_the_machine(bench) -> None:
    import report

    new = {"machine": {"cpu_model": "AMD EPYC 9B45", "usable_cores": 2,
                       "flags": {"avx2": True, "avx512f": True, "avx512_bf16": True,
                                 "amx_bf16": False},
                       "precision_auto": "bf16",
                       "precision_reason": "CPU has avx512_bf16: bf16 autocast",
                       "loadavg": [1.0, 0.5, 0.3]}}
    assert report.machine_line(new) == (
        "Machine: AMD EPYC 9B45, 2 cores; flags: avx2 yes, avx512f yes, avx512_bf16 yes, "
        "amx_bf16 no; precision auto → bf16 (CPU has avx512_bf16: bf16 autocast); load "
        "1.0/0.5/0.3 (1/5/15 min).")
    old = {"machine": {"cpu_model": "AMD EPYC 7B13", "cpu_flags": ["avx2"]},
           "loadavg_start": [2.0, 2.0, 2.0]}
    assert report.machine_line(old) == (
        "Machine: AMD EPYC 7B13; flags: avx2 yes, avx512f no, avx512_bf16 no, amx_bf16 no; "
        "precision auto: not recorded; load 2.0/2.0/2.0 (1/5/15 min).")


def test_report_demo_and_precision_tables(bench) -> None:
    import report

    machine = {"cpu_model": "AMD EPYC", "usable_cores": 2, "flags": {"avx2": True},
               "precision_auto": "fp32", "precision_reason": "capped"}
    demo = {"machine": machine, "emulation": {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "wall_s": 725.4,
            "jobs": 98, "rule_s": {"train_fcn": 400.2, "pretrain_trunk": 30.0},
            "object_accuracy": {"mvfcnn/ft_balanced_aug": {"sem": 0.962, "lom": 0.9}},
            "targets": {"wall_le_15_min": True, "sem_accuracy_ge_95pct": True}}
    lines = report.demo_table([demo])
    assert lines[4] == ("| AMD EPYC capped at AVX2 (emulated AVX2-only) | fp32 | 12 min 05 s | "
                        "98 | 400 s | 30 s | 0 s | 96.2 % | 90.0 % | yes |")
    run = {"crop_s": 12.34, "precision": "fp32"}
    native = {"machine": {**machine, "precision_auto": "bf16"}, "variants": {"crop": [64, 64]},
              "summary": {"variants": {"a": run, "b": {"crop_s": 5.0, "precision": "bf16"}}}}
    capped = {"machine": machine, "emulation": {"x": "y"}, "variants": {"crop": [64, 64]},
              "summary": {"variants": {"a": {**run, "crop_s": 20.0}}}}
    lines = report.precision_table([native, capped])
    assert lines[2] == ("| variant | AMD EPYC (auto → bf16) | AMD EPYC capped at AVX2 "
                        "(auto → fp32) |")
    assert lines[4:6] == ["| a | 12.3 s (fp32) | 20.0 s (fp32) |", "| b | 5.0 s (bf16) | – |"]


def test_train_step_and_loader_core(bench, tmp_path) -> None:
    import tiles
    import torch
    import train_step

    torch.set_num_threads(1)
    step = train_step.measure(64, "fp32", bench.QUICK_LAYOUT, batch=1, iters=1)
    # seconds_per_iter is rounded to 1 ms: allow that rounding in the reciprocal
    assert step["seconds_per_iter"] > 0 and step["tiles_per_s"] == pytest.approx(
        1 / step["seconds_per_iter"], rel=0.0006 / step["seconds_per_iter"] + 0.001)
    images = tiles.make_images(tmp_path, 2, 160)
    rate = tiles.loader_rate(images, size=64, workers=0, batch=2, n_batches=3)
    assert rate["tiles_read"] == 6 and rate["rotations"] == [0, 1, 2, 3]
    assert rate["tiles_per_s_warm"] > 0


def test_layer_flops_add_up_and_names(bench) -> None:
    import layers

    per_module = layers.module_flops(bench.REAL_LAYOUT, 320, 288)
    assert sum(per_module.values()) == bench.network_flops(bench.REAL_LAYOUT, 320, 288)
    assert per_module["trunk.fc6"] > per_module["trunk.fc7"] > 0
    assert layers.layer_name("trunk.features.2") == "conv1_2"
    assert layers.layer_name("trunk.features.3") == "relu"
    assert layers.layer_name("trunk.relu6") == "relu"
    assert layers.layer_name("score_fr") == "score_fr"


@pytest.mark.slow
@pytest.mark.parametrize("script,extra", [
    ("inference.py", ["--variants", "fp32_cl_t1000_o100,bf16_cl_t1000_o100",
                      "--trained-model", "none"]),
    ("train_step.py", ["--sizes", "64"]),
    ("tiles.py", ["--workers", "0"]),
    ("scaling.py", ["--sizes", "100x100,200x200"]),
    ("layers.py", ["--repeats", "1"]),
    ("precision_traps.py", ["--repeats", "1"]),
    ("conv_padding.py", ["--repeats", "1"]),
])
def test_benchmark_script_quick(script: str, extra: list[str], tmp_path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out),
                           "--threads", "1", *extra], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    if script == "conv_padding.py":  # per conv shape: both paddings timed, the verdict kept
        heights = [r["height"] for r in report["layers"]]  # conv1_2 .. conv5_x, distinct
        assert len(heights) >= 5 and heights == sorted(heights, reverse=True)
        assert all(r["onednn_padding_ms"] > 0 and r["prepadded_ms"] > 0 for r in report["layers"])
        assert report["prepadded_faster"] == [
            f"{r['cin']}->{r['cout']} at {r['height']}x{r['width']}" for r in report["layers"]
            if r["prepadded_ratio"] < report["faster_below"]]
        return
    if script == "precision_traps.py":  # per layer, not a suite: its own keys
        assert report["quick"] is True and report["precision_auto"] in ("fp32", "bf16")
        assert set(report["cases"]) == {"train_quick_32s", "train_quick_16s",
                                        "train_quick_8s", "inference"}
        names = {r["layer"] for r in report["layers"]}
        assert {"conv1_1", "fc6", "upscore", "upscore8", "score_fr", "pool1"} <= names
        assert all(r["fp32_ms"] > 0 for r in report["layers"])
        assert report["flagged"] == [r for r in report["layers"] if r["flagged"]]
        return
    if script == "layers.py":  # one window, not a suite: its own keys
        assert report["quick"] is True and report["forward_s"] > 0
        assert sum(v["gflop"] for v in report["layers"].values()) == pytest.approx(
            report["gflop"], abs=0.5)
        return
    assert report["quick"] is True and report["machine"]["logical_cores"] >= 1
    assert "loadavg_start" in report and report["summary"]
    if script == "inference.py":
        assert report["summary"]["full_image"]["wall_s"] > 0
        assert 0.5 < report["summary"]["agreement"]["bf16 vs fp32"] <= 1.0
        variants = report["summary"]["variants"]
        assert variants["fp32_cl_t1000_o100"]["precision"] == "fp32"
        assert variants["bf16_cl_t1000_o100"]["precision"] == "bf16"
        assert set(report["summary"]["targets"]) == {
            "wall_le_45s", "network_ge_40pct_bf16_peak", "peak_rss_le_3gb",
            "bf16_agreement_ge_99_5pct"}
    if script == "scaling.py":
        assert [r["megapixels"] for r in report["summary"]] == [0.01, 0.04]


def test_precision_trap_rule_and_tables(bench) -> None:
    import precision_traps
    import report

    assert precision_traps.is_trap(0.010, 0.016)  # 1.6x and 6 ms slower
    assert not precision_traps.is_trap(0.010, 0.014)  # 1.4x
    assert not precision_traps.is_trap(0.0002, 0.0006)  # 3x, but 0.4 ms: noise
    traps = {"precision_auto": "bf16", "flag_ratio": 1.5, "flag_min_ms": 0.5, "flagged": [],
             "machine": {"cpu_model": "Xeon"},
             "layers": [{"layer": "pool2", "input": [1, 32, 9, 9], "input_dtype": "bfloat16",
                         "backward": False, "fp32_ms": 0.4, "bf16_ms": 0.5, "ratio": 1.25}],
             "crash_probe": {"what": "probe", "threads": 2, "crashed": True,
                             "returncode": -11, "last_line": ""}}
    lines = report.traps_table(traps)
    assert lines[0].startswith("Precision traps (`benchmarks/precision_traps.py`): 1 distinct")
    assert "**0**" in lines[0]
    assert lines[4] == "| pool2 | 1×32×9×9 bfloat16 | no | 0.40 | 0.50 | 1.25 |"
    assert lines[6] == "Crash probe (probe, 2 threads): crashed (exit -11)."
    step = {"networks": {"demo": {"width": 0.25, "fc_channels": 512, "freeze": "pool4"}},
            "summary": {"demo_384": {
                "seconds_per_iter": {"32s": {"fp32": 0.07, "bf16": 0.03, "auto(bf16)": 0.031},
                                     "8s": {"fp32": 0.08, "bf16": 0.04, "auto(bf16)": 0.032}},
                "fcn32s_over_fcn8s": {"auto(bf16)": 0.97}, "bf16_speedup": {"32s": 2.33}}}}
    lines = report.training_tables(step, None)
    assert lines[4] == ("| demo (width 0.25, fc 512, frozen to pool4), 384 px | 32s | 0.070 | "
                        "0.030 | 0.031 (bf16) | 2.3× |")
    assert lines[5] == "|  | 8s | 0.080 | 0.040 | 0.032 (bf16) | – |"
    assert lines[6] == "| | FCN-32s / FCN-8s | auto(bf16) 0.97 | | | |"


def test_metaldam_ablation_folds_means_and_table(bench, tmp_path) -> None:
    """Issue 22's ablation: folds of one lever from several runs, mean ± SE, the table."""
    import metaldam_ablation as ablation

    machine = {"cpu_model": "test CPU", "cpu_flags": [], "precision_auto": "fp32"}

    def per_fold(ma: float, defect: float | None) -> dict:
        return {"mean_iu": 0.5, "per_class_iu": {
            "matrix": 0.6, "austenite": 0.8, "martensite_austenite": ma, "precipitate": 0.0,
            "defect": defect}}

    base = ["config/config.yaml", "config/metaldam.yaml"]
    runs = {
        "metaldam_fold0_rare_amx.json": (["0"], {"0": per_fold(0.3, None)}, 7.0,
                                         base + ["/tmp/lev_rare.yaml"]),
        "metaldam_folds12_rare_amx.json": (["1", "2"], {"1": per_fold(0.4, 0.2),
                                                        "2": per_fold(0.5, 0.4)}, 12.0,
                                           base + ["benchmarks/overlays/x.yaml"]),
        "metaldam_folds12_odd_amx.json": (["1"], {"1": per_fold(0.1, 0.1)}, 5.0,
                                          ["config/config.yaml"]),
    }
    for name, (folds, metrics, wall, configs) in runs.items():
        (tmp_path / name).write_text(json.dumps({
            "folds": folds, "per_fold": metrics, "wall_min": wall, "configs": configs,
            "machine": machine}))
    summary = ablation.summarize(ablation.collect(tmp_path))
    rare = summary["rare"]
    assert rare["folds"] == ["0", "1", "2"]
    ma = rare["stats"]["iu_martensite_austenite"]
    assert ma["mean"] == pytest.approx(0.4) and ma["n"] == 3
    assert ma["se"] == pytest.approx(0.1 / 3 ** 0.5)  # sd 0.1 over 3 folds
    assert rare["stats"]["iu_defect"]["n"] == 2  # fold 0: neither labelled nor predicted
    # without precipitate: nan-mean of matrix, austenite, M/A (and defect where present)
    assert rare["per_fold"]["0"]["mean_iu_without_precipitate"] == pytest.approx(1.7 / 3)
    assert rare["minutes_per_fold"] == pytest.approx((7.0 + 6.0) / 2)
    table = ablation.markdown(summary)
    assert "| rare: tiles.rare_share 0.1" in table and "| 0,1,2 | 0.500 ± 0.000 |" in table
    assert "0.400 ± 0.058" in table
    # an inference lever on an earlier run's models costs that run's jobs + the new prediction
    (tmp_path / "metaldam_folds01_tta_amx.json").write_text(json.dumps({
        "folds": ["0", "1"], "per_fold": {"0": per_fold(0.3, None), "1": per_fold(0.4, 0.2)},
        "wall_min": 1.0, "predict_only": True, "configs": base, "machine": machine,
        "job_s": {"train_fcn/a": 600.0, "train_fcn/b": 540.0, "predict/x": 60.0}}))
    tta = ablation.summarize(ablation.collect(tmp_path))["tta"]
    assert tta["minutes_per_fold"] == pytest.approx(1200.0 / 60 / 2)
    # a resumed run's wall time misses its first part: its jobs' seconds count instead
    (tmp_path / "metaldam_fold0_ssl_amx.json").write_text(json.dumps({
        "folds": ["0"], "per_fold": {"0": per_fold(0.3, None)}, "wall_min": 2.0,
        "resumed": "stopped once", "configs": base, "machine": machine,
        "job_s": {"pretrain_trunk/a": 120.0, "train_fcn/v_sem_fold0_8s": 480.0,
                  "train_fcn/v_sem_fold2_8s": 300.0}}))  # fold 2 is not reported: left out
    ssl = ablation.summarize(ablation.collect(tmp_path))["ssl"]
    assert ssl["minutes_per_fold"] == pytest.approx(10.0)
    # so does one whose folder was assembled from earlier runs' files
    (tmp_path / "metaldam_fold0_pieces_amx.json").write_text(json.dumps({
        "folds": ["0"], "per_fold": {"0": per_fold(0.3, None)}, "wall_min": 1.0,
        "assembled": "folds copied in", "configs": base, "machine": machine,
        "job_s": {"train_fcn/v_sem_fold0_8s": 480.0, "train_baseline/v_sem_fold0": 900.0}}))
    pieces = ablation.summarize(ablation.collect(tmp_path))["pieces"]
    assert pieces["minutes_per_fold"] == pytest.approx(8.0)
    # new stages on a copied run (--extend): summed job times, the object baselines left out
    (tmp_path / "metaldam_folds0_grow_amx.json").write_text(json.dumps({
        "folds": ["0"], "per_fold": {"0": per_fold(0.3, None)}, "wall_min": 1.0,
        "extend": [], "configs": base, "machine": machine,
        "job_s": {"train_fcn/v_sem_fold0_2s": 300.0, "train_fcn/v_sem_fold0_4s": 540.0,
                  "train_baseline/vgg16_sem_fold0": 900.0, "crop_objects/f0": 60.0}}))
    grow = ablation.summarize(ablation.collect(tmp_path))["grow"]
    assert grow["minutes_per_fold"] == pytest.approx(14.0)
    # folds 0-2 and 3-5 of one lever from two runs: the 6-fold summary; folds 0-2 stay apart
    (tmp_path / "metaldam_folds345_rare_amx.json").write_text(json.dumps({
        "folds": ["3", "4", "5"], "per_fold": {f: per_fold(0.7, 0.5) for f in "345"},
        "wall_min": 30.0, "configs": base + ["benchmarks/overlays/x.yaml"], "machine": machine}))
    levers = ablation.collect(tmp_path)
    assert ablation.summarize(levers)["rare"]["folds"] == ["0", "1", "2"]
    six = ablation.summarize(levers, ablation.ALL_FOLDS)
    assert six["rare"]["folds"] == list("012345") and "ssl" in six  # ssl: fold 0 only
    assert six["rare"]["stats"]["iu_martensite_austenite"]["mean"] == pytest.approx(0.55)
    assert six["rare"]["stats"]["iu_martensite_austenite"]["n"] == 6


def test_metaldam_ablation_tells_which_levers_the_default_holds(bench, tmp_path) -> None:
    """A lever is in the default when its overlays change nothing on it; the former default
    (which the early levers were layered on) does not count as a lever's overlay."""
    import metaldam_ablation as ablation

    (tmp_path / "config").mkdir()
    overlays = tmp_path / "benchmarks" / "overlays"
    overlays.mkdir(parents=True)
    (tmp_path / "config" / "config.yaml").write_text("fcn: {dice_weight: 0, lr: 1.0e-4}\n")
    (tmp_path / "config" / "metaldam.yaml").write_text("fcn: {dice_weight: 0.5}\n")
    (overlays / "metaldam_former_default.yaml").write_text("fcn: {dice_weight: 0}\n")
    (overlays / "metaldam_lever_dice.yaml").write_text("fcn: {dice_weight: 0.5}\n")
    (overlays / "metaldam_lever_lr.yaml").write_text("fcn: {lr: 3.0e-4}\n")
    base = ["config/config.yaml", "config/metaldam.yaml"]
    former = "benchmarks/overlays/metaldam_former_default.yaml"
    assert ablation.in_default(base + [former, "benchmarks/overlays/metaldam_lever_dice.yaml"],
                               tmp_path) is True
    assert ablation.in_default(base + ["/tmp/lev_dice.yaml"], tmp_path) is True  # a /tmp copy
    assert ablation.in_default(base + ["benchmarks/overlays/metaldam_lever_lr.yaml"],
                               tmp_path) is False
    assert ablation.in_default(base + [former], tmp_path) is False  # the former default alone
    assert ablation.in_default(base + ["/tmp/elsewhere.yaml"], tmp_path) is None
    # benchmarks/metaldam.py --folds's own overlay (object offsets off) is not the lever's
    subset = f"/work/runs/lever/{bench.FOLDS_SUBSET_OVERLAY}"
    assert ablation.in_default(base + ["/tmp/lev_dice.yaml", subset], tmp_path) is True
    table = ablation.markdown({"dice": {"what": "Dice", "folds": ["0"], "stats": {},
                                        "minutes_per_fold": 7.0, "in_default": True}})
    assert table.splitlines()[-1].endswith("| 7.0 | yes |")


def test_metaldam_fold_subset_phase_fractions_are_exact(bench, tmp_path) -> None:
    """benchmarks/metaldam.py --folds: each test prediction against its prepared labels, in
    percentage points (a 10x10 image: truth 60 matrix / 40 austenite, prediction 50 / 50;
    label 255 left out of both)."""
    import metaldam

    from mvfcnn.core.io import write_image

    labels = np.zeros((10, 10), np.uint8)
    labels[6:] = 1
    labels[0, 0] = 255  # ignored: 99 labelled pixels
    pred = np.zeros((10, 10), np.uint8)
    pred[5:] = 1
    run = tmp_path / "results" / "mvfcnn" / "v" / "sem" / "fold3" / "pred"
    run.mkdir(parents=True)
    write_image(run / "s1.tif", pred)
    (tmp_path / "results" / "prepared" / "s1").mkdir(parents=True)
    write_image(tmp_path / "results" / "prepared" / "s1" / "labels.tif", labels)
    record = metaldam.fold_phase_fractions(tmp_path, "v", ["3"])
    assert record["n_test_predictions"] == 1
    rows = {r["class_name"]: r for r in record["per_class"]}
    assert rows["austenite"]["bias_pp"] == pytest.approx(100 * (50 / 99 - 40 / 99))
    assert rows["matrix"]["mean_abs_error_pp"] == pytest.approx(100 * 10 / 99)
    assert rows["precipitate"]["max_abs_error_pp"] == 0


def test_metaldam_extend_keeps_the_earlier_run_and_trains_what_is_new(bench, tmp_path,
                                                                        monkeypatch) -> None:
    """benchmarks/metaldam.py --extend: the copied run's files are marked current under its own
    overlays, then prediction is forced with file-time triggers only (so only missing stages
    train), and the time target is judged on the sum of every job's time."""
    import metaldam

    calls = []

    def fake_run(workdir, configs, *, cores, extra=()):
        calls.append((list(configs), list(extra)))
        return subprocess.CompletedProcess([], 0, "", ""), 5.0

    monkeypatch.setattr(bench, "run_workflow", fake_run)
    monkeypatch.setattr(bench, "machine_info", lambda *_: {})  # no precision probe here
    tables = tmp_path / "work" / "results" / "tables"
    tables.mkdir(parents=True)
    (tables / "metaldam.csv").write_text("fold,mean_iu,mean_iu_secondary\n0,0.5,0.6\n"
                                         "mean,0.5,0.6\n")
    tsvs = tmp_path / "work" / "results" / "benchmarks" / "train_fcn"
    tsvs.mkdir(parents=True)
    for name, seconds in (("a_32s", 3000.0), ("a_2s", 4800.0)):
        (tsvs / f"{name}.tsv").write_text(f"s\th:m:s\n{seconds}\t0\n")
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    out = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", ["metaldam.py", "--workdir", str(tmp_path / "work"),
                                      "--extend", str(old), "--configfile", str(new),
                                      "--out", str(out)])
    assert metaldam.main() == 0
    (touch_configs, touch_extra), (run_configs, run_extra) = calls
    assert touch_configs[2:] == [str(old)] and "--touch" in touch_extra
    assert run_configs[2:] == [str(new)]
    assert touch_configs[:2] == run_configs[:2]
    assert run_extra[:4] == ["--forcerun", "predict", "--rerun-triggers", "mtime"]
    report = json.loads(out.read_text())
    assert report["job_min_sum"] == 130.0 and report["wall_min"] == pytest.approx(5 / 60, abs=0.01)
    assert report["meets_time_target"] is False  # 130 min of jobs, though this call took 5 s
    assert report["time_judged_min"] == 130.0
    assert report["extend"] == [str(old)]
    # an empty folder holds nothing to extend: a clear error before any workflow call
    monkeypatch.setattr(sys, "argv", ["metaldam.py", "--workdir", str(tmp_path / "empty"),
                                      "--extend", "--out", str(out)])
    with pytest.raises(SystemExit):
        metaldam.main()
    assert len(calls) == 2 and not (tmp_path / "empty").exists()
