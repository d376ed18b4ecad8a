"""The reference test-time tiling (`forward_chop`): four overlapping quadrants, recursively.

Follows the reference evaluation of luissen/ESRT (docs/architecture.md, "The reference test-time tiling"),
made correct at every scale (the reference hard-codes x4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def forward_chop(
    model: Callable[[torch.Tensor], torch.Tensor],
    lr: torch.Tensor,
    shave: int = 10,
    min_size: int = 60000,
    scale: int | None = None,
) -> torch.Tensor:
    """Runs model on 4 overlapping quadrants of lr (B, 3, H, W), recursing while a quadrant's area >= min_size.

    Each quadrant is (H//2 + shave) x (W//2 + shave); each output quadrant keeps the part nearest its own
    corner. scale defaults to model.scale.
    """
    s = int(scale if scale is not None else getattr(model, "scale"))  # noqa: B009
    B, C, H, W = lr.shape
    h_half, w_half = H // 2, W // 2
    h_size, w_size = min(h_half + shave, H), min(w_half + shave, W)
    quadrants = [
        lr[:, :, :h_size, :w_size],
        lr[:, :, :h_size, W - w_size :],
        lr[:, :, H - h_size :, :w_size],
        lr[:, :, H - h_size :, W - w_size :],
    ]
    if h_size * w_size < min_size:
        sr = model(torch.cat(quadrants, dim=0)).split(B, dim=0)  # 4 x (B, 3, s*h_size, s*w_size)
    else:
        sr = [forward_chop(model, q, shave, min_size, s) for q in quadrants]
    H, W, h_half, w_half, h_size, w_size = (s * v for v in (H, W, h_half, w_half, h_size, w_size))
    out = lr.new_empty(B, sr[0].shape[1], H, W, dtype=sr[0].dtype)
    out[:, :, :h_half, :w_half] = sr[0][:, :, :h_half, :w_half]
    out[:, :, :h_half, w_half:] = sr[1][:, :, :h_half, w_size - W + w_half :]
    out[:, :, h_half:, :w_half] = sr[2][:, :, h_size - H + h_half :, :w_half]
    out[:, :, h_half:, w_half:] = sr[3][:, :, h_size - H + h_half :, w_size - W + w_half :]
    return out
