"""Regenerate workflow/envs/mvfcnn.yaml from requirements.lock so conda users get the same pins.

Run after changing the lock: `.venv/bin/python scripts/sync_envs.py`. tests/test_envs.py fails
when the two disagree.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# Conda environment for `snakemake --sdm conda`. GENERATED from requirements.lock by
# scripts/sync_envs.py -- do not edit by hand; tests/test_envs.py checks they agree.
name: mvfcnn
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def lock_pins(lock: Path = ROOT / "requirements.lock") -> list[str]:
    lines = [line.strip() for line in lock.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def render(pins: list[str]) -> str:
    body = "".join(f"      - {pin}\n" for pin in pins)
    return HEADER + body + "      - -e ../\n"


def main() -> None:
    (ROOT / "workflow" / "envs" / "mvfcnn.yaml").write_text(render(lock_pins()))


if __name__ == "__main__":
    main()
