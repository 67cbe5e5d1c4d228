"""Benchmark inference settings for the miniature workflow's thin FCN-8s (config/config.yaml).

Usage: ``python benchmarks/demo_config.py [--model results/mvfcnn/.../fcn8s.pt] [--side 768]
[--out benchmarks/results/demo_config.json]``.

The default configuration trains a thin network (``fcn.width`` 0.25, 512 fc channels) on
768 px synthetic micrographs. Its best inference settings differ from the real VGG16's: with few
channels per layer bf16 gains nothing, and a whole 768 px image fits in one window. This times
a trained model file (the workflow's output; synthetic-weights fallback with ``--random``) over
the candidate settings, best of ``--repeats`` runs in this process, and reports bf16/fp32
agreement of the class maps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    loadavg,
    machine_info,
    peak_rss_mb,
    random_fcn8s,
    set_threads,
    synthetic_sem,
    write_result,
)

from mvfcnn.core.progress import progress

MODEL = RESULTS.parents[1] / "results/mvfcnn/scratch_balanced_aug/sem/fcn8s.pt"
CANDIDATES: dict[str, dict[str, Any]] = {
    "previous_t384_o64_b2_bf16": {"tile_size": 384, "overlap": 64, "batch_size": 2,
                                  "precision": "bf16", "fit_tiles": False},
    "t384_o64_b2_fp32": {"tile_size": 384, "overlap": 64, "batch_size": 2, "precision": "fp32",
                         "fit_tiles": False},
    "t1500_o100_fit_bf16": {"tile_size": 1500, "overlap": 100, "batch_size": 1,
                            "precision": "bf16", "fit_tiles": True},
    "t1500_o100_fit_fp32": {"tile_size": 1500, "overlap": 100, "batch_size": 1,
                            "precision": "fp32", "fit_tiles": True},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(MODEL), help="trained mvfcnn model file")
    parser.add_argument("--random", action="store_true",
                        help="use a random thin FCN-8s instead of a model file")
    parser.add_argument("--side", type=int, default=768, help="image side (the demo's 768)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "demo_config.json"))
    args = parser.parse_args(argv)
    set_threads(args.threads)

    from mvfcnn.inference.predict import predict_image

    if args.random or not Path(args.model).is_file():
        model, source = random_fcn8s({"width": 0.25, "fc_channels": 512}), "random thin fcn8s"
    else:
        from mvfcnn.models.io import load_model

        model, _ = load_model(args.model)
        source = args.model
    image, _, _ = synthetic_sem(args.side, args.side, seed=0)
    report: dict[str, Any] = {
        "benchmark": "inference settings for the thin demo FCN-8s", "model": source,
        "layout": {k: getattr(model, "kwargs", {}).get(k) for k in ("width", "fc_channels")},
        "image_side": args.side, "machine": machine_info(("torch",)),
        "loadavg_start": loadavg(), "runs": {}}
    maps = {}
    for name, cfg in progress(list(CANDIDATES.items()), "demo config", unit="candidate"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            maps[name] = predict_image(model, image, progress=False, **cfg)
            times.append(time.perf_counter() - start)
        report["runs"][name] = {**cfg, "best_s": round(min(times), 3),
                                "all_s": [round(t, 3) for t in times], "loadavg": loadavg()}
        print(f"{name}: {report['runs'][name]}", file=sys.stderr)
    best = min(report["runs"], key=lambda k: report["runs"][k]["best_s"])
    report["summary"] = {
        "fastest": best, "seconds": {k: v["best_s"] for k, v in report["runs"].items()},
        "agreement_bf16_vs_fp32": {
            "t384": round(float((maps["previous_t384_o64_b2_bf16"]
                                 == maps["t384_o64_b2_fp32"]).mean()), 6),
            "t1500_fit": round(float((maps["t1500_o100_fit_bf16"]
                                      == maps["t1500_o100_fit_fp32"]).mean()), 6)},
        "agreement_t1500_fit_vs_t384_fp32": round(float(
            (maps["t1500_o100_fit_fp32"] == maps["t384_o64_b2_fp32"]).mean()), 6)}
    report["peak_rss_mb"] = peak_rss_mb()
    write_result(args.out, report)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
