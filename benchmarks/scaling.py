"""Benchmark how inference time and peak memory grow with the image: 1, 4, 16, 56 megapixels.

Usage: ``python benchmarks/scaling.py [--quick] [--sizes 1000x1000,2000x2000,4000x4000,7000x8000]
[--out benchmarks/results/scaling.json]``.

Each size is predicted with the default CPU configuration (``inference.DEFAULT``) in a fresh
process reading a memory-mapped synthetic SEM, so its peak RSS is its own. Time should grow
linearly with the pixel count (the network's FLOPs per megapixel are printed beside it: fitted
windows keep them nearly constant) and the peak RSS should stay flat apart from the uint8
output (1 byte/pixel) and the image pages read through the memory map (1 byte/pixel).

The 7000x8000 point is the whole-image run of ``benchmarks/inference.py`` (same configuration,
same fresh-process measurement, voting included) when ``benchmarks/results/inference.json``
holds one, so the suite does not predict the largest image twice; ``--no-reuse`` measures it
again here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    QUICK_LAYOUT,
    REAL_LAYOUT,
    RESULTS,
    loadavg,
    machine_info,
    run_child,
    set_threads,
    synthetic_sem,
    write_result,
)
from inference import DEFAULT, run_config, scale_tile

from mvfcnn.core.progress import progress

FULL_SIZES = "1000x1000,2000x2000,4000x4000,7000x8000"
QUICK_SIZES = "100x100,200x200,400x400"


def child(path: str, quick: bool, threads: int | None) -> int:
    """Predict the memory-mapped image at ``path``; print the JSON result."""
    set_threads(threads)
    image = np.load(path, mmap_mode="r")
    result = run_config(scale_tile(DEFAULT, quick), image, QUICK_LAYOUT if quick else REAL_LAYOUT)
    result.pop("_pred")
    print(json.dumps(result))
    return 0


def reusable(height: int, width: int, quick: bool) -> dict[str, Any] | None:
    """The whole-image run of inference.json if it is this size with this configuration."""
    path = RESULTS / "inference.json"
    if quick or not path.is_file():
        return None
    full = json.loads(path.read_text()).get("full_image")
    if not full or full["image_shape"] != [height, width] or full["config"] != DEFAULT:
        return None
    # that run also read the object ids (4 bytes/pixel) for voting
    return {**full, "source": "benchmarks/results/inference.json (full_image)",
            "rss_mb_minus_image_and_output": round(
                full["peak_rss_mb"] - 6 * height * width / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny images, thin network")
    parser.add_argument("--sizes", default=None, help=f"HxW list (default {FULL_SIZES})")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", help="keep the generated images here (default: temp dir)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="measure every size here, even one inference.json already has")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.quick, args.threads)
    threads = set_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x"))
             for s in (args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)).split(",")]
    out = Path(args.out or RESULTS / ("scaling_quick.json" if args.quick else "scaling.json"))
    report: dict[str, Any] = {
        "benchmark": "inference time and peak RSS vs image size (default CPU configuration)",
        "quick": args.quick, "config": scale_tile(DEFAULT, args.quick),
        "machine": machine_info(("torch",)), "loadavg_start": loadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="mvfcnn_scaling_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for height, width in progress(sizes, "scaling", unit="size"):
            reused = None if args.no_reuse else reusable(height, width, args.quick)
            if reused is not None:
                report["runs"].append(reused)
                print(f"{height}x{width}: reused from inference.json", file=sys.stderr)
                continue
            path = work / f"sem_{height}x{width}.npy"
            if not path.exists():
                tick = time.perf_counter()
                sem, _, _ = synthetic_sem(height, width, seed=0)
                np.save(path, sem)
                print(f"generated {height}x{width} in {time.perf_counter() - tick:.1f} s",
                      file=sys.stderr)
                del sem
            extra = ["--threads", str(threads)] + (["--quick"] if args.quick else [])
            result = run_child(Path(__file__), ["--child", str(path), *extra])
            result["rss_mb_minus_image_and_output"] = round(
                result["peak_rss_mb"] - 2 * height * width / 2**20, 1)
            report["runs"].append(result)
            print(f"{height}x{width}: {result['wall_s']} s, {result['megapixels_per_s']} MP/s, "
                  f"rss {result['peak_rss_mb']} MB", file=sys.stderr)
    runs = report["runs"]
    base = runs[0]
    report["summary"] = [
        {"megapixels": r["megapixels"], "predict_s": r["predict_s"],
         "megapixels_per_s": round(r["megapixels"] / r["predict_s"], 4),
         "gflop_per_megapixel": r["gflop_per_megapixel"],
         "network_tflops": r["network_tflops"], "tiles": r["tiles"],
         "time_ratio_vs_smallest": round(r["predict_s"] / base["predict_s"], 2),
         "pixel_ratio_vs_smallest": round(r["megapixels"] / base["megapixels"], 2),
         "peak_rss_mb": r["peak_rss_mb"],
         "rss_mb_minus_image_and_output": r["rss_mb_minus_image_and_output"],
         "loadavg_before": r["loadavg_before"]} for r in runs]
    report["loadavg_end"] = loadavg()
    write_result(out, report)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
