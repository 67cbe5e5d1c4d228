"""Device, precision and thread setup: the one place that decides how a job computes.

Why a policy and not a fixed ``bf16``: bf16 autocast is ~2.4× faster than fp32 on a CPU that
computes bf16 natively (AMD Zen 4/5 ``avx512_bf16``, ~5-7× on Intel Xeon with AMX), but on a CPU
without it PyTorch emulates bf16 and is 10-120× *slower* (AMD Zen 3, AVX2 only: a 3×3 conv at
128 px took 33 ms in fp32 and 4075 ms in bf16). ``precision: auto`` therefore picks

* on CUDA: bf16 when ``torch.cuda.is_bf16_supported()``, else fp16 (with a grad scaler);
* on a CPU with native bf16: bf16 autocast + channels_last;
* on any other CPU: fp32 + channels_last (channels_last alone is ~1.5× NCHW in fp32).

"Native bf16" is decided by a capability check: the x86 flags ``avx512_bf16``/``amx_bf16`` or
the aarch64 feature ``bf16`` in ``/proc/cpuinfo``. The check is deterministic, free, and cannot
be fooled by other jobs on a shared machine (a timing can), so resumed training runs make the
same choice. Only when the CPU cannot be described (no /proc/cpuinfo, another architecture) a
short cached measurement decides: a small conv timed in fp32 and under bf16 autocast, bf16
only if it is clearly faster. The same measurement sizes the one warning given when ``bf16`` is
requested explicitly on a CPU without native bf16.

The precision is chosen per network, but a CPU that is fast in bf16 on the whole can be slow,
or wrong, on one layer shape, so ``benchmarks/precision_traps.py`` times every distinct layer
of the training steps and the inference window in the chosen precision against fp32. What it
found on 2 Intel Xeon AMX cores (torch 2.14.1) is built into the FCN's head, which therefore
leaves autocast whatever this module picks: the fixed bilinear upsamplers run per channel in
fp32 (the dense k64 s32 FCN-32s upsampler took 1055 ms in bf16 against 21 ms in fp32,
``mvfcnn.models.fcn.BilinearUpsample``), and the score layers train in fp32 (a bf16 weight
gradient of a 4096 -> 5 1x1 convolution corrupted the heap, ``mvfcnn.models.fcn.ScoreConv``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mvfcnn.core.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")
#: accepted config / CLI values
CHOICES = ("auto", *PRECISIONS)
#: x86 flags that mean the CPU computes bf16 in hardware (oneDNN uses them for bf16 GEMM/conv)
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: flags worth naming in reasons and benchmark records
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
#: bf16/fp32 time ratio below which an unknown CPU gets bf16 (clearly faster, not noise)
UNKNOWN_CPU_BF16_RATIO = 0.8
#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA`` values) that include native bf16
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")
_X86 = ("x86_64", "amd64", "i386", "i686")
_ARM = ("aarch64", "arm64")
_warned: set[str] = set()


@dataclass(frozen=True)
class PrecisionChoice:
    """What a job computes in, and why (written to logs, run.json, bundles, checkpoints)."""

    precision: str
    channels_last: bool
    reason: str
    requested: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON / model ``extra`` dicts."""
        return asdict(self)

    def memory_format(self) -> torch.memory_format:
        """The torch memory format for the model and its input batches."""
        return torch.channels_last if self.channels_last else torch.contiguous_format


# --------------------------------------------------------------------------- probes


