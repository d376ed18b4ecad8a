"""Exponential moving average of the weights, the copy the trainer validates and exports.

Not in the paper; a common addition for super-resolution training (e.g. BasicSR's `ema_decay`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Exponential moving average of a model's weights (float32), updated after every step.

    The decay ramps up as min(decay, (1 + t) / (10 + t)), so that short runs are not dominated by the
    initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, iteration: int) -> float:
        """The decay applied by the update after step iteration (counted from 0)."""
        return min(self.decay, (1 + iteration) / (10 + iteration))

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> None:
        """ema = decay * ema + (1 - decay) * model, for every parameter and buffer."""
        ema = list(self.model.state_dict().values())
        current = list(model.state_dict().values())
        torch._foreach_lerp_(ema, current, 1 - self.decay_at(iteration))  # pyright: ignore[reportPrivateImportUsage]
