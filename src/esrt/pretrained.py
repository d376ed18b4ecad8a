"""Shipped weights and `load_model`: the one entry point that turns a checkpoint (or nothing) into a model.

Weights live in esrt/weights/esrt_x{2,3,4}.safetensors inside the package, trained by esrt.train.
"""

from __future__ import annotations

from pathlib import Path

import torch

from esrt.convert import CheckpointError, load_checkpoint
from esrt.model import ESRT, SCALES

WEIGHTS_DIR = Path(__file__).parent / "weights"


def shipped_weights(scale: int) -> Path:
    """Path of the weights shipped for scale; raises CheckpointError when none are shipped yet."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    path = WEIGHTS_DIR / f"esrt_x{scale}.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"no weights are shipped for x{scale} in this version of esrt; pass a checkpoint path "
            "(a reference .pth or an esrt .safetensors)"
        )
    return path


def load_model(path: str | Path | None = None, scale: int | None = None, device: str | torch.device = "cpu") -> ESRT:
    """An eval-mode ESRT from a reference .pth or our .safetensors, or the shipped weights when path is None.

    scale: with path=None it picks the shipped weights (default 4); with a path the scale is detected from
    the tensor shapes, and a given scale that differs is an error.
    """
    if path is None:
        model = load_checkpoint(shipped_weights(4 if scale is None else scale))
    else:
        model = load_checkpoint(path)
        if scale is not None and scale != model.scale:
            raise CheckpointError(f"{path}: holds x{model.scale} weights, but x{scale} was asked for")
    return model.to(device).eval()
