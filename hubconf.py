"""torch.hub entry points: `torch.hub.load(REPO, "esrt", scale=4)` returns ESRT with the shipped weights.

Follows torch.hub's hubconf protocol (`dependencies` and one function per model); the code comes from this
checkout's src/ (so a hub download needs no install), the weights from src/esrt/weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "numpy", "safetensors"]

_SRC = str(Path(__file__).resolve().parent / "src")
if "esrt" not in sys.modules and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import torch  # noqa: E402

from esrt.model import ESRT  # noqa: E402
from esrt.pretrained import load_model  # noqa: E402


def esrt(scale: int = 4, pretrained: bool = True, device: str | torch.device = "cpu") -> ESRT:
    """ESRT (Lu et al., CVPR-W 2022) for x2, x3 or x4 super-resolution of RGB images in [0, 1], shape (B, 3, H, W).

    pretrained: the shipped weights (eval mode); False gives the freshly initialised network (train mode).
    """
    if not pretrained:
        return ESRT(scale).to(device)
    return load_model(scale=scale, device=device)
