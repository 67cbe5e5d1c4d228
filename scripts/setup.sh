#!/usr/bin/env bash
# Create .venv and install the pinned dependencies (requirements.lock) plus mvfcnn itself.
# Idempotent and quick when nothing changed: a stamp of the lock + pyproject skips reinstalling.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
stamp=.venv/.mvfcnn-setup-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "setup: installing pinned dependencies from requirements.lock (torch from the local wheel store when present)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
else
    echo "setup: .venv is up to date"
fi
