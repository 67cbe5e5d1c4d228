"""mvfcnn.core.runtime: the precision policy with the CPU capability and CUDA faked both ways."""

from __future__ import annotations

import warnings

import pytest
import torch

from mvfcnn.core import runtime
from mvfcnn.core.errors import InputError
from mvfcnn.core.runtime import PrecisionChoice, autocast, choose_precision


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_warned", set())
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)


def _cpu(monkeypatch: pytest.MonkeyPatch, arch: str, flags: str, ratio: float = 50.0) -> list:
    """Fake the CPU probes; returns a list that counts measurements."""
    calls: list[int] = []
    monkeypatch.setattr(runtime, "cpu_arch", lambda: arch)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags.split()))

    def measure() -> float:
        calls.append(1)
        return ratio
    monkeypatch.setattr(runtime, "measure_bf16_slowdown", measure)
    return calls


def test_auto_on_x86_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _cpu(monkeypatch, "x86_64", "sse2 avx2 avx512f avx512_bf16")
    choice = choose_precision("auto", "cpu")
    assert choice == PrecisionChoice("bf16", True, "CPU has avx512_bf16: bf16 autocast", "auto")
    assert not calls  # the flags decide; no timing on a known CPU
    assert _cpu(monkeypatch, "x86_64", "avx2 amx_bf16 amx_tile") == []
    assert choose_precision("auto", "cpu").reason == "CPU has amx_bf16: bf16 autocast"


def test_auto_on_x86_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _cpu(monkeypatch, "x86_64", "sse2 avx avx2 fma")
    choice = choose_precision("auto", torch.device("cpu"))
    assert choice.precision == "fp32" and choice.channels_last
    assert choice.reason == "CPU lacks native bf16 (flags: avx2): fp32 + channels_last"
    assert choice.as_dict() == {"precision": "fp32", "channels_last": True,
                                "reason": choice.reason, "requested": "auto"}
    assert choice.memory_format() == torch.channels_last
    assert not calls
    _cpu(monkeypatch, "x86_64", "sse2 avx2 avx512f avx512bw")  # Skylake-X: AVX-512, no bf16
    assert choose_precision("auto", "cpu").reason == ("CPU lacks native bf16 (flags: avx2, "
                                                      "avx512f): fp32 + channels_last")


@pytest.mark.parametrize(("env", "value", "native"), [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", False), ("ONEDNN_MAX_CPU_ISA", "avx512_core", False),
    ("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI", False), ("ATEN_CPU_CAPABILITY", "avx2", False),
    ("ATEN_CPU_CAPABILITY", "default", False), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", True), ("ONEDNN_MAX_CPU_ISA", "ALL", True),
    ("ATEN_CPU_CAPABILITY", "avx512", True)])
def test_isa_cap_below_bf16_means_emulated(monkeypatch: pytest.MonkeyPatch, env: str, value: str,
                                          native: bool) -> None:
    """The AVX2 emulation an AVX-512 machine runs (README "Precision") gets fp32, like a Zen 3."""
    calls = _cpu(monkeypatch, "x86_64", "sse2 avx2 avx512f avx512_bf16")
    monkeypatch.setenv(env, value)
    choice = choose_precision("auto", "cpu")
    assert choice.precision == ("bf16" if native else "fp32") and not calls
    if not native:
        assert choice.reason == (f"CPU lacks native bf16 ({env.replace('DNNL', 'ONEDNN')}="
                                 f"{value.upper() if 'ISA' in env else value} caps torch below "
                                 "the bf16 instructions): fp32 + channels_last")


@pytest.mark.parametrize(("flags", "expected"), [("fp asimd bf16 i8mm", "bf16"),
                                                 ("fp asimd crc32", "fp32")])
def test_auto_on_arm(monkeypatch: pytest.MonkeyPatch, flags: str, expected: str) -> None:
    calls = _cpu(monkeypatch, "aarch64", flags)
    assert choose_precision("auto", "cpu").precision == expected
    assert not calls


