"""Shared fixtures: the repository root, the default config, and a small class set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture()
def classes(default_config):
    from mvfcnn.config import ClassSet

    return ClassSet.from_config(default_config)
