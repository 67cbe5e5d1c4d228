"""Benchmark FCN-8s sliding-window inference + stitching + voting on a synthetic SEM micrograph.

Usage: ``python benchmarks/inference.py [--quick] [--height 7000 --width 8000] [--crop 1536]
[--threads N] [--out benchmarks/results/inference.json]``.

1. The matmul peak of this machine (fp32 and bf16, best of several 4096^3 products): the
   reference for the network's achieved TFLOP/s.
2. Variants (precision, memory format, tile size, overlap, fitted windows) on a ``--crop``-sized
   corner of the image, each in a fresh process (own peak RSS): seconds, MP/s, the network's
   achieved TFLOP/s (exact FLOPs of every window / time inside the network) and an
   extrapolation to the full image (the crop's rate per FLOP times the full grid's FLOPs).
   bf16 vs fp32 pixel agreement on the same windows; seam differences of the overlap variants.
3. The default configuration (``DEFAULT`` below = the CPU default in config/config.yaml) on the
   whole image, inference + stitching + voting, in a fresh process: the headline figures.

The network is the real VGG16 FCN-8s with random weights (score layers included, so the class
map is not constant). ``--quick`` uses a small image and a thin network: seconds, not a
measurement. The load average is recorded beside every timing: other jobs share this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    AVX2_EMULATION,
    QUICK_LAYOUT,
    REAL_LAYOUT,
    RESULTS,
    loadavg,
    machine_info,
    matmul_peak,
    network_flops,
    peak_rss_mb,
    random_fcn8s,
    run_child,
    set_threads,
    synthetic_sem,
    write_result,
)

from mvfcnn.core.progress import progress

#: the CPU default (config/config.yaml's `inference` section): auto = bf16 where the CPU has
#: native bf16, else fp32 (mvfcnn.core.runtime); the variants below name their precision explicitly
DEFAULT = {"precision": "auto", "channels_last": True, "tile_size": 1500, "overlap": 100,
           "batch_size": 1, "fit_tiles": True}
_BF16 = {"precision": "bf16"}
#: variants measured on the crop: name -> overrides of DEFAULT
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32_nchw_t1000_o100": {"precision": "fp32", "channels_last": False, "tile_size": 1000,
                             "fit_tiles": False},
    "fp32_cl_t1000_o100": {"precision": "fp32", "tile_size": 1000, "fit_tiles": False},
    "bf16_nchw_t1000_o100": {**_BF16, "channels_last": False, "tile_size": 1000,
                             "fit_tiles": False},
    "bf16_cl_t1000_o100": {**_BF16, "tile_size": 1000, "fit_tiles": False},
    "bf16_cl_t512_o64": {**_BF16, "tile_size": 512, "overlap": 64, "fit_tiles": False},
    "bf16_cl_t1000_o0_fit": {**_BF16, "tile_size": 1000, "overlap": 0},
    "bf16_cl_t1000_o100_fit": {**_BF16, "tile_size": 1000},
    "bf16_cl_t1000_o100_fit_b2": {**_BF16, "tile_size": 1000, "batch_size": 2},
    "bf16_cl_t1500_o100_fit": {**_BF16},
    "fp32_cl_t1500_o100_fit": {"precision": "fp32"},
    "auto_cl_t1500_o100_fit": {},
    "bf16_cl_t1500_o100_fit_compile": {**_BF16, "compile": True},
    "bf16_cl_t2000_o100_fit": {**_BF16, "tile_size": 2000},
}
#: the comparison of the precision policy (issue "fast on every user's CPU"), `--variants`
PRECISION_VARIANTS = ("fp32_nchw_t1000_o100", "fp32_cl_t1500_o100_fit", "bf16_cl_t1500_o100_fit",
                      "auto_cl_t1500_o100_fit")
TRAINED_MODEL = RESULTS.parents[1] / "results/mvfcnn/scratch_balanced_aug/sem/fcn8s.pt"
QUICK_VARIANTS = ("fp32_cl_t1000_o100", "bf16_cl_t1000_o100", "bf16_cl_t1000_o0_fit",
                  "bf16_cl_t1500_o100_fit")
#: pairs whose class maps are compared pixel by pixel (same windows, different arithmetic)
AGREEMENT = [("fp32_cl_t1000_o100", "bf16_cl_t1000_o100", "bf16 vs fp32"),
             ("fp32_cl_t1500_o100_fit", "bf16_cl_t1500_o100_fit", "bf16 vs fp32 (default windows)"),
             ("fp32_nchw_t1000_o100", "fp32_cl_t1000_o100", "channels_last vs NCHW (fp32)"),
             ("bf16_cl_t1000_o0_fit", "bf16_cl_t1000_o100_fit", "overlap 0 vs 100 (seams)"),
             ("bf16_cl_t1000_o100", "bf16_cl_t1500_o100_fit", "tile 1500 fit vs tile 1000"),
             ("bf16_cl_t1500_o100_fit", "bf16_cl_t1500_o100_fit_compile",
              "torch.compile vs eager (bf16)")]


def default_window(quick: bool = False) -> tuple[int, int]:
    """The window the default configuration infers a 7000x8000 image with (a tenth of it per
    side with ``quick``, for the thin test network)."""
    from mvfcnn.inference.predict import tile_shape

    height, width = tile_shape(7000, 8000, DEFAULT["tile_size"], DEFAULT["overlap"],
                               DEFAULT["fit_tiles"])
    return (height // 10, width // 10) if quick else (height, width)


def peak_dtypes() -> tuple[str, ...]:
    """Matmul peaks worth measuring: bf16 only where it is native (emulated, one 4096^3 bf16
    product takes minutes and is no reference for anything)."""
    from mvfcnn.core.runtime import native_bf16

    return ("fp32", "bf16") if native_bf16()[0] is not False else ("fp32",)


def scale_tile(config: dict[str, Any], quick: bool) -> dict[str, Any]:
    """--quick: tiles 10x smaller (the thin network on a small image)."""
    if not quick:
        return config
    return {**config, "tile_size": max(64, config["tile_size"] // 10),
            "overlap": config["overlap"] // 10}


def compile_model_for(model: Any, config: dict[str, Any], shape: tuple[int, ...]
                      ) -> dict[str, Any]:
    """torch.compile (inductor, frozen weights) and one warm-up forward per window shape, timed
    apart: the compile cost is paid once per shape, the benchmark shows whether it pays."""
    import torch
    import torch._inductor.config as inductor_config

    from mvfcnn.inference.predict import tile_shape

    inductor_config.freezing = True
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.eval().to(memory_format=memory_format)
    compiled = torch.compile(model)
    th, tw = tile_shape(shape[0], shape[1], config["tile_size"], config["overlap"],
                        config["fit_tiles"])
    dtype = torch.bfloat16 if config["precision"] == "bf16" else None
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        compiled(torch.zeros(config["batch_size"], 3, th, tw).contiguous(
            memory_format=memory_format))
    return {"model": compiled, "compile_and_first_forward_s": round(time.perf_counter() - start, 1)}


def run_config(config: dict[str, Any], image: np.ndarray, layout: dict[str, Any],
               ids: np.ndarray | None = None) -> dict[str, Any]:
    """Predict ``image`` with ``config`` (and vote over ``ids``): times, FLOPs, rates, RSS."""
    import torch

    from mvfcnn.core.runtime import choose_precision
    from mvfcnn.evaluation.voting import vote
    from mvfcnn.inference.predict import predict_image

    resolved = choose_precision(config["precision"], "cpu").as_dict()
    rss_start = peak_rss_mb()
    model = random_fcn8s(layout)
    rss_model = peak_rss_mb()
    compile_s = None
    if config.get("compile"):
        compile_s = compile_model_for(model, config, image.shape[:2])
        model = compile_s.pop("model")
    timings: dict[str, Any] = {}
    load_before = loadavg()
    start = time.perf_counter()
    pred = predict_image(model, image, tile_size=config["tile_size"], overlap=config["overlap"],
                         batch_size=config["batch_size"], precision=config["precision"],
                         channels_last=config["channels_last"], fit_tiles=config["fit_tiles"],
                         device="cpu", progress=False, timings=timings)
    predict_s = time.perf_counter() - start
    vote_s = None
    n_voted = None
    if ids is not None:
        tick = time.perf_counter()
        table = vote(pred, ids, 5)
        vote_s = time.perf_counter() - tick
        n_voted = int((table["pred_class"] >= 0).sum())
    wall = time.perf_counter() - start
    megapixels = image.shape[0] * image.shape[1] / 1e6
    flops = timings["tiles"] * network_flops(layout, timings["tile_h"], timings["tile_w"])
    net_tflops = flops / timings["forward_s"] / 1e12
    return {
        "config": config, "precision_resolved": resolved,
        "image_shape": list(image.shape[:2]), "megapixels": round(megapixels, 3),
        "tiles": timings["tiles"], "tile_shape": [timings["tile_h"], timings["tile_w"]],
        "wall_s": round(wall, 2), "predict_s": round(predict_s, 2),
        "vote_s": None if vote_s is None else round(vote_s, 3), "objects_voted": n_voted,
        "breakdown_s": {"read_preprocess": round(timings["read_s"], 2),
                        "network": round(timings["forward_s"], 2),
                        "stitch": round(timings["stitch_s"], 2),
                        "vote": None if vote_s is None else round(vote_s, 3)},
        "megapixels_per_s": round(megapixels / wall, 4),
        "network_flop": flops, "network_tflop": round(flops / 1e12, 2),
        "gflop_per_megapixel": round(flops / 1e9 / megapixels, 1),
        "network_tflops": round(net_tflops, 4),
        "class_histogram": np.bincount(pred.ravel(), minlength=5).tolist(),
        "peak_rss_mb": peak_rss_mb(), "rss_mb_before_model": rss_start,
        "rss_mb_after_model": rss_model, "output_mb": round(pred.nbytes / 2**20, 1),
        "torch_threads": torch.get_num_threads(), "compile": compile_s,
        "loadavg_before": load_before, "loadavg_after": loadavg(), "_pred": pred}


def child(args: argparse.Namespace) -> int:
    """One configuration in this (fresh) process; the JSON result is the last stdout line."""
    set_threads(args.threads)
    config = json.loads(args.config)
    layout = QUICK_LAYOUT if args.quick else REAL_LAYOUT
    work = Path(args.workdir)
    image = np.load(work / "sem.npy", mmap_mode="r")
    ids = None
    if args.crop:
        image = np.array(image[:args.crop, :args.crop])
    else:
        ids = np.load(work / "ids.npy", mmap_mode="r")
    result = run_config(config, image, layout, ids)
    pred = result.pop("_pred")
    if args.save_map:
        np.save(work / f"{args.save_map}.npy", pred)
    print(json.dumps(result))
    return 0


def agreement(work: Path, a: str, b: str) -> float | None:
    """Fraction of pixels with the same class in the two saved maps (None if one is missing)."""
    if not (work / f"{a}.npy").exists() or not (work / f"{b}.npy").exists():
        return None
    return round(float((np.load(work / f"{a}.npy") == np.load(work / f"{b}.npy")).mean()), 6)


def trained_agreement(path: Path, image: np.ndarray) -> dict[str, Any]:
    """bf16 vs fp32 class maps of a trained model file (e.g. the workflow's thin FCN-8s).

    Random weights leave many pixels with near-tied class scores; a trained network is the
    realistic case. Same windows for both precisions, so only the arithmetic differs.
    """
    from mvfcnn.inference.predict import predict_image
    from mvfcnn.models.io import load_model

    model, meta = load_model(path)
    kwargs = getattr(model, "kwargs", {})
    tile = int(meta.get("extra", {}).get("tile_size", 384)) if isinstance(meta, dict) else 384
    maps, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        maps[precision] = predict_image(model, image, tile_size=tile, overlap=tile // 6,
                                        batch_size=1, precision=precision, progress=False)
        seconds[precision] = round(time.perf_counter() - start, 2)
    return {"model": str(path), "layout": {k: kwargs.get(k) for k in ("width", "fc_channels")},
            "tile_size": tile, "image_shape": list(image.shape), "seconds": seconds,
            "fraction_equal": round(float((maps["fp32"] == maps["bf16"]).mean()), 6),
            "class_histogram_fp32": np.bincount(maps["fp32"].ravel(), minlength=5).tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small image, thin net: seconds")
    parser.add_argument("--height", type=int, default=None, help="default 7000 (quick: 600)")
    parser.add_argument("--width", type=int, default=None, help="default 8000 (quick: 700)")
    parser.add_argument("--crop", type=int, default=None,
                        help="side of the corner the variants run on (default 1536; quick 300)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of the variants (default: all); "
                             "'precision' = the precision-policy comparison")
    parser.add_argument("--no-full", action="store_true", help="skip the whole-image run")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="cap oneDNN/PyTorch at AVX2: an AVX2-only CPU on this machine")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "the usable cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trained-model", default=str(TRAINED_MODEL),
                        help="a trained model file for a second bf16-vs-fp32 agreement check "
                             "(skipped if missing; default: the workflow's SEM FCN-8s)")
    parser.add_argument("--workdir", help="keep inputs and class maps here (default: temp dir)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/"
                        "inference.json; quick: inference_quick.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--save-map", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    if args.emulate_avx2:  # children inherit it; machine_info records the capped choice
        os.environ.update(AVX2_EMULATION)
    quick = args.quick
    height = args.height or (600 if quick else 7000)
    width = args.width or (700 if quick else 8000)
    crop = args.crop or (300 if quick else 1536)
    if args.variants == "precision":
        args.variants = ",".join(PRECISION_VARIANTS)
    names = (args.variants.split(",") if args.variants
             else list(QUICK_VARIANTS if quick else VARIANTS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    out = Path(args.out or RESULTS / ("inference_quick.json" if quick else "inference.json"))
    threads = set_threads(args.threads)
    layout = QUICK_LAYOUT if quick else REAL_LAYOUT
    report: dict[str, Any] = {
        "benchmark": "FCN-8s sliding-window inference + stitching + voting",
        "quick": quick, "network": {"arch": "fcn8s", **layout, "weights": "random (seeded)"},
        "machine": machine_info(("torch",)), "loadavg_start": loadavg(),
        "emulation": dict(AVX2_EMULATION) if args.emulate_avx2 else None}
    report["matmul_peak_tflops"] = {
        dt: matmul_peak(dt, size=1024 if quick else 4096, repeats=3 if quick else 5)
        for dt in peak_dtypes()}
    print(f"matmul peak: {report['matmul_peak_tflops']}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mvfcnn_infer_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tick = time.perf_counter()
        sem, ids, n_objects = synthetic_sem(height, width, args.seed)
        np.save(work / "sem.npy", sem)
        np.save(work / "ids.npy", ids)
        del sem, ids
        report["image"] = {"height": height, "width": width, "megapixels": height * width / 1e6,
                           "objects": n_objects, "generator": "mvfcnn.data.synthetic.large_sem",
                           "generate_s": round(time.perf_counter() - tick, 1)}
        common = ["--workdir", str(work), "--threads", str(threads)] + (["--quick"] if quick
                                                                          else [])
        report["variants"] = {"crop": [crop, crop], "runs": {}}
        for name in progress(names, "inference variants", unit="variant"):
            config = scale_tile({**DEFAULT, **VARIANTS[name]}, quick)
            result = run_child(Path(__file__), ["--child", "--config", json.dumps(config),
                                                "--crop", str(crop), "--save-map", name,
                                                *common])
            report["variants"]["runs"][name] = result
            print(f"{name}: {result['wall_s']} s, {result['megapixels_per_s']} MP/s, "
                  f"{result['network_tflops']} TFLOP/s, rss {result['peak_rss_mb']} MB",
                  file=sys.stderr)
        report["agreement"] = {label: {"a": a, "b": b, "fraction_equal": agreement(work, a, b)}
                               for a, b, label in AGREEMENT}
        if Path(args.trained_model).is_file():
            image = np.array(np.load(work / "sem.npy", mmap_mode="r")[:crop, :crop])
            report["agreement_trained_model"] = trained_agreement(Path(args.trained_model), image)
            print(f"trained model: {report['agreement_trained_model']}", file=sys.stderr)
        if not args.no_full:
            config = scale_tile(DEFAULT, quick)
            result = run_child(Path(__file__), ["--child", "--config", json.dumps(config),
                                                *common])
            report["full_image"] = result
            print(f"full image: {result}", file=sys.stderr)
    report["matmul_peak_tflops_end"] = {
        dt: matmul_peak(dt, size=1024 if quick else 4096, repeats=3 if quick else 5)
        for dt in peak_dtypes()}
    summarise(report)
    write_result(out, report)
    print(json.dumps(report.get("summary", {}), indent=2))
    return 0


def summarise(report: dict[str, Any]) -> None:
    """Headline figures: best measured peaks, ratios, extrapolations, targets met or not."""
    peaks = {dt: max(report["matmul_peak_tflops"][dt]["best_tflops"],
                     report["matmul_peak_tflops_end"][dt]["best_tflops"])
             for dt in report["matmul_peak_tflops"]}

    def of_bf16_peak(tflops: float) -> float | None:
        """Share of the bf16 matmul peak (None where bf16 is emulated and was not measured)."""
        return round(tflops / peaks["bf16"], 3) if "bf16" in peaks else None

    full_mp = report["image"]["megapixels"]
    height, width = report["image"]["height"], report["image"]["width"]
    layout = QUICK_LAYOUT if report["quick"] else REAL_LAYOUT
    from mvfcnn.inference.predict import tile_grid, tile_shape

    table = {}
    for name, run in report["variants"]["runs"].items():
        cfg = run["config"]
        th, tw = tile_shape(height, width, cfg["tile_size"], cfg["overlap"], cfg["fit_tiles"])
        n = len(tile_grid(height, width, cfg["tile_size"], cfg["overlap"], fit=cfg["fit_tiles"]))
        full_flops = n * network_flops(layout, th, tw)
        net_s = full_flops / (run["network_tflops"] * 1e12)
        other_s_per_mp = (run["wall_s"] - run["breakdown_s"]["network"]) / run["megapixels"]
        table[name] = {"crop_s": run["wall_s"], "crop_mp_per_s": run["megapixels_per_s"],
                       "network_tflops": run["network_tflops"],
                       "ratio_to_bf16_peak": of_bf16_peak(run["network_tflops"]),
                       "ratio_to_fp32_peak": round(run["network_tflops"] / peaks["fp32"], 3),
                       "full_image_gflop_per_mp": round(full_flops / 1e9 / full_mp, 1),
                       "full_image_s_extrapolated": round(net_s + other_s_per_mp * full_mp, 1),
                       "peak_rss_mb": run["peak_rss_mb"],
                       "precision": (run.get("precision_resolved") or {}).get("precision")}
    summary: dict[str, Any] = {"matmul_peak_tflops": peaks, "variants": table,
                               "agreement": {k: v["fraction_equal"]
                                             for k, v in report["agreement"].items()}}
    if "agreement_trained_model" in report:
        summary["agreement"]["bf16 vs fp32, trained thin model"] = \
            report["agreement_trained_model"]["fraction_equal"]
    full = report.get("full_image")
    if full:
        ratio = of_bf16_peak(full["network_tflops"])
        bf16_agree = report["agreement"]["bf16 vs fp32"]["fraction_equal"]
        summary["full_image"] = {
            "config": full["config"], "wall_s": full["wall_s"],
            "megapixels_per_s": full["megapixels_per_s"], "breakdown_s": full["breakdown_s"],
            "network_tflops": full["network_tflops"], "ratio_to_bf16_peak": ratio,
            "ratio_to_fp32_peak": round(full["network_tflops"] / peaks["fp32"], 3),
            "peak_rss_mb": full["peak_rss_mb"], "loadavg_before": full["loadavg_before"],
            "loadavg_after": full["loadavg_after"],
            "seconds_at_100pct_bf16_peak": (round(full["network_tflop"] / peaks["bf16"], 1)
                                            if "bf16" in peaks else None),
            "bf16_peak_needed_for_45s_tflops": round(full["network_tflop"] / 45.0, 2)}
        summary["targets"] = {
            "wall_le_45s": {"value": full["wall_s"], "met": full["wall_s"] <= 45.0},
            "network_ge_40pct_bf16_peak": {"value": ratio,
                                           "met": ratio is not None and ratio >= 0.40},
            "peak_rss_le_3gb": {"value_mb": full["peak_rss_mb"],
                                "met": full["peak_rss_mb"] <= 3 * 1024},
            "bf16_agreement_ge_99_5pct": {"value": bf16_agree,
                                          "met": bf16_agree is not None and bf16_agree >= 0.995}}
    report["summary"] = summary


if __name__ == "__main__":
    raise SystemExit(main())
