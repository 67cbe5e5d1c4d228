"""Does oneDNN's own zero padding cost more than padding the input first? Per 3x3 convolution of
one default inference window (issue 23's open lead: conv3 ran ~2x faster on a pre-padded input
on Intel AMX, while conv4/conv5 got slower).

Usage: ``python benchmarks/conv_padding.py [--quick] [--repeats 7] [--threads N]
[--out benchmarks/results/conv_padding.json]``.

For every distinct (channels in, channels out, height, width) of the VGG16 trunk's 3x3
convolutions on the window the default configuration uses for a 7000x8000 image (real VGG16
layout, the shapes read off a forward on the meta device), in the precision ``precision: auto``
chooses here, channels_last: the fused convolution + ReLU that inference runs
(``mvfcnn.models.vgg_trunk.ConvReLU``) with oneDNN's padding 1, against ``F.pad`` then the
same op with padding 0 (pad time included). The two are timed interleaved, best of
``--repeats``, so that the drift of a shared machine hits both alike. Records the machine and
the same-run bf16/fp32 matmul peaks; a layer counts as faster pre-padded only below 0.9x.
Nothing here changes inference: it says whether a per-layer padding choice would pay.
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
    set_threads,
    write_result,
)
from inference import default_window

#: pre-padded must take less than this share of the padded op's time to count as faster
FASTER_BELOW = 0.9


def conv_shapes(layout: dict[str, Any], height: int, width: int) -> list[dict[str, int]]:
    """The distinct (cin, cout, h, w) of the trunk's 3x3 padding-1 convolutions, in order."""
    import torch
    from torch import nn

    from mvfcnn.models.fcn import build_fcn

    with torch.device("meta"):
        model = build_fcn("8s", num_classes=NUM_CLASSES, **layout)
        x = torch.empty(1, 3, height, width)
    shapes: list[dict[str, int]] = []

    def hook(module: nn.Conv2d, inputs: tuple, _output: Any) -> None:
        _, cin, h, w = inputs[0].shape
        shape = {"cin": cin, "cout": module.out_channels, "height": h, "width": w}
        if module.kernel_size == (3, 3) and module.padding == (1, 1) and shape not in shapes:
            shapes.append(shape)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    model(x)
    for handle in handles:
        handle.remove()
    return shapes


def time_shape(shape: dict[str, int], dtype: Any, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` ms of the fused op with oneDNN padding vs pad + padding 0."""
    import torch
    import torch.nn.functional as F

    op = torch.ops.mkldnn._convolution_pointwise
    x = torch.randn(1, shape["cin"], shape["height"], shape["width"]).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(shape["cout"], shape["cin"], 3, 3) * 0.05).to(dtype)
    bias = torch.zeros(shape["cout"], dtype=dtype)
    variants = {
        "onednn_padding_ms": lambda: op(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu",
                                        [None], ""),
        "prepadded_ms": lambda: op(F.pad(x, (1, 1, 1, 1)), weight, bias, [0, 0], [1, 1],
                                   [1, 1], 1, "relu", [None], ""),
    }
    best = dict.fromkeys(variants, float("inf"))
    with torch.no_grad():
        for run in variants.values():
            run()  # warm-up: kernel creation
        for _ in range(repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(seconds * 1000, 2) for name, seconds in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = layer_parser(__doc__, quick_help="thin network, small window", repeats=7)
    args = parser.parse_args(argv)
    import torch

    from mvfcnn.core.runtime import choose_precision
    threads = set_threads(args.threads)
    layout = QUICK_LAYOUT if args.quick else REAL_LAYOUT
    height, width = default_window(args.quick)
    out = Path(args.out or RESULTS / ("conv_padding_quick.json" if args.quick
                                      else "conv_padding.json"))
    precision = choose_precision("auto", "cpu")
    dtype = torch.bfloat16 if precision.precision == "bf16" else torch.float32
    peaks = {dt: matmul_peak(dt, size=1024 if args.quick else 4096) for dt in ("fp32", "bf16")}
    load_before = loadavg()
    rows = []
    for shape in conv_shapes(layout, height, width):
        times = time_shape(shape, dtype, args.repeats)
        # the verdict reads the recorded (rounded) ratio, so the report agrees with itself
        ratio = round(times["prepadded_ms"] / times["onednn_padding_ms"], 3)
        rows.append({**shape, **times, "prepadded_ratio": ratio,
                     "prepadded_faster": ratio < FASTER_BELOW})
        print(json.dumps(rows[-1]), file=sys.stderr)
    report = {
        "benchmark": "3x3 conv + ReLU: oneDNN padding vs a pre-padded input, per trunk shape",
        "quick": args.quick, "network": {"arch": "fcn8s", **layout}, "window": [height, width],
        "precision": precision.precision, "precision_reason": precision.reason,
        "channels_last": True, "repeats": args.repeats, "threads": threads,
        "faster_below": FASTER_BELOW, "machine": machine_info(("torch",)),
        "matmul_peak_tflops": peaks, "loadavg_before": load_before, "loadavg_after": loadavg(),
        "layers": rows,
        "prepadded_faster": [f"{r['cin']}->{r['cout']} at {r['height']}x{r['width']}"
                             for r in rows if r["prepadded_faster"]],
        "saving_ms_if_chosen_per_layer": round(sum(
            r["onednn_padding_ms"] - r["prepadded_ms"] for r in rows if r["prepadded_faster"]),
            1),
    }
    write_result(out, report)
    print(json.dumps({k: report[k] for k in ("precision", "prepadded_faster",
                                             "saving_ms_if_chosen_per_layer")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
