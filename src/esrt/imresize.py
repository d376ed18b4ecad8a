"""MATLAB-compatible bicubic resize (`imresize(I, scale, 'bicubic')`): the protocol's LR maker.

Follows MATLAB's kernel and antialiasing; it rebuilds every LR file of Set5/Set14/BSD100 bit for bit
(docs/evaluation.md, "Data").
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

KERNEL_WIDTH = 4.0  # support of the cubic kernel (a = -0.5), in input pixels at scale 1


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's imresize uses it."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _as_fraction(scale: float) -> Fraction:
    """scale as an exact fraction when it is one in disguise (1/3 -> Fraction(1, 3)), so factors stay exact."""
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    frac = Fraction(scale).limit_denominator(1000)
    return frac if abs(float(frac) - scale) <= 1e-9 * scale else Fraction(scale)


def resized_length(in_len: int, scale: float) -> int:
    """Pixels along an axis of in_len pixels after resizing by scale: ceil(in_len * scale), exact for fractions."""
    return math.ceil(in_len * _as_fraction(scale))


def contributions(in_len: int, scale: float, antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Weights (out_len, P) and 0-based source indices (out_len, P) of a 1-D MATLAB bicubic resize.

    Output pixel x (1-based) reads around input position u = x / scale + 0.5 * (1 - 1 / scale); for a
    downscale with antialiasing the kernel is stretched by 1 / scale. Indices outside the image are clamped
    to the edge (replicate), weights of each output sample sum to 1.
    """
    frac = _as_fraction(scale)
    out_len = resized_length(in_len, scale)
    if out_len < 1:
        raise ValueError(f"resizing {in_len} pixels by {scale} leaves no pixel")
    x = np.arange(1, out_len + 1, dtype=np.float64)
    if frac.numerator == 1:  # downscale by an integer s: keep s exact (1 / (1/3) is 3.0000000000000004)
        inv = float(frac.denominator)
        u = x * inv + 0.5 * (1.0 - inv)
    else:
        s = float(frac)
        inv = 1.0 / s
        u = x / s + 0.5 * (1.0 - 1.0 / s)
    stretch = inv if (frac < 1 and antialiasing) else 1.0
    width = KERNEL_WIDTH * stretch
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # (out_len, P), 1-based
    weights = cubic((u[:, None] - idx) / stretch) / stretch  # (out_len, P)
    weights = weights / weights.sum(axis=1, keepdims=True)
    indices = np.clip(idx.astype(np.int64) - 1, 0, in_len - 1)  # 0-based, replicate border
    return weights, indices, out_len


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's conversion of double to uint8: round half up (for non-negatives), saturate to 0..255."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _resize_axis(image: np.ndarray, axis: int, scale: float, antialiasing: bool) -> np.ndarray:
    """One 1-D pass along axis in float64; the taps are summed in kernel order, as MATLAB does."""
    weights, indices, out_len = contributions(image.shape[axis], scale, antialiasing)
    moved = np.moveaxis(image, axis, 0)  # (L, ...)
    shape = (out_len,) + (1,) * (moved.ndim - 1)
    out = np.zeros((out_len, *moved.shape[1:]), dtype=np.float64)
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(shape) * moved[indices[:, k]]
    return np.moveaxis(out, 0, axis)


def imresize(image: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Bicubic resize of an (H, W) or (H, W, C) array by scale, as MATLAB's `imresize(image, scale)`.

    scale < 1 downscales (antialiased unless antialiasing=False), scale > 1 upscales; the output is
    ceil(H * scale) x ceil(W * scale). Rows are resized first, then columns. uint8 in -> uint8 out, with
    the intermediate image rounded to uint8 between the passes (as MATLAB does); float in -> float out of
    the same dtype, computed in float64 with no rounding.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.dtype == np.uint8:
        rows = _round_uint8(_resize_axis(image.astype(np.float64), 0, scale, antialiasing))
        return _round_uint8(_resize_axis(rows.astype(np.float64), 1, scale, antialiasing))
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a uint8 or float image, got dtype {image.dtype}")
    rows = _resize_axis(image.astype(np.float64), 0, scale, antialiasing)
    return _resize_axis(rows, 1, scale, antialiasing).astype(image.dtype)