@pytest.mark.parametrize(("ratio", "expected"), [(0.4, "bf16"), (0.95, "fp32"), (30.0, "fp32")])
def test_auto_on_unknown_cpu_measures_once(monkeypatch: pytest.MonkeyPatch, ratio: float,
                                           expected: str) -> None:
    calls = _cpu(monkeypatch, "riscv64", "", ratio=ratio)
    choice = choose_precision("auto", "cpu")
    assert choice.precision == expected
    assert f"measured bf16/fp32 time {ratio:.2f}" in choice.reason
    assert "unknown" in choice.reason and len(calls) == 1


def test_explicit_bf16_on_slow_cpu_warns_once_with_the_slowdown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, "x86_64", "avx2", ratio=42.0)
    with pytest.warns(RuntimeWarning, match=r"lacks native bf16 \(flags: avx2\).*42\.0x"):
        first = choose_precision("bf16", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = choose_precision("bf16", "cpu")  # no second warning
    assert first == second and first.precision == "bf16" and first.requested == "bf16"
    assert first.reason == ("bf16 requested; CPU lacks native bf16 (flags: avx2), measured "
                            "42.0x fp32 time")


def test_explicit_bf16_on_unknown_cpu_warns_only_if_measured_slower(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, "riscv64", "", ratio=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = choose_precision("bf16", "cpu")
    assert choice.precision == "bf16" and "bf16 support unknown" in choice.reason
    _cpu(monkeypatch, "riscv64", "", ratio=3.0)
    with pytest.warns(RuntimeWarning, match=r"3\.0x"):
        choose_precision("bf16", "cpu")


def test_explicit_precisions_are_kept_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _cpu(monkeypatch, "x86_64", "avx2 avx512f avx512_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for precision in ("fp32", "bf16", "fp16"):
            choice = choose_precision(precision, "cpu")
            assert choice.precision == precision and choice.requested == precision
    assert not calls
    _cpu(monkeypatch, "x86_64", "avx2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_precision("fp32", "cpu").precision == "fp32"


def test_unknown_precision_is_an_input_error() -> None:
    with pytest.raises(InputError, match="precision must be one of"):
        choose_precision("int8", "cpu")


@pytest.mark.parametrize(("bf16_ok", "expected"), [(True, "bf16"), (False, "fp16")])
def test_cuda_branch(monkeypatch: pytest.MonkeyPatch, bf16_ok: bool, expected: str) -> None:
    calls = _cpu(monkeypatch, "x86_64", "avx2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    choice = choose_precision("auto", "cuda:0")
    assert choice.precision == expected and "CUDA" in choice.reason
    assert choose_precision("fp32", "cuda").precision == "fp32"
    assert not calls  # the CPU is not asked about a CUDA job


def test_cuda_requested_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="CUDA is not available"):
        runtime.resolve_device("cuda")


def test_autocast_contexts() -> None:
    assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        autocast("cpu", "fp16")
    with autocast("cpu", "fp16", cpu_fp16=True):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(InputError, match="once resolved"):
        autocast("cpu", "auto")


def test_real_probes_run_and_describe_this_machine() -> None:
    record = runtime.machine_record()
    assert set(record["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert record["precision_auto"] in ("fp32", "bf16") and record["precision_reason"]
    assert runtime.measure_bf16_slowdown() > 0


def test_set_threads_and_announce(capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1
        assert runtime.set_threads(None) == 1
        with pytest.raises(InputError):
            runtime.set_threads(0)
        line = runtime.announce("predict s1", PrecisionChoice("fp32", True, "because", "auto"),
                                "cpu")
    finally:
        torch.set_num_threads(before)
    assert line == ("mvfcnn predict s1: precision fp32 (requested auto; because); device cpu, "
                    "1 threads")
    assert capsys.readouterr().err == line + "\n"
