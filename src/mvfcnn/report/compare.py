"""Are two runs' tables the same? For checking that a change of code (a refactoring, an upgrade
of torch) left every number as it was:
``mvfcnn compare-tables OLD/results/tables NEW/results/tables``.

Files are compared byte for byte, and where they differ, again with the measured durations
masked (:func:`mvfcnn.report.describe.without_measured_times`): wall times differ between any
two runs, even of the same code on the same data, and are the only text that may.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvfcnn.core.errors import InputError
from mvfcnn.report.describe import without_measured_times

#: the table files a report writes that hold numbers (HTML renders the same content)
PATTERNS = ("*.csv", "*.md")


@dataclass(frozen=True)
class Comparison:
    name: str
    verdict: str          # "identical" | "times only" | "different" | "only in old" | "only in new"
    first_difference: str = ""


def _first_difference(old: str, new: str) -> str:
    for number, (a, b) in enumerate(zip(old.splitlines(), new.splitlines(), strict=False), start=1):
        if a != b:
            return f"line {number}: {a!r} -> {b!r}"
    return f"line count {len(old.splitlines())} -> {len(new.splitlines())}"


def compare_file(old: Path, new: Path) -> Comparison:
    if old.read_bytes() == new.read_bytes():
        return Comparison(old.name, "identical")
    old_text = without_measured_times(old.read_text(encoding="utf-8"))
    new_text = without_measured_times(new.read_text(encoding="utf-8"))
    if old_text == new_text:
        return Comparison(old.name, "times only")
    return Comparison(old.name, "different", _first_difference(old_text, new_text))


def compare_tables(old_dir: str | Path, new_dir: str | Path,
                   patterns: tuple[str, ...] = PATTERNS) -> list[Comparison]:
    """One :class:`Comparison` per table file in either folder, by name."""
    old_dir, new_dir = Path(old_dir), Path(new_dir)
    for folder in (old_dir, new_dir):
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder of tables")
    names = sorted({p.name for d in (old_dir, new_dir) for pattern in patterns
                    for p in d.glob(pattern)})
    out = []
    for name in names:
        old, new = old_dir / name, new_dir / name
        if not new.exists():
            out.append(Comparison(name, "only in old"))
        elif not old.exists():
            out.append(Comparison(name, "only in new"))
        else:
            out.append(compare_file(old, new))
    return out
