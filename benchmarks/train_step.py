"""Benchmark one FCN training iteration (forward, loss, backward, SGD step) per stage, network,
tile size and precision.

Usage: ``python benchmarks/train_step.py [--quick] [--networks real,demo] [--stages 32s,16s,8s]
[--sizes 512,1000] [--precisions fp32,bf16,auto] [--iters 2]
[--out benchmarks/results/train_step.json]``.

The step is the one ``mvfcnn.fcn.train.train_stage`` runs (channels_last model and batch,
``normalize_batch``, ``autocast``, ``pixel_loss``, ``make_optimizer``) with random weights and a
batch of synthetic uint8 tiles. Networks: ``real`` (the VGG16 layout, nothing frozen, the
sizes given), ``demo`` (config/config.yaml's: width 0.25, fc 512, conv1..pool4 frozen, one
384 px tile) and ``metaldam_same`` (config/metaldam.yaml's: the demo layout with
``fcn.padding: same``, nothing frozen, 256 px tiles; pass ``--batch 4`` and
``--stages 32s,8s,4s,2s`` as it trains; ``metaldam`` is it with the Caffe 100-px margin,
``metaldam_wide`` at trunk width 0.5).
Each (network, stage, size, precision) runs in a fresh process after one warm-up iteration;
the JSON gives seconds per iteration, the tiles per second the step consumes (what
the loader must keep up with, see ``benchmarks/tiles.py``), the bf16/fp32 speed ratio and, per
network and precision, FCN-32s's time over FCN-8s's on the same tiles (issue 23: ≤ 1.3; a
precision trap in one upsampler made it 8x on Intel AMX). ``--quick``: a thin network on small
tiles (seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    NUM_CLASSES,
    QUICK_LAYOUT,
    REAL_LAYOUT,
    RESULTS,
    loadavg,
    machine_info,
    network_flops,
    peak_rss_mb,
    run_child,
    set_threads,
    write_result,
)

from mvfcnn.core.progress import progress

#: the demo network of config/config.yaml (fcn.width, fc_channels, freeze) and its tile size
DEMO_LAYOUT = {"width": 0.25, "fc_channels": 512}
DEMO_FREEZE = "pool4"
DEMO_SIZE = 384
#: config/metaldam.yaml's training: the demo layout, nothing frozen, 256 px tiles (batch 4),
#: with the Caffe margin (``metaldam``) and as committed (``metaldam_same``)
METALDAM_SIZE = 256
#: ``metaldam_same``: the same with ``fcn.padding: same`` (no 100-px conv1_1 margin);
#: ``metaldam_wide``: that at twice the trunk width (the width lever of issue 22)
NETWORKS = {"real": (REAL_LAYOUT, "none"), "demo": (DEMO_LAYOUT, DEMO_FREEZE),
            "metaldam": (DEMO_LAYOUT, "none"),
            "metaldam_same": ({**DEMO_LAYOUT, "padding": "same"}, "none"),
            "metaldam_wide": ({**DEMO_LAYOUT, "padding": "same", "width": 0.5}, "none"),
            "quick": (QUICK_LAYOUT, "none")}
#: networks whose tile size is fixed by their config, not by --sizes
FIXED_SIZES = {"demo": DEMO_SIZE, "metaldam": METALDAM_SIZE, "metaldam_same": METALDAM_SIZE,
               "metaldam_wide": METALDAM_SIZE}


def measure(size: int, precision: str, layout: dict[str, Any], *, batch: int, iters: int,
            stage: str = "8s", freeze: str = "none", seed: int = 0) -> dict[str, Any]:
    """Seconds of each of ``iters`` timed training iterations after one warm-up.

    ``precision`` may be "auto": the one ``mvfcnn.core.runtime.choose_precision`` picks here.
    """
    import torch

    from mvfcnn.core.runtime import autocast, choose_precision
    from mvfcnn.fcn.losses import make_optimizer, pixel_loss
    from mvfcnn.fcn.stage_model import freeze_trunk
    from mvfcnn.models.fcn import build_fcn
    from mvfcnn.models.preprocess import normalize_batch

    requested = precision
    precision = choose_precision(precision, "cpu").precision
    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = build_fcn(stage, num_classes=NUM_CLASSES, **layout)
    model = freeze_trunk(model, freeze).to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, lr=1e-10, momentum=0.99, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen)
    times = []
    for step in range(iters + 1):
        start = time.perf_counter()
        x = normalize_batch(images).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        objective, _, _ = pixel_loss(logits, labels, ignore_index=255, reduction="mean")
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if step:  # the first iteration creates kernels and buffers
            times.append(time.perf_counter() - start)
    seconds = min(times)
    # forward FLOPs; backward costs about twice the forward (grad input + grad weight)
    flops = 3 * network_flops(layout, size, size, batch)
    return {"stage": stage, "size": size, "precision": precision, "requested": requested,
            "freeze": freeze, "batch": batch, "iters_timed": iters,
            "seconds_per_iter": round(seconds, 3), "all_seconds": [round(t, 3) for t in times],
            "tiles_per_s": round(batch / seconds, 4),
            "megapixels_per_s": round(batch * size * size / 1e6 / seconds, 4),
            "approx_tflops": round(flops / seconds / 1e12, 4),
            "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
            "loadavg_after": loadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="thin network, small tiles")
    parser.add_argument("--networks", default=None,
                        help="real,demo (default both; quick: quick)")
    parser.add_argument("--stages", default="32s,16s,8s")
    parser.add_argument("--sizes", default=None,
                        help="tile sizes of the real network (default 512; quick 64,96)")
    parser.add_argument("--precisions", default="fp32,bf16,auto")
    parser.add_argument("--batch", type=int, default=1, help="tiles per iteration (paper: 1)")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations (best is kept)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    if args.child:
        network, stage, size, precision = args.child.split(":")
        layout, freeze = NETWORKS[network]
        print(json.dumps(measure(int(size), precision, layout, batch=args.batch,
                                 iters=args.iters, stage=stage, freeze=freeze)))
        return 0
    networks = (args.networks or ("quick" if args.quick else "real,demo")).split(",")
    sizes = [int(s) for s in (args.sizes or ("64,96" if args.quick else "512")).split(",")]
    stages = args.stages.split(",")
    precisions = args.precisions.split(",")
    out = Path(args.out or RESULTS / ("train_step_quick.json" if args.quick
                                      else "train_step.json"))
    report: dict[str, Any] = {
        "benchmark": "FCN training iteration (forward + loss + backward + SGD step) per stage",
        "quick": args.quick,
        "networks": {n: {**NETWORKS[n][0], "freeze": NETWORKS[n][1], "weights": "random",
                         "sizes": [FIXED_SIZES[n]] if n in FIXED_SIZES else sizes}
                     for n in networks},
        "machine": machine_info(("torch",)), "loadavg_start": loadavg(), "runs": {}}
    common = ["--batch", str(args.batch), "--iters", str(args.iters), "--threads", str(threads)]
    runs = [(network, stage, size, precision) for network in networks
            for size in report["networks"][network]["sizes"] for stage in stages
            for precision in precisions]
    for run in progress(runs, "train_step", unit="run"):
        key = ":".join(map(str, run))
        report["runs"][key] = run_child(Path(__file__), ["--child", key, *common])
        print(f"{key}: {report['runs'][key]}", file=sys.stderr)
    report["summary"] = summarize(report["runs"])
    report["loadavg_end"] = loadavg()
    write_result(out, report)
    print(json.dumps(report["summary"], indent=2))
    return 0


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per network and size: seconds per iteration of each stage and precision, bf16's speed-up
    and FCN-32s / FCN-8s (the upsampler precision trap shows as a ratio far above 1)."""
    summary: dict[str, Any] = {}
    for key, run in runs.items():
        network, stage, size, requested = key.split(":")
        row = summary.setdefault(f"{network}_{size}", {})
        label = requested if requested != "auto" else f"auto({run['precision']})"
        row.setdefault("seconds_per_iter", {}).setdefault(stage, {})[label] = \
            run["seconds_per_iter"]
    for row in summary.values():
        table = row["seconds_per_iter"]
        labels = {label for per_stage in table.values() for label in per_stage}
        if "32s" in table and "8s" in table:
            row["fcn32s_over_fcn8s"] = {
                label: round(table["32s"][label] / table["8s"][label], 2) for label in labels
                if label in table["32s"] and label in table["8s"]}
        if {"fp32", "bf16"} <= labels:
            row["bf16_speedup"] = {stage: round(t["fp32"] / t["bf16"], 2)
                                   for stage, t in table.items() if {"fp32", "bf16"} <= set(t)}
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
