"""Training ESRT: the loop, resumable checkpoints, the log, EMA and the compiled training twin.

`from esrt.train import train, TrainConfig` as before; TrainConfig needs no torch, the other names import it
when first used (so that `esrt --help` stays fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from esrt.train.config import TrainConfig, load_config_file

_LAZY = {
    "train": "esrt.train.loop",
    "TrainResult": "esrt.train.loop",
    "DivergenceError": "esrt.train.loop",
    "learning_rate": "esrt.train.loop",
    "EMA": "esrt.train.ema",
    "warm_start": "esrt.train.checkpoint",
    "checkpoints": "esrt.train.checkpoint",
    "prepare_for_training": "esrt.train.twin",
}

if TYPE_CHECKING:
    from esrt.train.checkpoint import checkpoints, warm_start
    from esrt.train.ema import EMA
    from esrt.train.loop import DivergenceError, TrainResult, learning_rate, train
    from esrt.train.twin import prepare_for_training

__all__ = [
    "EMA",
    "DivergenceError",
    "TrainConfig",
    "TrainResult",
    "checkpoints",
    "learning_rate",
    "load_config_file",
    "prepare_for_training",
    "train",
    "warm_start",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'esrt.train' has no attribute {name!r}")
