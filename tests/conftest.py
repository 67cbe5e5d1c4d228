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
    from mvfcnn.core.config import ClassSet

    return ClassSet.from_config(default_config)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny tensors on 2 shared cores (no spin-waits between threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stripe_images(n_per_class: int, *, seed: int, classes: int = 3):
    """(uint8 32x32 crops, class 1..classes): noisy stripes told apart by their period and
    direction, for baselines that must learn something on a few crops."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    patterns = [np.sin(2 * np.pi * xx / 3), np.sin(2 * np.pi * yy / 8),
                np.sin(2 * np.pi * (xx + yy) / 20)][:classes]
    images, labels = [], []
    for cls, pattern in enumerate(patterns, start=1):
        for _ in range(n_per_class):
            noisy = 128 + 90 * pattern + rng.normal(0, 10, pattern.shape)
            images.append(np.clip(noisy, 0, 255).astype(np.uint8))
            labels.append(cls)
    return images, labels

