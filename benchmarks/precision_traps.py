"""Precision traps: every distinct layer of a training step and an inference window, timed in the
precision ``precision: auto`` picks here and in fp32.

Usage: ``python benchmarks/precision_traps.py [--quick] [--repeats 3] [--threads N]
[--cases PREFIX ...] [--out benchmarks/results/precision_traps.json]``.
``--cases`` keeps the cases whose names start with one of the prefixes (e.g. ``train_metaldam``).

A CPU can be fast in bf16 on the whole and slow on one layer shape: on 2 Intel Xeon AMX cores the
FCN-32s upsampler (a C x C transposed convolution, k64 s32) took 1055 ms in bf16 against 21 ms
in fp32, and made FCN-32s training 8x slower per iteration than FCN-8s (issue 23). So the check
is per layer, not per network. Cases:

* ``train_demo_<stage>``: config/config.yaml's network (width 0.25, fc 512, conv1..pool4
  frozen), one 384 px tile, forward + backward of every layer after the frozen part;
* ``train_real_<stage>``: the real VGG16 layout, one 512 px tile, nothing frozen;
* ``train_metaldam_<stage>``: config/metaldam.yaml's network (the demo layout with
  ``fcn.padding: same``, nothing frozen, stages 32s to 2s), one 256 px tile;
* ``inference``: the real FCN-8s on the default inference window of a 7000x8000 image,
  forward only.

Each distinct (layer, input shape, input dtype, backward or not) is timed once, best of
``--repeats`` after a warm-up, with the input dtype the layer sees in the chosen precision. A
layer is flagged when the chosen precision takes more than ``FLAG_RATIO`` x its fp32 time
(and at least ``FLAG_MIN_MS`` longer: sub-millisecond noise is no trap); a flagged layer is
timed ``CONFIRMATIONS`` more times, both precisions, and stays flagged only if the best times
still say so (on a shared 2-core machine another job can stall a 2-thread kernel for
milliseconds: a 0.1 ms ReLU once measured 8 ms in bf16 that way). Where bf16 is the
chosen precision, a child process also probes the heap corruption of the bf16 weight gradient
of a 4096 -> 5 1x1 convolution seen on Intel AMX (``crash_probe``), which is why the FCN's score
layers compute in fp32 (``mvfcnn.models.fcn.ScoreConv``). ``--quick``: a thin network on small
tiles (seconds).
"""

from __future__ import annotations

import json
import subprocess
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
    set_threads,
    write_result,
)
from inference import default_window
from layers import layer_name
from train_step import DEMO_FREEZE, DEMO_LAYOUT, DEMO_SIZE

from mvfcnn.core.progress import progress

#: chosen-precision / fp32 time above which a layer is a trap
FLAG_RATIO = 1.5
#: ... and only when it costs at least this much more (ms): below it timings are noise
FLAG_MIN_MS = 0.5
#: seconds of timed runs per layer and precision, at least
MIN_TIMED_S = 0.2
#: times a flagged layer is timed again (both precisions, best kept) before it stays flagged
CONFIRMATIONS = 3
STAGES = ("32s", "16s", "8s")

CRASH_PROBE = """
import torch
torch.set_num_threads({threads})
conv = torch.nn.Conv2d(4096, 5, 1).to(memory_format=torch.channels_last)
x = torch.randn(1, 4096, 17, 17).contiguous(memory_format=torch.channels_last)
for _ in range(4):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    out.float().sum().backward()
print("ok")
"""


