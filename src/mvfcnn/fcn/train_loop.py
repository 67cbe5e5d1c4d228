"""The one training loop of every network here: the FCN stages (:mod:`mvfcnn.fcn.train`), the
trunk's patch pretraining and its SSL phase (:mod:`mvfcnn.fcn.pretrain`) and the CNN baselines
(:mod:`mvfcnn.baselines.run`).

A caller owns its data, model and what it records; :func:`fit` owns the step, in the one order
a fresh and a resumed run share: the caller's forward pass and loss (``step``, under the job's
autocast), a finite-loss check, ``zero_grad`` -> backward -> optimiser step (through a
``GradScaler`` when fp16 needs one), the step's wall time, the caller's bookkeeping (``after``:
validation, checkpoints, epoch means) and the progress bar. ``before`` runs ahead of each step
(a learning-rate schedule).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from mvfcnn.core.errors import InputError
from mvfcnn.core.progress import Progress

T = TypeVar("T")


@dataclass
class Step:
    """One step's result: the objective to back-propagate, the row the caller records (its
    ``seconds`` field, if present, is filled in by :func:`fit`) and the progress bar's fields."""

    loss: torch.Tensor
    row: dict[str, Any]
    postfix: dict[str, str] = field(default_factory=dict)


def fit(batches: Iterable[T], step: Callable[[T], Step], optimizer: torch.optim.Optimizer, *,
        bar: Progress, after: Callable[[int, dict[str, Any]], None], start: int = 0,
        scaler: torch.amp.GradScaler | None = None,
        before: Callable[[int], None] | None = None, what: str = "training",
        hint: str = "lower the learning rate") -> int:
    """Train on ``batches`` from iteration ``start``; returns the last iteration.

    ``after(iteration, row)`` gets the 1-based iteration and the step's row once the weights
    are updated. A non-finite loss stops the job with an error naming ``what``, the iteration
    and ``hint``, before it can reach the weights.
    """
    iteration, tick = start, time.perf_counter()
    for batch in batches:
        if before is not None:
            before(iteration)
        result = step(batch)
        value = float(result.loss.detach())
        if not math.isfinite(value):
            raise InputError(f"{what} loss is {value} at iteration {iteration + 1}: {hint}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(result.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            result.loss.backward()
            optimizer.step()
        iteration += 1
        if "seconds" in result.row:
            result.row["seconds"] = time.perf_counter() - tick
        after(iteration, result.row)
        if result.postfix:
            bar.set_postfix(**result.postfix)
        bar.update(1)
        tick = time.perf_counter()
    bar.close()
    return iteration
