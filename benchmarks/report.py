"""Print the README's performance tables (markdown) from ``benchmarks/results/*.json``.

Usage: ``python benchmarks/report.py``. Nothing is measured here: every figure is read from the
JSON files the benchmark scripts wrote, so the README can be refreshed after a rerun by pasting
this output.
"""

from __future__ import annotations

import json
from typing import Any

from _common import RESULTS


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _load_str(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def machine_line(report: dict[str, Any]) -> str:
    """Which machine a table came from: CPU, bf16-relevant flags, auto precision, load.

    Older JSONs list only the flags present (``cpu_flags``) and lack the precision choice.
    """
    machine = report.get("machine") or {}
    flags = machine.get("flags") or {f: f in (machine.get("cpu_flags") or [])
                                     for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}
    marks = ", ".join(f"{name} {'yes' if have else 'no'}" for name, have in flags.items())
    auto = (f"precision auto → {machine['precision_auto']} ({machine['precision_reason']})"
            if machine.get("precision_auto") else "precision auto: not recorded")
    load = machine.get("loadavg") or report.get("loadavg_start")
    cores = machine.get("usable_cores")
    generation = machine.get("cpu_generation")
    return (f"Machine: {machine.get('cpu_model') or 'unknown CPU'}"
            + (f" [{generation}]" if generation else "")
            + (f", {cores} cores" if cores else "") + f"; flags: {marks}; {auto}"
            + (f"; load {_load_str(load)} (1/5/15 min)" if load else "") + ".")


def inference_tables(report: dict[str, Any], layers: dict[str, Any] | None = None) -> list[str]:
    """Headline run, targets and the variant table (``layers``: same-load peak ratio)."""
    s = report["summary"]
    peaks = s["matmul_peak_tflops"]
    lines = []
    full = s.get("full_image")
    if full:
        cfg = full["config"]
        lines += [
            f"Whole {report['image']['height']}×{report['image']['width']} synthetic SEM, FCN-8s "
            f"(real VGG16 layout), {cfg['precision']}, channels_last, tile {cfg['tile_size']} "
            f"(fitted), overlap {cfg['overlap']}, batch {cfg['batch_size']}; load average "
            f"{_load_str(full['loadavg_before'])} before, {_load_str(full['loadavg_after'])} "
            "after (1/5/15 min, 2 cores):", "",
            "| target | measured | met |", "|---|---|---|"]
        t = s["targets"]
        lines += [
            f"| inference + stitching + voting ≤ 45 s | {full['wall_s']:.0f} s "
            f"({full['megapixels_per_s']:.3f} MP/s; network {full['breakdown_s']['network']:.0f} s"
            f", read {full['breakdown_s']['read_preprocess']:.1f} s, stitch "
            f"{full['breakdown_s']['stitch']:.1f} s, vote {full['breakdown_s']['vote']:.1f} s) "
            f"| {'yes' if t['wall_le_45s']['met'] else 'no'} |",
            f"| network ≥ 40 % of the bf16 matmul peak | {full['network_tflops']:.3f} TFLOP/s = "
            f"{100 * full['ratio_to_bf16_peak']:.0f} % of {peaks['bf16']:.3f} (bf16), "
            f"{100 * full['ratio_to_fp32_peak']:.0f} % of {peaks['fp32']:.3f} (fp32)"
            + (f"; one window: {100 * layers['ratio_to_peak']:.0f} % of the bf16 peak measured "
               "under the same load (layers.json)" if layers else "") + " | "
            + ("yes" if t["network_ge_40pct_bf16_peak"]["met"] else
               "no vs the run's best peak" + ("; yes vs the same-load peak"
                                               if layers and layers["ratio_to_peak"] >= 0.4
                                               else "")) + " |",
            f"| peak RSS ≤ 3 GB | {full['peak_rss_mb'] / 1024:.2f} GB | "
            f"{'yes' if t['peak_rss_le_3gb']['met'] else 'no'} |",
            f"| bf16 agrees with fp32 on ≥ 99.5 % of pixels | "
            f"{100 * s['agreement']['bf16 vs fp32']:.2f} % (random weights); "
            + (f"{100 * s['agreement']['bf16 vs fp32, trained thin model']:.3f} % (trained thin "
               "model)" if "bf16 vs fp32, trained thin model" in s["agreement"] else "")
            + f" | {'yes' if t['bf16_agreement_ge_99_5pct']['met'] else 'no (random weights)'} |",
            "", f"At 100 % of the measured bf16 peak the network's "
            f"{report['full_image']['network_tflop']:.0f} TFLOP would still take "
            f"{full['seconds_at_100pct_bf16_peak']:.0f} s; 45 s needs "
            f"{full['bf16_peak_needed_for_45s_tflops']:.2f} TFLOP/s sustained.", ""]
    crop = report["variants"]["crop"]
    lines += [f"Variants on a {crop[0]}×{crop[1]} crop (fresh process each; 7000×8000 time "
              "extrapolated from the crop's rate per FLOP and the full grid's FLOPs):", "",
              "| variant | crop s | network TFLOP/s | % bf16 peak | GFLOP/MP (7000×8000 grid) | "
              "7000×8000 s (extrap.) | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for name, v in s["variants"].items():
        lines.append(f"| {name} | {v['crop_s']:.1f} | {v['network_tflops']:.3f} | "
                     f"{100 * v['ratio_to_bf16_peak']:.0f} | {v['full_image_gflop_per_mp']:.0f} | "
                     f"{v['full_image_s_extrapolated']:.0f} | {v['peak_rss_mb']:.0f} |")
    return lines


def precision_table(reports: list[dict[str, Any]]) -> list[str]:
    """The precision policy side by side: each variant's crop time on each measured CPU kind
    (``inference_precision*.json``: native, and an AVX2-only CPU emulated by an ISA cap)."""
    def kind(report: dict[str, Any]) -> str:
        machine = report.get("machine") or {}
        cap = " capped at AVX2" if report.get("emulation") else ""
        return f"{machine.get('cpu_model') or 'CPU'}{cap} (auto → {machine.get('precision_auto')})"

    names = list(dict.fromkeys(n for r in reports for n in r["summary"]["variants"]))
    crop = reports[0]["variants"]["crop"]
    lines = [f"Precision policy, real VGG16 FCN-8s on a {crop[0]}×{crop[1]} crop (seconds, fresh "
             "process each, 2 threads):", "",
             "| variant | " + " | ".join(kind(r) for r in reports) + " |",
             "|---|" + "---|" * len(reports)]
    for name in names:
        cells = []
        for report in reports:
            v = report["summary"]["variants"].get(name)
            cells.append("–" if v is None else f"{v['crop_s']:.1f} s ({v['precision']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""] + [machine_line(r) for r in reports] + [""]


def demo_table(reports: list[dict[str, Any]]) -> list[str]:
    """README command 1 per CPU kind (``demo_*.json`` from benchmarks/demo.py)."""
    lines = ["README command 1 (the default study, 2 cores):", "",
             "| CPU | precision (auto) | wall time | timed jobs | train_fcn | pretrain_trunk | "
             "train_baseline | MVFCNN SEM | MVFCNN LOM | targets met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        machine, rules = r["machine"], r["rule_s"]
        mvfcnn = r["object_accuracy"].get("mvfcnn/ft_balanced_aug", {})
        cpu = machine.get("cpu_model") or "CPU"
        cpu += " capped at AVX2 (emulated AVX2-only)" if r.get("emulation") else ""
        met = all(r["targets"].values())
        minutes, seconds = divmod(round(r["wall_s"]), 60)
        rule_cells = " | ".join(f"{rules.get(rule, 0):.0f} s" for rule in
                                ("train_fcn", "pretrain_trunk", "train_baseline"))
        acc_cells = " | ".join(f"{100 * mvfcnn.get(m, float('nan')):.1f} %" for m in ("sem", "lom"))
        lines.append(f"| {cpu} | {machine['precision_auto']} | {minutes} min {seconds:02d} s | "
                     f"{r['jobs']} | {rule_cells} | {acc_cells} | {'yes' if met else 'no'} |")
    return lines + [""] + [machine_line(r) for r in reports] + [""]


def scaling_table(report: dict[str, Any]) -> list[str]:
    lines = ["Scaling (default configuration, fresh process per size; the 56 MP row is the "
             "whole-image run above, voting and its object ids included):", "",
             "| megapixels | windows | predict s | MP/s | GFLOP/MP | time ratio | pixel ratio | "
             "peak RSS MB | RSS − image − output MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r, run in zip(report["summary"], report["runs"], strict=True):
        windows = f"{run['tiles']} × {run['tile_shape'][0]}×{run['tile_shape'][1]}"
        lines.append(f"| {r['megapixels']:g} | {windows} | {r['predict_s']:.1f} | "
                     f"{r['megapixels_per_s']:.3f} | {r['gflop_per_megapixel']:.0f} | "
                     f"{r['time_ratio_vs_smallest']:.1f} | {r['pixel_ratio_vs_smallest']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['rss_mb_minus_image_and_output']:.0f} |")
    return lines


def training_tables(step: dict[str, Any] | None, tiles: dict[str, Any] | None) -> list[str]:
    """Seconds per training iteration by network, stage and precision (train_step.json), and
    the loader against the fastest step (tiles.json)."""
    lines = []
    if step:
        networks = step.get("networks", {})
        lines += ["Training iteration per FCN stage (batch 1; forward, loss, backward, SGD step; "
                  "seconds, best of 3 after a warm-up, fresh process each):", "",
                  "| network, tile | stage | fp32 | bf16 | auto | bf16 speed-up |",
                  "|---|---|---:|---:|---:|---:|"]
        for key, v in step["summary"].items():
            network = key.rsplit("_", 1)[0]
            info = networks.get(network, {})
            name = (f"{network} (width {info.get('width')}, fc {info.get('fc_channels')}, "
                    f"frozen to {info.get('freeze')}), {key.rsplit('_', 1)[1]} px")
            for stage, times in v["seconds_per_iter"].items():
                auto = next((f"{t:.3f} ({label[5:-1]})" for label, t in times.items()
                             if label.startswith("auto")), "–")
                speedup = v.get("bf16_speedup", {}).get(stage)
                lines.append(f"| {name} | {stage} | {times.get('fp32', float('nan')):.3f} | "
                             f"{times.get('bf16', float('nan')):.3f} | {auto} | "
                             f"{f'{speedup:.1f}×' if speedup else '–'} |")
                name = ""
            ratios = ", ".join(f"{label} {r:.2f}" for label, r in
                               v.get("fcn32s_over_fcn8s", {}).items())
            lines.append(f"| | FCN-32s / FCN-8s | {ratios} | | | |")
        lines.append("")
    if tiles:
        lines += ["Training loader (tile index → memory-mapped TIFFs, rotations, DataLoader with "
                  "0 or 1 workers) against the fastest training step:", "",
                  "| tile | loader tiles/s (worst) | training step tiles/s (fastest) | "
                  "loader / step |", "|---|---|---|---|"]
        for size, v in tiles["summary"].items():
            need = v["train_step"]["tiles_per_s"] if v["train_step"] else float("nan")
            lines.append(f"| {size} | {v['loader_tiles_per_s_worst']:.0f} | {need:.3f} | "
                         f"{v['loader_over_consumption']}× |")
    return lines


def traps_table(report: dict[str, Any]) -> list[str]:
    """precision_traps.json: how many layers were timed, which are flagged, the worst ratios
    and the crash probe."""
    chosen = report["precision_auto"]
    lines = [f"Precision traps (`benchmarks/precision_traps.py`): {len(report['layers'])} "
             f"distinct layers of the demo and real training steps (all three stages) and of "
             f"the inference window, {chosen} (auto) against fp32; flagged above "
             f"{report['flag_ratio']}× and {report['flag_min_ms']} ms: "
             f"**{len(report['flagged'])}**. The five worst ratios:", "",
             f"| layer | input | backward | fp32 ms | {chosen} ms | ratio |",
             "|---|---|---|---:|---:|---:|"]
    for r in report["layers"][:5]:
        lines.append(f"| {r['layer']} | {'×'.join(map(str, r['input']))} {r['input_dtype']} | "
                     f"{'yes' if r['backward'] else 'no'} | {r['fp32_ms']:.2f} | "
                     f"{r[f'{chosen}_ms']:.2f} | {r['ratio']:.2f} |")
    probe = report.get("crash_probe")
    if probe:
        lines += ["", f"Crash probe ({probe['what']}, {probe['threads']} threads): "
                      f"{'crashed' if probe['crashed'] else 'ran'} (exit {probe['returncode']}"
                      f"{', ' + probe['last_line'] if probe['last_line'] else ''})."]
    return lines + ["", machine_line(report), ""]


def compile_line(report: dict[str, Any]) -> list[str]:
    """torch.compile against eager from inference_compile.json (same crop, same process kind)."""
    runs = report["variants"]["runs"]
    eager, comp = runs.get("bf16_cl_t1500_o100_fit"), runs.get("bf16_cl_t1500_o100_fit_compile")
    if not eager or not comp:
        return []
    agree = report["summary"]["agreement"].get("torch.compile vs eager (bf16)")
    return [f"torch.compile (inductor, frozen weights) on the same crop: network "
            f"{comp['network_tflops']:.3f} vs {eager['network_tflops']:.3f} TFLOP/s eager, but "
            f"{comp['compile']['compile_and_first_forward_s']:.0f} s to compile per window "
            f"shape; class maps agree on {100 * agree:.3f} % of pixels.", ""]


def _block(name: str) -> str:
    if name.startswith("conv"):
        return name.split("_")[0]
    if name.startswith("pool"):
        return "max-pools"
    if name.startswith(("score", "upscore")):
        return "head (score + upsampling)"
    return name


def layers_table(report: dict[str, Any]) -> list[str]:
    """Per-block time and FLOP shares of one default window (layers.json)."""
    peak = report["matmul_peak_tflops"][report["precision"]]["best_tflops"]
    blocks: dict[str, list[float]] = {}
    for name, v in report["layers"].items():
        b = blocks.setdefault(_block(name), [0.0, 0.0])
        b[0] += v["seconds"]
        b[1] += v["gflop"]
    h, w = report["window"]
    fused = {True: ", conv + ReLU fused", False: ""}.get(report.get("conv_relu_fused"), "")
    lines = [f"One {h}×{w} window ({report['precision']}, channels_last{fused}): "
             f"{report['forward_s']:.1f} s, {report['gflop']:.0f} GFLOP, "
             f"{report['tflops']:.3f} TFLOP/s = {100 * report['ratio_to_peak']:.0f} % of the "
             f"{report['precision']} matmul peak measured in the same run ({peak:.3f}; load "
             f"{_load_str(report['loadavg_before'])}):", "",
             "| block | time share | FLOP share | % of peak |", "|---|---|---|---|"]
    for name, (sec, gflop) in sorted(blocks.items(), key=lambda kv: -kv[1][0]):
        if sec / report["forward_s"] < 0.001:
            continue
        rate = f"{100 * gflop / 1e3 / sec / peak:.0f}" if gflop > 1 else "–"
        lines.append(f"| {name} | {100 * sec / report['forward_s']:.1f} % | "
                     f"{100 * gflop / report['gflop']:.1f} % | {rate} |")
    return lines


def main() -> int:
    out: list[str] = []
    demos = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("demo_*.json"))
             if p.name != "demo_config.json"]
    if demos:
        out += demo_table(demos)
    inference = _load("inference")
    if inference:
        out += inference_tables(inference, _load("layers")) + [machine_line(inference), ""]
    precision = [r for r in (_load("inference_precision_amx"), _load("inference_precision"),
                             _load("inference_precision_avx2")) if r]
    if precision:
        out += precision_table(precision)
    compiled = _load("inference_compile")
    if compiled:
        out += compile_line(compiled)
    layers = _load("layers")
    if layers:
        out += layers_table(layers) + [machine_line(layers), ""]
    unfused = _load("layers_unfused")
    if unfused:
        out += ["Without the conv + ReLU fusion (`layers.py --no-fuse`), same machine:", ""]
        out += layers_table(unfused) + [machine_line(unfused), ""]
    traps = _load("precision_traps")
    if traps:
        out += traps_table(traps)
    scaling = _load("scaling")
    if scaling:
        out += scaling_table(scaling) + [machine_line(scaling), ""]
    step, tiles = _load("train_step"), _load("tiles")
    out += training_tables(step, tiles)
    out += [machine_line(r) for r in (step, tiles) if r]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
