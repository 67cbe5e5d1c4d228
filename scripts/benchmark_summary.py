#!/usr/bin/env python3
"""Summarise Snakemake benchmark files per rule into one Markdown table.

    scripts/benchmark_summary.py [--benchmarks results/benchmarks] [--out <dir>/summary.md]

Reads every ``<benchmarks>/**/*.tsv`` written by a rule's ``benchmark:`` directive (columns
``s  h:m:s  max_rss  max_vms ...``; max_rss in MB; "NA"/"-" when unknown) and writes, per rule,
the number of jobs and their total, mean and maximum wall seconds and the largest RSS, plus the
sum over all jobs. The rule is the first folder below ``<benchmarks>`` (the workflow writes
``results/benchmarks/<rule>/<wildcards>.tsv``); a file directly in it counts under its own stem.
One file is one job; a file with several rows (``repeat("...", n)``) counts with the mean of its
wall times and the largest of its RSS values.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

MISSING = {"", "NA", "-", "nan", "NaN"}


@dataclass
class RuleStats:
    seconds: list[float] = field(default_factory=list)
    max_rss_mb: float = math.nan

    def add(self, seconds: float, rss_mb: float) -> None:
        self.seconds.append(seconds)
        if not math.isnan(rss_mb) and (math.isnan(self.max_rss_mb) or rss_mb > self.max_rss_mb):
            self.max_rss_mb = rss_mb


def _number(text: str | None) -> float:
    if text is None or text.strip() in MISSING:
        return math.nan
    return float(text)


def read_benchmark(path: Path) -> tuple[float, float]:
    """(wall seconds, max RSS in MB) of one benchmark file; NaN where unknown."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column)")
    seconds = [s for s in (_number(row["s"]) for row in rows) if not math.isnan(s)]
    rss = [r for r in (_number(row.get("max_rss")) for row in rows) if not math.isnan(r)]
    return (
        sum(seconds) / len(seconds) if seconds else math.nan,
        max(rss) if rss else math.nan,
    )


def rule_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def collect(root: Path) -> dict[str, RuleStats]:
    stats: dict[str, RuleStats] = {}
    for path in sorted(root.rglob("*.tsv")):
        seconds, rss = read_benchmark(path)
        if math.isnan(seconds):
            continue
        stats.setdefault(rule_of(path, root), RuleStats()).add(seconds, rss)
    return stats


def hms(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def render(stats: dict[str, RuleStats], source: str) -> str:
    lines = [
        "# Benchmark summary",
        "",
        f"From the Snakemake benchmark files under `{source}` (one file per job). Seconds are "
        "wall-clock per job; RSS is the job's peak resident memory.",
        "",
    ]
    if not stats:
        return "\n".join(lines + ["No benchmark files found.", ""])
    lines += [
        "| rule | jobs | total s | mean s | max s | max RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    order = sorted(stats.items(), key=lambda item: (-sum(item[1].seconds), item[0]))
    for rule, st in order:
        total = sum(st.seconds)
        lines.append(
            f"| {rule} | {len(st.seconds)} | {total:.1f} | {total / len(st.seconds):.1f} "
            f"| {max(st.seconds):.1f} | {_fmt(st.max_rss_mb)} |"
        )
    jobs = sum(len(st.seconds) for st in stats.values())
    total = sum(sum(st.seconds) for st in stats.values())
    lines += [
        "",
        f"Total wall time over {jobs} jobs: {total:.1f} s ({hms(total)}); jobs that ran in "
        "parallel make the workflow's elapsed time shorter.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--out", type=Path, default=None, help="default: <benchmarks>/summary.md")
    args = parser.parse_args(argv)
    out = args.out or args.benchmarks / "summary.md"
    try:
        stats = collect(args.benchmarks) if args.benchmarks.is_dir() else {}
    except (OSError, ValueError) as err:
        print(f"benchmark_summary: error: {err}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(stats, str(args.benchmarks)))
    tmp.replace(out)
    print(f"benchmark_summary: {sum(len(s.seconds) for s in stats.values())} jobs, "
          f"{len(stats)} rules -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
