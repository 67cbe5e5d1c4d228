"""An exponential moving average of a stage's weights (Polyak averaging, ``fcn.ema_decay``).

With a constant Adam rate the last iterate of a stage is a draw from a noisy plateau (on
MetalDAM the validation mean IoU of one fold jumps between 0.32 and 0.57 between checks); the
average of the recent iterates sits near the plateau's middle instead, for one extra copy of the
weights and one in-place update per step. The decay warms up as (1 + n) / (10 + n) (n = updates
so far), so a short stage is not dragged back to its parent's weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def ema_factor(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (1-based): the configured one, warmed up."""
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """A frozen copy of ``model`` whose floating-point state follows the live weights as
    ``avg <- d * avg + (1 - d) * live``; integer buffers (BatchNorm's batch count) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"fcn.ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - ema_factor(self.decay, self.updates)
        live = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(live[name].to(average.dtype), weight)
            else:
                average.copy_(live[name])

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])
