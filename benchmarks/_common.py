"""Helpers shared by the benchmark scripts: machine description, load, peak RSS, matmul peak.

Benchmarks are plain scripts (``python benchmarks/<name>.py [--quick]``); this module sits
beside them so ``from _common import ...`` works when a script is run directly. The machine is
shared with other jobs, so every result carries the load average next to its timings and the
headline figures are also given as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
RESULTS = ROOT / "benchmarks" / "results"
#: CPU flags that decide which bf16/int8 matmul kernels exist (AMX is absent on AMD Zen 4)
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")
#: the overlay benchmarks/metaldam.py --folds writes into its workdir (object offsets off: a
#: fold subset's votes would need every fold's model); not a lever
FOLDS_SUBSET_OVERLAY = "folds_subset.yaml"


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """CPU model name and the matmul-relevant flags from /proc/cpuinfo (empty if unreadable)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, [f for f in _FLAGS if f in flags]


def cpu_generation(text: str | None = None) -> str:
    """Vendor, family and model from /proc/cpuinfo (``text``: its contents, for tests), with the
    AMD core generation they imply: a VM's "model name" is often just "AMD EPYC", and Zen 4 and
    Zen 5 share every flag ``cpu_flags`` reports (Zen 3 lacks avx512f)."""
    fields: dict[str, str] = {}
    try:
        lines = (Path("/proc/cpuinfo").read_text() if text is None else text).splitlines()
    except OSError:
        return ""
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    vendor, family, model = (fields.get(k, "") for k in ("vendor_id", "cpu family", "model"))
    if not family:
        return ""
    described = f"{vendor} family {family} model {model}"
    generation = {"23": "Zen/Zen 2", "25": "Zen 3/Zen 4", "26": "Zen 5"}.get(family)
    if vendor == "AuthenticAMD" and generation:
        if family == "25":
            generation = "Zen 4" if "avx512f" in fields.get("flags", "").split() else "Zen 3"
        described += f" (AMD {generation})"
    return described


