"""Resumable, deterministic training: checkpoints with RNG states and a fingerprint of what
shapes the weights.

The batch order is a function of the seed alone (:func:`mvfcnn.fcn.dataset.sample_order`), the data
loader has its own generator (it never draws from the global RNG), and checkpoints hold the
model, optimiser, grad-scaler and Python/NumPy/torch RNG states with the CSV rows so far. A run
killed at any point and restarted resumes from the latest valid checkpoint and ends with the
same weights, bit for bit on CPU, as an uninterrupted run. Checkpoints carry a fingerprint of
everything that shapes the weights (tiles, config, variant, seed, parent); a checkpoint with
another fingerprint is ignored and removed. They are deleted after the final model is written
(``fcn.keep_checkpoints: true`` keeps them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mvfcnn.core.config import ClassSet
from mvfcnn.core.io import atomic_path

#: config keys that do not change the trained weights (left out of the checkpoint fingerprint)
_RUN_ONLY_KEYS = {"iterations", "checkpoint_every", "validate_every", "device", "num_workers",
                  "keep_checkpoints", "progress", "val_max_tiles", "stages"}
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")

log = logging.getLogger(__name__)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic algorithms (warn-only) for the duration of a training run."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        torch.backends.cudnn.benchmark = bench


def _sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _frame_hash(frame: pd.DataFrame | None) -> str:
    if frame is None or len(frame) == 0:
        return "none"
    values = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    return hashlib.sha256(values.tobytes() + ",".join(map(str, frame.columns)).encode()).hexdigest()


def run_fingerprint(*, stage: str, tiles: pd.DataFrame, val_tiles: pd.DataFrame | None,
                    classes: ClassSet, cfg: dict[str, Any], variant: dict[str, Any],
                    parent: str | os.PathLike[str] | None, seed: int) -> str:
    """Hash of everything that shapes the trained weights (checkpoints of other runs are void)."""
    payload = {
        "stage": stage, "seed": int(seed), "classes": classes.to_dict(), "variant": variant,
        "cfg": {k: v for k, v in cfg.items() if k not in _RUN_ONLY_KEYS},
        "tiles": _frame_hash(tiles), "val": _frame_hash(val_tiles),
        "parent": _sha256_file(parent) if parent is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_files(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(iteration, path) of the checkpoints in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _CKPT_RE.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def _rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike[str], iteration: int, payload: dict[str, Any],
                    *, keep: int = 2) -> Path:
    """Write ``ckpt_<iteration>.pt`` atomically; keep only the newest ``keep`` checkpoints."""
    path = Path(directory) / f"ckpt_{iteration:09d}.pt"
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for _, old in checkpoint_files(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(directory: str | os.PathLike[str], *, fingerprint: str,
                    max_iteration: int) -> dict[str, Any] | None:
    """The newest readable checkpoint of this run, or None; foreign ones are removed."""
    for iteration, path in checkpoint_files(directory):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unreadable: try the next older one
            log.warning("skipping unreadable checkpoint %s (%s)", path, err)
            continue
        if payload.get("fingerprint") != fingerprint or iteration > max_iteration:
            log.warning("ignoring checkpoint %s: made by a run with other settings", path)
            path.unlink(missing_ok=True)
            continue
        return payload
    return None


def _remove_stale_temporaries(directory: Path) -> None:
    """Half-written checkpoints of a killed run (atomic_path temporaries)."""
    if directory.is_dir():
        for path in directory.glob(".ckpt_*.tmp*"):
            path.unlink(missing_ok=True)
