"""Benchmark the data stage (register -> mask -> objects) on a paper-sized 7000x8000 micrograph.

Usage: ``python benchmarks/data_stage.py [--height 7000 --width 8000] [--workdir DIR]
[--out benchmarks/results/data_stage.json]``.

The inputs are generated first (SEM + labels from :func:`mvfcnn.data.synthetic.large_sem` when it is
available, else a simple blob generator; the LOM is rendered from the labels: second phase dark,
2x lower resolution, blurred, tinted, displaced by a known similarity). Each step then runs in
its own fresh Python process through the library functions, as the CLI does (read, compute,
write), so its wall time and peak RSS (``ru_maxrss``) are its own. The machine may be shared:
the load average before each step is recorded beside its time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np

from mvfcnn.core.progress import progress

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"classes": [{"index": 0, "name": "matrix", "color": "#000000"},
                       {"index": 1, "name": "martensite", "color": "#ff0000"},
                       {"index": 2, "name": "tempered_martensite", "color": "#00ff00"},
                       {"index": 3, "name": "bainite", "color": "#0000ff"},
                       {"index": 4, "name": "pearlite", "color": "#ffff00"}],
           "ignore_index": 255}
REGISTRATION = {"model": "similarity", "max_side": 1024, "max_rms_error_px": 1.0}
MASKING = {"threshold": None, "dark_is_foreground": True, "opening_radius": 1,
           "closing_radius": 2, "min_object_area": 80}
TRUE_SIMILARITY = {"rotation_deg": 1.7, "scale": 1.012, "shift_px": (9.5, -7.25), "downscale": 2}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float],
                lom_shape: tuple[int, int], sem_shape: tuple[int, int]) -> np.ndarray:
    """LOM px -> SEM px: rotate/scale about the LOM centre onto the SEM centre + shift."""
    a = math.radians(angle_deg)
    lin = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c_lom = np.array([(lom_shape[1] - 1) / 2, (lom_shape[0] - 1) / 2])
    c_sem = np.array([(sem_shape[1] - 1) / 2, (sem_shape[0] - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c_sem + np.asarray(shift) - lin @ c_lom
    return m


def _blobs(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fallback SEM + labels: textured bright discs on a dark matrix."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint8)
    for i in range(int(height * width / 768**2 * 13)):
        r = rng.uniform(22, 60)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        labels[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1 + i % 4
    sem = np.empty((height, width), np.uint8)
    tex = 0.5 + 0.5 * np.sin(np.arange(width, dtype=np.float32) * 0.8)[None, :]
    for r0 in range(0, height, 512):
        lab = labels[r0:r0 + 512]
        strip = 70 + (lab > 0) * (70 + 60 * tex) + rng.normal(0, 6, lab.shape)
        sem[r0:r0 + 512] = np.clip(strip, 0, 255)
    return sem, labels


def generate(workdir: Path, height: int, width: int, seed: int) -> dict[str, Any]:
    """Write sem.tif, lom.tif, labels.tif (uncompressed: memory-mappable) and transform.json."""
    import tifffile
    from scipy import ndimage

    t0 = time.perf_counter()
    try:
        from mvfcnn.core.config import ClassSet
        from mvfcnn.data.synthetic import large_sem

        sem, labels = large_sem(height, width, seed, ClassSet.from_config(CLASSES))
        source = "mvfcnn.data.synthetic.large_sem"
    except ImportError:
        sem, labels = _blobs(height, width, seed)
        source = "benchmarks/data_stage.py:_blobs"
    workdir.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(workdir / "sem.tif", sem)
    tifffile.imwrite(workdir / "labels.tif", labels)
    fg = ((labels > 0) & (labels != 255)).astype(np.float32)
    del sem, labels
    ts = TRUE_SIMILARITY
    down = ts["downscale"]
    lh, lw = int(round(height / down)), int(round(width / down))
    matrix = _similarity(ts["rotation_deg"], down * ts["scale"], ts["shift_px"], (lh, lw),
                         (height, width))
    ndimage.gaussian_filter(fg, 1.5 * down, output=fg)  # optics + anti-aliasing
    rc = np.array([[matrix[1, 1], matrix[1, 0]], [matrix[0, 1], matrix[0, 0]]])
    off = np.array([matrix[1, 2], matrix[0, 2]])
    phase = ndimage.affine_transform(fg, rc, offset=off, output_shape=(lh, lw), order=1,
                                     mode="nearest")
    del fg
    rng = np.random.default_rng(seed)
    grey = 205.0 - 150.0 * phase + rng.normal(0, 3, phase.shape).astype(np.float32)
    lom = np.clip(np.stack([grey, grey * 0.9 + 8, grey * 0.75 + 15], axis=-1), 0, 255)
    tifffile.imwrite(workdir / "lom.tif", lom.astype(np.uint8))
    (workdir / "transform.json").write_text(json.dumps({"lom_to_sem": matrix.tolist()}))
    return {"generator": source, "seconds": round(time.perf_counter() - t0, 2),
            "sem_shape": [height, width], "lom_shape": [lh, lw, 3],
            "true_transform": {**ts, "shift_px": list(ts["shift_px"])}}


# --------------------------------------------------------------------------- steps
def step_register(w: Path) -> dict[str, Any]:
    from mvfcnn.core.io import read_image, write_image, write_json
    from mvfcnn.data import registration as reg
    from mvfcnn.data import registration_search

    times: dict[str, float] = {}
    t = time.perf_counter()
    sem = read_image(w / "sem.tif", sample="bench", gray=True)
    lom = read_image(w / "lom.tif", sample="bench")
    truth = reg.read_truth(str(w / "transform.json"), "bench")
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    result = reg.register(sem, lom, model=REGISTRATION["model"],
                          max_side=REGISTRATION["max_side"])
    times["estimate"] = time.perf_counter() - t
    t = time.perf_counter()
    warped = reg.warp_to_grid(lom, result.matrix, sem.shape)
    times["warp"] = time.perf_counter() - t
    t = time.perf_counter()
    write_image(w / "reg_lom.tif", warped, metadata={
        "lom_to_sem": result.matrix.tolist(), "lom_shape": list(lom.shape[:2])})
    rms = registration_search.corner_rms_error(result.matrix, truth, sem.shape)
    write_json(w / "reg.json", {"matrix": result.matrix, "rms_error_px": rms})
    times["write"] = time.perf_counter() - t
    return {"times_s": times, "rms_error_px": round(rms, 4),
            "score_before": round(result.score_before, 4),
            "score_after": round(result.score_after, 4)}


def step_mask(w: Path) -> dict[str, Any]:
    from mvfcnn.core.io import read_image, write_image
    from mvfcnn.data.registration import footprint, read_warp_metadata
    from mvfcnn.objects.components import count_objects
    from mvfcnn.objects.masking import gray_strips, make_mask, mask_iou

    times: dict[str, float] = {}
    t = time.perf_counter()
    sem = read_image(w / "sem.tif", sample="bench", gray=True)
    gray = gray_strips(read_image(w / "reg_lom.tif", sample="bench"))
    meta = read_warp_metadata(str(w / "reg_lom.tif"))
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    valid = footprint(np.asarray(meta["lom_to_sem"]), meta["lom_shape"], sem.shape)
    mask, threshold = make_mask(gray, valid=valid, **MASKING)
    times["mask"] = time.perf_counter() - t
    del gray
    t = time.perf_counter()
    n_components = count_objects(mask)
    labels = read_image(w / "labels.tif", sample="bench")
    iou = mask_iou(mask, labels, 255, valid)
    del labels
    times["report"] = time.perf_counter() - t
    t = time.perf_counter()
    write_image(w / "mask.tif", mask.astype(np.uint8))
    write_image(w / "masked_sem.tif", np.where(mask, sem, np.uint8(0)))
    times["write"] = time.perf_counter() - t
    return {"times_s": times, "threshold": round(threshold, 4), "iou": round(iou, 4),
            "n_components": n_components, "foreground_fraction": round(float(mask.mean()), 4)}


def step_objects(w: Path) -> dict[str, Any]:
    from mvfcnn.core.config import ClassSet
    from mvfcnn.core.io import read_image, write_image, write_table
    from mvfcnn.objects.components import check_labels, find_objects, object_table, read_mask

    classes = ClassSet.from_config(CLASSES)
    times: dict[str, float] = {}
    t = time.perf_counter()
    mask = read_mask(str(w / "mask.tif"), "bench")
    labels = read_image(w / "labels.tif", sample="bench")
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    check_labels(labels, classes, shape=mask.shape)
    times["check_labels"] = time.perf_counter() - t
    t = time.perf_counter()
    ids = find_objects(mask)
    del mask
    times["label"] = time.perf_counter() - t
    t = time.perf_counter()
    table = object_table(ids, labels, classes)
    times["table"] = time.perf_counter() - t
    t = time.perf_counter()
    write_image(w / "ids.tif", ids)
    write_table(w / "objects.csv", table)
    times["write"] = time.perf_counter() - t
    return {"times_s": times, "n_objects": len(table),
            "objects_true_phase": int((table["true_class"] >= 1).sum())}


STEPS = {"register": step_register, "mask": step_mask, "objects": step_objects}


# --------------------------------------------------------------------------- driver
def machine_info() -> dict[str, Any]:
    """The shared machine description plus the image libraries this stage uses."""
    return _common.machine_info(("scipy", "skimage", "tifffile"))


def _run_child(args: list[str]) -> dict[str, Any]:
    """Run this script as a fresh process and return the JSON it prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=7000)
    parser.add_argument("--width", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where inputs/outputs go (default: a temp dir)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_stage.json"))
    parser.add_argument("--step", choices=[*STEPS, "generate"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:  # child process: one step, print its JSON last
        w = Path(args.workdir)
        t = time.perf_counter()
        if args.step == "generate":
            out = generate(w, args.height, args.width, args.seed)
        else:
            out = STEPS[args.step](w)
            out["times_s"] = {k: round(v, 2) for k, v in out["times_s"].items()}
        out["wall_s"] = round(time.perf_counter() - t, 2)
        out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        print(json.dumps(out))
        return 0
    with tempfile.TemporaryDirectory(prefix="mvfcnn_bench_") as tmp:
        w = Path(args.workdir or tmp)
        common = ["--workdir", str(w), "--height", str(args.height), "--width", str(args.width),
                  "--seed", str(args.seed)]
        report: dict[str, Any] = {
            "benchmark": "data stage: register -> mask -> objects",
            "image": {"height": args.height, "width": args.width,
                      "sem_megabytes_uint8": round(args.height * args.width / 1e6, 1)},
            "machine": machine_info(), "steps": {}}
        report["inputs"] = _run_child(["--step", "generate", *common])
        print(f"generated inputs: {report['inputs']}", file=sys.stderr)
        for name in progress(STEPS, "data stage", unit="step"):
            load = os.getloadavg()[0]
            result = _run_child(["--step", name, *common])
            result["loadavg_1min_before"] = round(load, 2)
            report["steps"][name] = result
            print(f"{name}: {result}", file=sys.stderr)
        report["total_wall_s"] = round(sum(s["wall_s"] for s in report["steps"].values()), 2)
        report["max_peak_rss_mb"] = max(s["peak_rss_mb"] for s in report["steps"].values())
    _common.write_result(args.out, report)  # atomic: a killed run leaves no half JSON
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