def cases(quick: bool) -> dict[str, dict[str, Any]]:
    """name -> network layout, stage, frozen trunk part, input (H, W) and training or not."""
    window = default_window()
    if quick:
        out = {f"train_quick_{s}": {"layout": QUICK_LAYOUT, "stage": s, "freeze": "none",
                                    "shape": (64, 64), "train": True} for s in STAGES}
        out["inference"] = {"layout": QUICK_LAYOUT, "stage": "8s", "freeze": "none",
                            "shape": (window[0] // 10, window[1] // 10), "train": False}
        return out
    out = {}
    for stage in STAGES:
        out[f"train_demo_{stage}"] = {"layout": DEMO_LAYOUT, "stage": stage,
                                      "freeze": DEMO_FREEZE, "shape": (DEMO_SIZE, DEMO_SIZE),
                                      "train": True}
    for stage in (*STAGES, "4s", "2s"):
        out[f"train_metaldam_{stage}"] = {"layout": {**DEMO_LAYOUT, "padding": "same"},
                                          "stage": stage, "freeze": "none", "shape": (256, 256),
                                          "train": True}
    for stage in STAGES:
        out[f"train_real_{stage}"] = {"layout": REAL_LAYOUT, "stage": stage, "freeze": "none",
                                      "shape": (512, 512), "train": True}
    out["inference"] = {"layout": REAL_LAYOUT, "stage": "8s", "freeze": "none",
                        "shape": tuple(window), "train": False}
    return out


def build(case: dict[str, Any]) -> Any:
    import torch

    from mvfcnn.fcn.stage_model import freeze_trunk
    from mvfcnn.models.fcn import build_fcn

    torch.manual_seed(0)
    model = build_fcn(case["stage"], num_classes=NUM_CLASSES, **case["layout"])
    with torch.no_grad():  # non-zero scores, so the head's backward is real work
        for name, module in model.named_children():
            if name.startswith("score_"):
                torch.nn.init.normal_(module.weight, std=0.01)
    model = freeze_trunk(model, case["freeze"]).to(memory_format=torch.channels_last)
    return model.train(case["train"])


def layer_inputs(model: Any, case: dict[str, Any], precision: str) -> list[dict[str, Any]]:
    """Every leaf layer's input shape and dtype in one forward under ``precision``, in order,
    and whether its backward runs (a trainable parameter in it or before it)."""
    import torch

    from mvfcnn.core.runtime import autocast

    seen: list[dict[str, Any]] = []
    handles = []
    trainable_before = False
    order = []
    for fqn, module in model.named_modules():
        if list(module.children()):
            continue
        order.append(fqn)

        def pre(m: Any, args: Any, fqn: str = fqn) -> None:
            seen.append({"fqn": fqn, "module": m, "shape": tuple(args[0].shape),
                         "dtype": args[0].dtype})

        handles.append(module.register_forward_pre_hook(pre))
    x = torch.randn(1, 3, *case["shape"]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast("cpu", precision):
        model(x)
    for handle in handles:
        handle.remove()
    for item in seen:  # forward order: the trunk, then the head
        own = any(p.requires_grad for p in item["module"].parameters())
        item["input_grad"] = case["train"] and trainable_before
        item["backward"] = case["train"] and (own or trainable_before)
        trainable_before = trainable_before or own
    return seen


def time_layer(module: Any, shape: tuple[int, ...], dtype: Any, precision: str, *,
               backward: bool, input_grad: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds of ``module`` on a random input (forward, + backward)."""
    import torch

    from mvfcnn.core.runtime import autocast

    x = torch.randn(*shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(dtype).requires_grad_(input_grad)
    inplace = bool(getattr(module, "inplace", False))
    times: list[float] = []
    i = 0
    # at least `repeats` timed runs and 0.2 s of them: best-of-3 of a 0.4 ms pool was noise
    while i <= repeats or sum(times) < MIN_TIMED_S:
        i += 1
        start = time.perf_counter()
        with torch.set_grad_enabled(backward), autocast("cpu", precision):
            out = module(x.clone() if inplace else x)
        if backward and out.requires_grad:
            out.backward(torch.ones_like(out))
        if i > 1:
            times.append(time.perf_counter() - start)
        for p in module.parameters():
            p.grad = None
    return min(times)


def is_trap(fp32_s: float, chosen_s: float) -> bool:
    """The chosen precision is > FLAG_RATIO x fp32's time and > FLAG_MIN_MS slower."""
    return chosen_s > FLAG_RATIO * fp32_s and (chosen_s - fp32_s) * 1e3 > FLAG_MIN_MS


def crash_probe(threads: int) -> dict[str, Any]:
    """The bf16 1x1 4096 -> 5 convolution's weight gradient in a child process."""
    proc = subprocess.run([sys.executable, "-c", CRASH_PROBE.format(threads=threads)],
                          capture_output=True, text=True, timeout=600, check=False)
    last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1]
    return {"what": "bf16 autocast Conv2d(4096, 5, 1) forward + backward on a 17x17 map, 4 "
                    "times, channels_last", "threads": threads, "returncode": proc.returncode,
            "crashed": proc.returncode != 0, "last_line": last[:200]}


def main(argv: list[str] | None = None) -> int:
    parser = layer_parser(__doc__, quick_help="thin network, small tiles", repeats=3)
    parser.add_argument("--cases", nargs="*", default=None, metavar="PREFIX",
                        help="only the cases whose names start with these")
    args = parser.parse_args(argv)
    import torch

    from mvfcnn.core.runtime import choose_precision

    threads = set_threads(args.threads)
    choice = choose_precision("auto", "cpu")
    chosen = choice.precision
    out = Path(args.out or RESULTS / ("precision_traps_quick.json" if args.quick
                                      else "precision_traps.json"))
    report: dict[str, Any] = {
        "benchmark": "per-layer time in the auto precision vs fp32 (training step and "
                     "inference window)",
        "quick": args.quick, "machine": machine_info(("torch",)), "threads": threads,
        "precision_auto": chosen, "precision_reason": choice.reason,
        "flag_ratio": FLAG_RATIO, "flag_min_ms": FLAG_MIN_MS, "loadavg_start": loadavg(),
        "cases": {}, "layers": []}
    measured: dict[tuple[Any, ...], dict[str, Any]] = {}
    selected = {name: case for name, case in cases(args.quick).items()
                if not args.cases or name.startswith(tuple(args.cases))}
    for name, case in progress(selected.items(), "precision traps", unit="case"):
        model = build(case)
        inputs = {"fp32": layer_inputs(model, case, "fp32"),
                  chosen: layer_inputs(model, case, chosen)}
        report["cases"][name] = {"stage": case["stage"], "input": list(case["shape"]),
                                 "train": case["train"], "freeze": case["freeze"],
                                 **case["layout"]}
        for ref, mine in zip(inputs["fp32"], inputs[chosen], strict=True):
            module = ref["module"]
            key = (repr(module), ref["shape"], mine["dtype"], ref["backward"],
                   ref["input_grad"], any(p.requires_grad for p in module.parameters()))
            if key in measured:
                measured[key]["cases"].append(name)
                continue
            common = {"backward": ref["backward"], "input_grad": ref["input_grad"],
                      "repeats": args.repeats}
            fp32_s = time_layer(module, ref["shape"], ref["dtype"], "fp32", **common)
            chosen_s = (fp32_s if chosen == "fp32" else
                        time_layer(module, ref["shape"], mine["dtype"], chosen, **common))
            retimed = 0
            while is_trap(fp32_s, chosen_s) and retimed < CONFIRMATIONS:
                # another job's burst can stall a 2-thread kernel for ms: a trap must persist
                retimed += 1
                fp32_s = min(fp32_s, time_layer(module, ref["shape"], ref["dtype"], "fp32",
                                                **common))
                chosen_s = min(chosen_s, time_layer(module, ref["shape"], mine["dtype"],
                                                    chosen, **common))
            ratio = chosen_s / max(fp32_s, 1e-9)
            measured[key] = {
                "layer": layer_name(ref["fqn"]), "module": repr(module)[:120],
                "input": list(ref["shape"]), "input_dtype": str(mine["dtype"]).split(".")[-1],
                "backward": ref["backward"], "fp32_ms": round(fp32_s * 1e3, 3),
                f"{chosen}_ms": round(chosen_s * 1e3, 3), "ratio": round(ratio, 2),
                "flagged": is_trap(fp32_s, chosen_s), "retimed": retimed,
                "cases": [name]}
        del model
    report["layers"] = sorted(measured.values(), key=lambda r: -r["ratio"])
    report["flagged"] = [r for r in report["layers"] if r["flagged"]]
    if chosen == "bf16" and torch.backends.mkldnn.is_available():
        report["crash_probe"] = crash_probe(threads)
    report["loadavg_end"] = loadavg()
    write_result(out, report)
    def line(r: dict[str, Any]) -> str:
        return f"{r['layer']} {'x'.join(map(str, r['input']))} {r['ratio']}x"

    summary = {"precision_auto": chosen, "layers": len(report["layers"]),
               "flagged": [line(r) for r in report["flagged"]],
               "worst": [line(r) for r in report["layers"][:5]],
               "crash_probe": report.get("crash_probe", {}).get("crashed")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
