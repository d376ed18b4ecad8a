"""Tests of esrt.train.ema: the update is the stated moving average, with its ramp-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esrt.train import EMA


def test_ema_update_is_the_moving_average() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, iteration=1000)  # past the ramp: decay 0.9
    for k, v in ema.model.state_dict().items():
        assert torch.allclose(v, 0.9 * start[k] + 0.1 * model.state_dict()[k], atol=1e-6), k
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_decay_ramps_up() -> None:
    ema = EMA(nn.Linear(1, 1), decay=0.999)
    assert [ema.decay_at(t) for t in (0, 10)] == [pytest.approx(0.1), pytest.approx(11 / 20)]
    assert ema.decay_at(100_000) == 0.999
