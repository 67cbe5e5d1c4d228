"""scripts/benchmark_summary.py on hand-written Snakemake benchmark files, exact numbers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_summary.py"
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"

EXPECTED_TABLE = """\
| rule | jobs | total s | mean s | max s | max RSS MB |
|---|---:|---:|---:|---:|---:|
| train_fcn | 1 | 110.0 | 110.0 | 110.0 | 1200.5 |
| register | 2 | 15.0 | 7.5 | 10.5 | 300.0 |
| mask | 1 | 2.0 | 2.0 | 2.0 | n/a |

Total wall time over 4 jobs: 127.0 s (0:02:07); jobs that ran in parallel make the workflow's \
elapsed time shorter.
"""


def load_module():
    spec = importlib.util.spec_from_file_location("benchmark_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write(path: Path, *rows: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(row + "\n" for row in rows))


@pytest.fixture()
def benchmarks(tmp_path) -> Path:
    root = tmp_path / "results" / "benchmarks"
    write(root / "register" / "a.tsv", "10.5000\t0:00:10\t100.25\t500.0\t90\t95\t1.0\t0.5\t80\t8.4")
    write(root / "register" / "b.tsv", "4.5000\t0:00:04\t300.00\t700.0\t290\t295\t0\t0\t95\t4.3")
    # repeat(..., 2): two rows of one job -> mean seconds, max RSS
    write(
        root / "train_fcn" / "v_sem_32s.tsv",
        "100.0000\t0:01:40\t1000.0\t3000\t-\t-\t-\t-\t-\t-",
        "120.0000\t0:02:00\t1200.5\t3100\t-\t-\t-\t-\t-\t-",
    )
    write(root / "mask" / "deep" / "x.tsv", "2.0000\t0:00:02\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA")
    (root / "summary.md").write_text("old summary, not an input\n")
    (root / "register" / "notes.txt").write_text("ignored\n")
    return root


def test_summary_numbers(benchmarks):
    module = load_module()
    stats = module.collect(benchmarks)
    assert sorted(stats) == ["mask", "register", "train_fcn"]
    assert stats["register"].seconds == [10.5, 4.5]
    assert stats["register"].max_rss_mb == 300.0
    assert stats["train_fcn"].seconds == [110.0]
    assert stats["train_fcn"].max_rss_mb == 1200.5
    text = module.render(stats, "results/benchmarks")
    assert text.startswith("# Benchmark summary\n")
    assert text.endswith(EXPECTED_TABLE)


def test_cli_writes_summary(benchmarks):
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=benchmarks.parents[1], text=True, capture_output=True
    )
    assert result.returncode == 0, result.stderr
    assert "4 jobs, 3 rules" in result.stdout
    summary = (benchmarks / "summary.md").read_text()
    assert summary.endswith(EXPECTED_TABLE)
    # Running again gives the same file (summary.md is not read back as a benchmark).
    subprocess.run([sys.executable, str(SCRIPT)], cwd=benchmarks.parents[1], check=True,
                   capture_output=True)
    assert (benchmarks / "summary.md").read_text() == summary


def test_no_benchmarks(tmp_path):
    out = tmp_path / "summary.md"
    module = load_module()
    assert module.main(["--benchmarks", str(tmp_path / "missing"), "--out", str(out)]) == 0
    assert "No benchmark files found." in out.read_text()


def test_not_a_benchmark_file(tmp_path):
    (tmp_path / "rule").mkdir()
    (tmp_path / "rule" / "x.tsv").write_text("a\tb\n1\t2\n")
    module = load_module()
    assert module.main(["--benchmarks", str(tmp_path)]) == 1


def test_hms():
    module = load_module()
    assert module.hms(0) == "0:00:00"
    assert module.hms(3725.4) == "1:02:05"
