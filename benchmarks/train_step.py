"""Benchmark one FCN-8s training iteration (forward, loss, backward, SGD step) per tile size and
precision.

Usage: ``python benchmarks/train_step.py [--quick] [--sizes 512,1000] [--iters 2]
[--out benchmarks/results/train_step.json]``.

The step is the one ``mvfcnn.training.train_stage`` runs (channels_last model and batch,
``normalize_batch``, ``autocast``, ``pixel_loss``, ``make_optimizer``), on the real VGG16
layout with random weights and a batch of synthetic uint8 tiles. Each (size, precision) runs in a
fresh process after one warm-up iteration; the JSON gives seconds per iteration, the tiles per
second the step consumes (what the loader must keep up with, see ``benchmarks/tiles.py``) and
the bf16/fp32 speed ratio. ``--quick``: a thin network on small tiles (seconds).
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

from mvfcnn.progress import progress


def measure(size: int, precision: str, layout: dict[str, Any], *, batch: int, iters: int,
            seed: int = 0) -> dict[str, Any]:
    """Seconds of each of ``iters`` timed training iterations after one warm-up."""
    import torch

    from mvfcnn.models.fcn import fcn8s
    from mvfcnn.models.preprocess import normalize_batch
    from mvfcnn.training import autocast, make_optimizer, pixel_loss

    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = fcn8s(num_classes=NUM_CLASSES, **layout).to(memory_format=torch.channels_last)
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
    return {"size": size, "precision": precision, "batch": batch, "iters_timed": iters,
            "seconds_per_iter": round(seconds, 3), "all_seconds": [round(t, 3) for t in times],
            "tiles_per_s": round(batch / seconds, 4),
            "megapixels_per_s": round(batch * size * size / 1e6 / seconds, 4),
            "approx_tflops": round(flops / seconds / 1e12, 4),
            "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
            "loadavg_after": loadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="thin network, small tiles")
    parser.add_argument("--sizes", default=None, help="tile sizes (default 512,1000; quick 64,96)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=1, help="tiles per iteration (paper: 1)")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations (best is kept)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    layout = QUICK_LAYOUT if args.quick else REAL_LAYOUT
    threads = set_threads(args.threads)
    if args.child:
        size, precision = args.child.split(":")
        print(json.dumps(measure(int(size), precision, layout, batch=args.batch,
                                 iters=args.iters)))
        return 0
    sizes = [int(s) for s in (args.sizes or ("64,96" if args.quick else "512,1000")).split(",")]
    precisions = args.precisions.split(",")
    out = Path(args.out or RESULTS / ("train_step_quick.json" if args.quick
                                      else "train_step.json"))
    report: dict[str, Any] = {
        "benchmark": "FCN-8s training iteration (forward + loss + backward + SGD step)",
        "quick": args.quick, "network": {"arch": "fcn8s", **layout, "weights": "random"},
        "machine": machine_info(("torch",)), "loadavg_start": loadavg(), "runs": {}}
    common = ["--batch", str(args.batch), "--iters", str(args.iters), "--threads", str(threads)]
    common += ["--quick"] if args.quick else []
    runs = [(size, precision) for size in sizes for precision in precisions]
    for size, precision in progress(runs, "train_step", unit="run"):
        key = f"{size}_{precision}"
        report["runs"][key] = run_child(Path(__file__), ["--child", f"{size}:{precision}",
                                                         *common])
        print(f"{key}: {report['runs'][key]}", file=sys.stderr)
    report["summary"] = {
        str(size): {
            **{f"{p}_seconds_per_iter": report["runs"][f"{size}_{p}"]["seconds_per_iter"]
               for p in precisions},
            **{f"{p}_tiles_per_s": report["runs"][f"{size}_{p}"]["tiles_per_s"]
               for p in precisions},
            "bf16_speedup": (round(report["runs"][f"{size}_fp32"]["seconds_per_iter"]
                                   / report["runs"][f"{size}_bf16"]["seconds_per_iter"], 2)
                             if {"fp32", "bf16"} <= set(precisions) else None)}
        for size in sizes}
    report["loadavg_end"] = loadavg()
    write_result(out, report)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
