"""Test pictures and stand-in networks shared by the image, tiling, upscale and CLI tests."""

from __future__ import annotations

import numpy as np


def smooth(h: int, w: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    """A smooth test picture (gradients and waves), (h, w, channels)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [np.sin(x / 3 + c) * np.cos(y / 4 - c) for c in range(channels)]
    v = (np.stack(planes, -1) + 1) / 2
    return np.rint(v * (65535 if dtype == np.uint16 else 255)).astype(dtype)


class Nearest:
    """A pointwise 'network' (nearest-neighbour upsampling of a fixed colour transform): tiles must be exact.

    Records the shape of every input it is called on.
    """

    scale = 2

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.shape)
        y = np.stack([x[0] * 0.5 + x[2] * 0.25, x[1] ** 2, 1 - x[2]])
        return np.repeat(np.repeat(y, 2, axis=1), 2, axis=2).astype(np.float32)
