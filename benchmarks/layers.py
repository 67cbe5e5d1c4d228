"""Where the network's time goes: per-layer seconds and FLOPs of one default inference window.

Usage: ``python benchmarks/layers.py [--quick] [--precision bf16] [--repeats 2]
[--out benchmarks/results/layers.json]``.

One FCN-8s forward (real VGG16 layout, random weights, channels_last, the precision given) on
the window shape the default configuration uses for a 7000x8000 image, timed per leaf module
with forward hooks (best of ``--repeats`` after a warm-up) and set against each module's exact
FLOPs (FlopCounterMode on the meta device) and the bf16/fp32 matmul peak measured in the same
run. Time outside leaf modules (crops, additions of the skip scores) is reported as "other".
"""

from __future__ import annotations

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
    layer_parser,
    loadavg,
    machine_info,
    matmul_peak,
    peak_rss_mb,
    random_fcn8s,
    set_threads,
    write_result,
)
from inference import default_window

from mvfcnn.core.progress import progress

#: torchvision ``features`` index -> VGG layer name
VGG_NAMES = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1",
             12: "conv3_2", 14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3",
             24: "conv5_1", 26: "conv5_2", 28: "conv5_3", 4: "pool1", 9: "pool2", 16: "pool3",
             23: "pool4", 30: "pool5"}


def layer_name(fqn: str) -> str:
    """'trunk.features.2' -> 'conv1_2', ReLUs -> 'relu', others keep their short name."""
    parts = fqn.split(".")
    if len(parts) == 3 and parts[1] == "features":
        return VGG_NAMES.get(int(parts[2]), "relu")
    if parts[-1].startswith("relu"):
        return "relu"
    if parts[-1].startswith("drop"):
        return "dropout (identity in eval)"
    return parts[-1]


def module_flops(layout: dict[str, Any], height: int, width: int) -> dict[str, int]:
    """Exact FLOPs per leaf module for one (1, 3, height, width) forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mvfcnn.models.fcn import build_fcn

    with torch.device("meta"):
        model = build_fcn("8s", num_classes=NUM_CLASSES, **layout)
        x = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter:
        model(x)
    leaves = {name for name, m in model.named_modules() if not list(m.children())}
    counts = counter.get_flop_counts()
    out = {}
    for fqn, ops in counts.items():
        name = fqn.removeprefix("FCN.").removeprefix("Global.")
        if name in leaves:
            out[name] = int(sum(ops.values()))
    return out


def time_layers(model: Any, x: Any, precision: str, repeats: int) -> tuple[dict[str, float], float]:
    """Best-of-``repeats`` seconds per leaf module and for the whole forward."""
    import torch

    starts: dict[str, float] = {}
    spent: dict[str, float] = {}
    handles = []
    fused: set[str] = set()  # a ConvReLU is timed as one layer (its conv never runs alone)
    from mvfcnn.models.vgg_trunk import ConvReLU

    for fqn, module in model.named_modules():
        inside_fused = any(fqn.startswith(f + ".") for f in fused)
        if isinstance(module, ConvReLU):
            fused.add(fqn)
        elif list(module.children()) or inside_fused:
            continue

        def pre(_m: Any, _i: Any, fqn: str = fqn) -> None:
            starts[fqn] = time.perf_counter()

        def post(_m: Any, _i: Any, _o: Any, fqn: str = fqn) -> None:
            spent[fqn] = spent.get(fqn, 0.0) + time.perf_counter() - starts[fqn]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    dtype = torch.bfloat16 if precision == "bf16" else None
    best: dict[str, float] = {}
    best_total = float("inf")
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        model(x)  # warm-up: kernel creation, weight casts
        for _ in progress(range(repeats), "layers", unit="forward"):
            spent.clear()
            start = time.perf_counter()
            model(x)
            total = time.perf_counter() - start
            if total < best_total:
                best_total, best = total, dict(spent)
    for handle in handles:
        handle.remove()
    return best, best_total


def main(argv: list[str] | None = None) -> int:
    parser = layer_parser(__doc__, quick_help="thin network, small window", repeats=2)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--no-fuse", action="store_true",
                        help="time the plain model, not the conv + ReLU fused one that "
                             "mvfcnn.inference.predict.predict_image runs on a CPU")
    args = parser.parse_args(argv)
    import torch

    threads = set_threads(args.threads)
    layout = QUICK_LAYOUT if args.quick else REAL_LAYOUT
    height, width = default_window(args.quick)
    out = Path(args.out or RESULTS / ("layers_quick.json" if args.quick else "layers.json"))
    peaks = {dt: matmul_peak(dt, size=1024 if args.quick else 4096) for dt in ("fp32", "bf16")}
    model = random_fcn8s(layout).to(memory_format=torch.channels_last)
    if not args.no_fuse:
        from mvfcnn.models.vgg_trunk import fuse_conv_relu

        model = fuse_conv_relu(model)
    x = torch.randn(1, 3, height, width).contiguous(memory_format=torch.channels_last)
    load_before = loadavg()
    seconds, total = time_layers(model, x, args.precision, args.repeats)
    flops = module_flops(layout, height, width)
    peak = max(peaks[args.precision]["best_tflops"], 1e-9)
    groups: dict[str, dict[str, float]] = {}
    for fqn, sec in seconds.items():
        name = layer_name(fqn)
        g = groups.setdefault(name, {"seconds": 0.0, "gflop": 0.0})
        g["seconds"] += sec
        g["gflop"] += flops.get(fqn, 0) / 1e9
    groups["other (crops, skip additions, hooks)"] = {
        "seconds": total - sum(seconds.values()), "gflop": 0.0}
    total_gflop = sum(g["gflop"] for g in groups.values())
    table = {name: {"seconds": round(g["seconds"], 3),
                    "time_share": round(g["seconds"] / total, 4),
                    "gflop": round(g["gflop"], 1),
                    "flop_share": round(g["gflop"] / total_gflop, 4),
                    "tflops": round(g["gflop"] / 1e3 / g["seconds"], 4) if g["gflop"] else None,
                    "ratio_to_peak": (round(g["gflop"] / 1e3 / g["seconds"] / peak, 3)
                                      if g["gflop"] else None)}
             for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["seconds"])}
    report = {
        "benchmark": "per-layer time vs FLOPs of one FCN-8s inference window",
        "quick": args.quick, "network": {"arch": "fcn8s", **layout, "weights": "random"},
        "precision": args.precision, "channels_last": True, "window": [height, width],
        "conv_relu_fused": not args.no_fuse,
        "threads": threads, "machine": machine_info(("torch",)), "matmul_peak_tflops": peaks,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "forward_s": round(total, 3), "gflop": round(total_gflop, 1),
        "tflops": round(total_gflop / 1e3 / total, 4),
        "ratio_to_peak": round(total_gflop / 1e3 / total / peak, 3),
        "layers": table, "peak_rss_mb": peak_rss_mb()}
    write_result(out, report)
    print(json.dumps({k: report[k] for k in ("forward_s", "gflop", "tflops", "ratio_to_peak")}),
          file=sys.stderr)
    print(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
