"""Benchmark the training data pipeline: tiles per second from the tile index on memory-mapped
images (with rotations), against the rate the training step consumes them.

Usage: ``python benchmarks/tiles.py [--quick] [--sizes 512,1000] [--workers 0,1]
[--out benchmarks/results/tiles.json]``.

Synthetic micrographs (``mvfcnn.data.synthetic.large_sem``) are written as uncompressed TIFFs, so
``read_image(mmap=True)`` maps them as training does; ``mvfcnn.fcn.tiling.tile_index`` builds the
index with the 4 rotations and ``TileDataset`` + the training ``DataLoader`` (same batching and
worker settings as ``train_stage``) read them in the training order. The page cache is warm
after the first pass, as in a training run that revisits its tiles. The consumption rate is
read from ``benchmarks/results/train_step.json`` (run ``train_step.py`` first); the loader is
not a bottleneck when its rate is many times the fastest training step's.
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
    RESULTS,
    loadavg,
    machine_info,
    peak_rss_mb,
    set_threads,
    synthetic_sem,
    write_result,
)

from mvfcnn.core.progress import progress


def make_images(workdir: Path, count: int, side: int) -> Any:
    """``count`` SEM + label TIFFs of ``side`` px and the image table tile_index expects."""
    import pandas as pd
    import tifffile

    rows = []
    for i in range(count):
        sem, ids, _ = synthetic_sem(side, side, seed=i)
        labels = np.where(ids > 0, 1 + i % 4, 0).astype(np.uint8)
        tifffile.imwrite(workdir / f"sem_{i}.tif", sem)  # uncompressed: memory-mappable
        tifffile.imwrite(workdir / f"labels_{i}.tif", labels)
        rows.append({"sample": f"s{i}", "height": side, "width": side, "class": f"c{i % 4}",
                     "image": str(workdir / f"sem_{i}.tif"),
                     "labels": str(workdir / f"labels_{i}.tif")})
    return pd.DataFrame(rows)


def loader_rate(images: Any, *, size: int, workers: int, batch: int, n_batches: int,
                seed: int = 0) -> dict[str, Any]:
    """Tiles per second through TileDataset + the training DataLoader (first pass and warm)."""
    from mvfcnn.fcn.dataset import TileDataset, sample_order
    from mvfcnn.fcn.tiling import tile_index
    from mvfcnn.fcn.train import _loader

    index = tile_index(images, size=size, stride=size // 2, balanced=False, augment=True)
    dataset = TileDataset(index.tiles, ignore_index=255)
    n_batches = min(n_batches, len(dataset) // batch)
    order = sample_order(len(dataset), n_batches, batch, seed).tolist()
    rates = []
    for _ in range(2):  # cold, then warm page cache
        start = time.perf_counter()
        pixels = 0
        for _image, labels in _loader(dataset, order, seed=seed, num_workers=workers, pin=False):
            pixels += int(labels.numel())
        rates.append(n_batches * batch / (time.perf_counter() - start))
    assert pixels == n_batches * batch * size * size
    return {"size": size, "workers": workers, "batch": batch, "tiles_read": n_batches * batch,
            "index_tiles": len(dataset), "rotations": sorted(index.tiles["rot"].unique().tolist()),
            "tiles_per_s_first_pass": round(rates[0], 1), "tiles_per_s_warm": round(rates[1], 1),
            "loadavg_after": loadavg()}


def consumption(size: int, quick: bool) -> dict[str, Any] | None:
    """The fastest training step's tiles/s at ``size`` from train_step.json, if measured."""
    path = RESULTS / ("train_step_quick.json" if quick else "train_step.json")
    if not path.is_file():
        return None
    runs = [r for r in json.loads(path.read_text())["runs"].values() if r["size"] == size]
    if not runs:
        return None
    best = max(runs, key=lambda r: r["tiles_per_s"])
    return {"precision": best["precision"], "tiles_per_s": best["tiles_per_s"],
            "source": f"benchmarks/results/{path.name}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small images and tiles")
    parser.add_argument("--sizes", default=None, help="tile sizes (default 512,1000; quick 96)")
    parser.add_argument("--workers", default="0,1", help="DataLoader worker counts to measure")
    parser.add_argument("--images", type=int, default=4, help="number of synthetic images")
    parser.add_argument("--side", type=int, default=None, help="image side (default 3000)")
    parser.add_argument("--batches", type=int, default=None, help="batches per pass "
                        "(default 200; quick 20)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    sizes = [int(s) for s in (args.sizes or ("96" if args.quick else "512,1000")).split(",")]
    side = args.side or (256 if args.quick else 3000)
    n_batches = args.batches or (20 if args.quick else 200)
    out = Path(args.out or RESULTS / ("tiles_quick.json" if args.quick else "tiles.json"))
    report: dict[str, Any] = {
        "benchmark": "training tiles per second (tile index -> memory-mapped TIFFs, rotations, "
                     "DataLoader) vs the training step's consumption",
        "quick": args.quick, "machine": machine_info(("torch",)), "loadavg_start": loadavg(),
        "images": {"count": args.images, "side": side, "format": "uncompressed TIFF (mmap)"},
        "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mvfcnn_tiles_") as tmp:
        images = make_images(Path(tmp), args.images, side)
        for size in progress(sizes, "tiles", unit="size"):
            for workers in (int(w) for w in args.workers.split(",")):
                key = f"{size}_w{workers}"
                report["runs"][key] = loader_rate(images, size=size, workers=workers,
                                                  batch=args.batch, n_batches=n_batches)
                print(f"{key}: {report['runs'][key]}", file=sys.stderr)
    summary = {}
    for size in sizes:
        rate = min(r["tiles_per_s_first_pass"] for r in report["runs"].values()
                   if r["size"] == size)
        need = consumption(size, args.quick)
        summary[str(size)] = {
            "loader_tiles_per_s_worst": rate, "train_step": need,
            "loader_over_consumption": round(rate / need["tiles_per_s"], 1) if need else None,
            "loader_is_bottleneck": (rate < need["tiles_per_s"]) if need else None}
    report["summary"] = summary
    report["peak_rss_mb"] = peak_rss_mb()
    write_result(out, report)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
