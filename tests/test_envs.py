"""The conda environment file must carry exactly the pins of requirements.lock."""

from __future__ import annotations

import importlib.util

import yaml


def test_conda_env_matches_lock(repo_root):
    script = repo_root / "scripts" / "sync_envs.py"
    spec = importlib.util.spec_from_file_location("sync_envs", script)
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    env = yaml.safe_load((repo_root / "workflow" / "envs" / "mvfcnn.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = [p for p in pip_section if not p.startswith("-e")]
    assert pins == sync.lock_pins(), "run scripts/sync_envs.py after editing the lock"


def test_lock_pins_torch(repo_root):
    pins = dict(line.split("==") for line in (repo_root / "requirements.lock").read_text().split())
    assert pins["torch"] == "2.14.1"
    assert pins["torchvision"] == "0.29.1"
    assert all(version for version in pins.values())
