"""Validation during training: mean Y-PSNR of the model on a benchmark folder, as the evaluation protocol scores.

The protocol (uint8 SR, MATLAB Y, border crop = scale) is the one of esrt.evaluate and esrt.metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from esrt.data import load_rgb, modcrop


def validation_images(val_dir: str | Path, scale: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HR modcropped, LR) for a benchmark folder with HR/ and optionally LR_bicubic/X{scale}/."""
    from esrt.imresize import imresize

    root = Path(val_dir)
    out = []
    for hr_path in sorted((root / "HR").glob("*.png")):
        hr = modcrop(load_rgb(hr_path), scale)
        lr_path = root / "LR_bicubic" / f"X{scale}" / hr_path.name
        lr = load_rgb(lr_path) if lr_path.is_file() else imresize(hr, 1 / scale)
        out.append((hr_path.stem, hr, lr))
    return out


@torch.no_grad()
def validate(model: nn.Module, images: list[tuple[str, np.ndarray, np.ndarray]], scale: int) -> float:
    """Mean Y-PSNR (the evaluation protocol: uint8 SR, MATLAB Y, border crop = scale) over images."""
    from esrt.metrics import psnr, rgb_to_y

    was_training = model.training
    model.eval()
    scores = []
    for _, hr, lr in images:
        x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float().div(255).unsqueeze(0)
        sr = model(x).clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
        scores.append(psnr(rgb_to_y(sr), rgb_to_y(hr), border=scale))
    model.train(was_training)
    return float(np.mean(scores))