@functools.lru_cache(maxsize=1)
def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_arch() -> str:
    """Machine architecture, lower case (x86_64, aarch64, arm64, ...)."""
    return platform.machine().lower()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """CPU model name ("" if the OS does not say)."""
    for line in _cpuinfo_text().splitlines():
        if line.startswith(("model name", "Model Name", "Hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or ""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags`` / ARM ``Features``); empty when unknown."""
    for line in _cpuinfo_text().splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("flags", "Features"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def isa_limit() -> str | None:
    """Why torch may not use the CPU's bf16 instructions although it has them, or None.

    ``ONEDNN_MAX_CPU_ISA`` caps the instructions oneDNN (convolutions, GEMM) may use and
    ``ATEN_CPU_CAPABILITY`` those of PyTorch's own kernels; users set them to work around CPU
    bugs, and ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` is how an AVX-512 machine
    reproduces an AVX2-only one (README "Precision"). Under a cap below bf16, bf16 is emulated.
    """
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))
    onednn = onednn.strip().upper()
    if onednn and onednn not in ("ALL", "DEFAULT") and not onednn.startswith(ONEDNN_BF16_ISAS):
        return f"ONEDNN_MAX_CPU_ISA={onednn}"
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in ("default", "avx2", "zvector", "vsx"):
        return f"ATEN_CPU_CAPABILITY={aten}"
    return None


def native_bf16() -> tuple[bool | None, str]:
    """(True/False/None = unknown, what was seen) for "this CPU computes bf16 in hardware"."""
    arch, flags = cpu_arch(), cpu_flags()
    limit = isa_limit()
    if limit:
        return False, f"{limit} caps torch below the bf16 instructions"
    if not flags:
        return None, f"no CPU flags readable on {arch or 'this machine'}"
    if arch in _ARM:
        return ("bf16" in flags), ("bf16" if "bf16" in flags else "no bf16 feature")
    if arch in _X86 or "avx2" in flags or "sse2" in flags:
        have = [f for f in X86_BF16_FLAGS if f in flags]
        if have:
            return True, "/".join(have)
        seen = [f for f in REPORTED_FLAGS if f in flags]
        return False, "flags: " + (", ".join(seen) if seen else "no AVX2/AVX-512")
    return None, f"unknown architecture {arch!r}"


@functools.lru_cache(maxsize=1)
def measure_bf16_slowdown() -> float:
    """bf16-autocast time / fp32 time of a small channels_last 3×3 conv (cached per process).

    A few ms where bf16 is native, ~0.1 s where it is emulated (then the answer is > 10).
    Best of 5 after a warm-up, so a burst from another job does not decide; still noisy on a
    shared machine (measured 0.75-1.9 on a Zen 5 under load), which is why the CPU flags decide
    whenever they can be read.
    """
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(1, 32, 48, 48, generator=gen).contiguous(memory_format=torch.channels_last)

    def best(bf16: bool) -> float:
        times = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(6):
                start = time.perf_counter()
                conv(x)
                if i:
                    times.append(time.perf_counter() - start)
        return min(times)

    return best(True) / max(best(False), 1e-9)


# --------------------------------------------------------------------------- decisions


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = CUDA when available, else CPU; an explicit CUDA device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return resolved


def choose_precision(requested: str = "auto",
                     device: str | torch.device = "cpu") -> PrecisionChoice:
    """The precision a job on ``device`` runs in (see the module docstring for the policy).

    An explicit fp32/bf16/fp16 is kept; ``bf16`` on a CPU without native bf16 warns once per
    process with the measured slowdown.
    """
    requested = str(requested)
    if requested not in CHOICES:
        raise InputError(f"precision must be one of {list(CHOICES)}, got {requested!r}")
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        bf16_ok = bool(torch.cuda.is_bf16_supported())
        if requested != "auto":
            return PrecisionChoice(requested, True, f"{requested} requested (CUDA)", requested)
        if bf16_ok:
            return PrecisionChoice("bf16", True, "CUDA device supports bf16: bf16 autocast",
                                   requested)
        return PrecisionChoice("fp16", True, "CUDA device lacks bf16: fp16 autocast + grad "
                                             "scaling", requested)
    if dev.type != "cpu":
        precision = "fp32" if requested == "auto" else requested
        return PrecisionChoice(precision, False, f"{precision} on device type {dev.type}",
                               requested)
    native, seen = native_bf16()
    if requested == "auto":
        if native is True:
            return PrecisionChoice("bf16", True, f"CPU has {seen}: bf16 autocast", requested)
        if native is False:
            return PrecisionChoice("fp32", True, f"CPU lacks native bf16 ({seen}): fp32 + "
                                                 "channels_last", requested)
        ratio = measure_bf16_slowdown()
        if ratio < UNKNOWN_CPU_BF16_RATIO:
            return PrecisionChoice("bf16", True, f"CPU bf16 support unknown ({seen}); measured "
                                                 f"bf16/fp32 time {ratio:.2f}: bf16 autocast",
                                   requested)
        return PrecisionChoice("fp32", True, f"CPU bf16 support unknown ({seen}); measured "
                                             f"bf16/fp32 time {ratio:.2f}: fp32 + channels_last",
                               requested)
    if requested == "bf16" and native is not True:
        ratio = measure_bf16_slowdown()
        known = "lacks native bf16" if native is False else "bf16 support unknown"
        if native is False or ratio >= 1.0:
            _warn_once("bf16-cpu", f"precision bf16 requested, but this CPU {known} ({seen}): "
                                   f"bf16 autocast measured {ratio:.1f}x the time of fp32 on a "
                                   "small conv; use precision: auto (or fp32)")
        return PrecisionChoice("bf16", True, f"bf16 requested; CPU {known} ({seen}), measured "
                                             f"{ratio:.1f}x fp32 time", requested)
    return PrecisionChoice(requested, True, f"{requested} requested (CPU "
                                            f"{'has ' + seen if native else seen})", requested)


def _warn_once(key: str, message: str) -> None:
    """One warning per process and cause, whatever the warnings filters (it is printed)."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def autocast(device: torch.device | str, precision: str, *,
             cpu_fp16: bool = False) -> contextlib.AbstractContextManager:
    """Mixed-precision context for a resolved precision: fp32 = none.

    fp16 on a CPU is refused unless ``cpu_fp16`` (training needs CUDA's grad scaler for it).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS} once resolved, got "
                         f"{precision!r}")
    dev = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and dev.type != "cuda" and not cpu_fp16:
        raise InputError("precision fp16 needs a CUDA device; use auto, bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=dev.type, dtype=dtype)


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads when given (an inherited OMP_NUM_THREADS=1 would leave one
    core); returns the count in effect."""
    if threads is not None:
        if int(threads) < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def start_job(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse a training job's arguments, then set it up the one way: torch threads
    (:func:`set_threads`) and timestamped log lines on stderr (the rule's log file)."""
    args = parser.parse_args(argv)
    set_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    return args


def announce(job: str, choice: PrecisionChoice, device: torch.device | str) -> str:
    """Write the decision to the job log (stderr) and return the line."""
    line = (f"mvfcnn {job}: precision {choice.precision} (requested {choice.requested}; "
            f"{choice.reason}); device {device}, {torch.get_num_threads()} threads")
    print(line, file=sys.stderr, flush=True)
    return line


def machine_record() -> dict[str, Any]:
    """CPU model, the flags that decide bf16 speed (present or not), and the auto choice."""
    flags = cpu_flags()
    choice = choose_precision("auto", "cpu")
    return {"cpu_model": cpu_model(), "cpu_arch": cpu_arch(),
            "flags": {f: f in flags for f in REPORTED_FLAGS},
            "precision_auto": choice.precision, "precision_reason": choice.reason}