def machine_info(extra_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    """CPU model and flags, the auto precision and why, cores, memory, load, library versions
    and thread settings, for every results JSON (timings mean little without the machine)."""
    import numpy as np

    from mvfcnn.core.runtime import REPORTED_FLAGS, choose_precision

    model, flags = cpu_model_and_flags()
    choice = choose_precision("auto", "cpu")
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gb = None
    info: dict[str, Any] = {
        "cpu_model": model, "cpu_generation": cpu_generation(), "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)), "memory_gb": mem_gb,
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        # what decides bf16 speed, present or not, and what `precision: auto` picks here
        "flags": {f: f in flags for f in REPORTED_FLAGS},
        "precision_auto": choice.precision, "precision_reason": choice.reason,
        "loadavg": loadavg()}
    if "torch" in sys.modules or "torch" in extra_modules:
        import torch

        info.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "torch_interop_threads": torch.get_num_interop_threads(),
                     "mkldnn": bool(torch.backends.mkldnn.is_available()),
                     "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()})
    for name in extra_modules:
        if name == "torch":
            continue
        module = __import__(name)
        info[name] = getattr(module, "__version__", "?")
    return info


def loadavg() -> list[float]:
    """1/5/15-minute load averages: other jobs on this machine slow every timing down."""
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in kB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def layer_parser(doc: str, *, quick_help: str, repeats: int) -> argparse.ArgumentParser:
    """The options every per-layer timing script takes: --quick, --repeats, --threads, --out."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    return parser


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads (default: the usable cores) and return the count."""
    import torch

    n = int(threads) if threads else len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def matmul_peak(dtype: str, *, size: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """Best-of-``repeats`` TFLOP/s of a ``size``-square matmul in ``dtype`` ("fp32"/"bf16").

    The reference the network's achieved rate is compared with: large enough to leave the
    cache-bound regime, warmed up twice, best of several so other jobs' bursts do not count.
    """
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(torch_dtype)
    b = torch.randn(size, size, generator=gen).to(torch_dtype)
    out = torch.empty(size, size, dtype=torch_dtype)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            torch.matmul(a, b, out=out)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)
    flop = 2.0 * size**3
    return {"dtype": dtype, "size": size, "repeats": repeats,
            "best_tflops": round(flop / min(times) / 1e12, 4),
            "median_tflops": round(flop / sorted(times)[len(times) // 2] / 1e12, 4),
            "loadavg": loadavg()}


def run_child(script: Path, args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``script args`` in a fresh interpreter (own peak RSS) and parse its last stdout line
    as JSON."""
    env = {**os.environ,
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env=env, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(time.perf_counter() - start, 2)
    return result


#: environment that makes an AVX-512 machine compute like an AVX2-only one (no native bf16):
#: oneDNN and PyTorch's own kernels are capped at AVX2, and ``precision: auto`` reads the cap
AVX2_EMULATION = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run_workflow(workdir: Path, configs: list[str], *, cores: int, extra: list[str] = (),
                 env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``snakemake`` on the repository's Snakefile in ``workdir``: (process, wall seconds).

    ``--rerun-incomplete``: a benchmark killed mid-training resumes from the stage's checkpoints.
    """
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [str(snakemake), "--snakefile", str(SNAKEFILE), "--directory",
               str(workdir), "--configfile", *configs, "--cores", str(cores), "--resources",
               "gpu=1", "--rerun-incomplete", *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, text=True, capture_output=True, check=False,
                          env={**os.environ, **(env or {}),
                               "PATH": f"{snakemake.parent}{os.pathsep}{os.environ['PATH']}"})
    return proc, time.perf_counter() - start


def job_times(workdir: Path) -> dict[str, float]:
    """Seconds per job from results/benchmarks/<rule>/<job>.tsv (Snakemake's `benchmark:`)."""
    import pandas as pd

    times = {}
    for tsv in sorted((workdir / "results" / "benchmarks").rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        name = tsv.relative_to(workdir / "results" / "benchmarks").with_suffix("")
        times[str(name)] = round(float(frame["s"].iloc[0]), 1)
    return times


def judged_seconds(wall_s: float, job_seconds: Iterable[float]) -> float:
    """A workflow run's time: the larger of its wall time and its jobs' summed times. Jobs run
    one at a time on 2 cores (each takes both), so on an uninterrupted run the two agree up to
    Snakemake's overhead; a run that reuses, resumes or was assembled from earlier runs' files
    has the wall time of its last part only, and is judged on all its jobs."""
    return max(float(wall_s), float(sum(job_seconds)))


def write_result(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write a benchmark report atomically (a killed run never leaves half a JSON)."""
    from mvfcnn.core.io import write_json

    write_json(path, report)
    return Path(path)


# --------------------------------------------------------------------------- the FCN-8s model

#: the real VGG16 layout (the paper's network); --quick runs use a thin one to finish in seconds
REAL_LAYOUT = {"width": 1.0, "fc_channels": 4096}
QUICK_LAYOUT = {"width": 0.125, "fc_channels": 256}
NUM_CLASSES = 5


def random_fcn8s(layout: dict[str, Any], seed: int = 0, calibrate: bool = True):
    """FCN-8s with random weights everywhere, score layers included.

    A fresh FCN has zero score layers (class 0 everywhere), and plain random score layers are
    dominated by the (positive, nearly constant) mean of the ReLU features, which again gives
    one class everywhere: either way any bf16-vs-fp32 agreement would be trivially perfect.
    With ``calibrate`` each score layer's bias cancels its response to the mean feature of a
    small synthetic SEM, so the class follows the local texture as in a trained network.
    """
    import torch
    from torch import nn

    from mvfcnn.models.fcn import fcn8s
    from mvfcnn.models.preprocess import normalize_batch

    torch.manual_seed(seed)
    model = fcn8s(num_classes=NUM_CLASSES, **layout).eval()
    scores = {"score_pool3": 0, "score_pool4": 1, "score_fr": 3}  # TrunkFeatures index
    with torch.no_grad():
        for name in scores:
            layer = getattr(model, name)
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="linear")
            nn.init.zeros_(layer.bias)
        if calibrate:
            sem, _, _ = synthetic_sem(256, 256, seed + 1)
            features = model.trunk(normalize_batch(torch.from_numpy(sem)[None, None]))
            for name, index in scores.items():
                layer = getattr(model, name)
                mean = features[index].mean(dim=(0, 2, 3))
                layer.bias.copy_(-(layer.weight[:, :, 0, 0] @ mean))
    return model


def network_flops(layout: dict[str, Any], height: int, width: int, batch: int = 1) -> int:
    """FLOPs (2 per multiply-add) of one FCN-8s forward on (batch, 3, height, width).

    Counted by torch's FlopCounterMode on the meta device: exact for the real layer shapes
    (conv1_1's 100 px padding, ceil-mode pools, the 7x7 fc6), and free to compute.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mvfcnn.models.fcn import build_fcn

    with torch.device("meta"):
        model = build_fcn("8s", num_classes=NUM_CLASSES, **layout)
        x = torch.empty(batch, 3, height, width)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def synthetic_sem(height: int, width: int, seed: int = 0):
    """(SEM uint8, object ids uint32, number of objects) of a synthetic micrograph."""
    import numpy as np

    from mvfcnn.core.config import ClassSet
    from mvfcnn.data.synthetic import large_sem
    from mvfcnn.objects.components import find_objects

    classes = ClassSet.from_config({"classes": [
        {"index": 0, "name": "matrix", "color": "#000000"},
        {"index": 1, "name": "martensite", "color": "#ff0000"},
        {"index": 2, "name": "tempered_martensite", "color": "#00ff00"},
        {"index": 3, "name": "bainite", "color": "#0000ff"},
        {"index": 4, "name": "pearlite", "color": "#ffff00"}], "ignore_index": 255})
    sem, labels = large_sem(height, width, seed, classes)
    ids = find_objects((labels > 0) & (labels != 255))
    del labels
    return np.ascontiguousarray(sem), ids, int(ids.max())
