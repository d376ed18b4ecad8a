"""Y conversion, PSNR and SSIM as super-resolution papers report them (MATLAB scripts of the field).

Follows the field's protocol (docs/evaluation.md, "Protocol"): rgb2ycbcr Y rounded to uint8, border crop of s pixels,
PSNR with peak 255, SSIM as Wang et al.'s ssim_index.m (11x11 Gaussian, sigma 1.5, 'valid' filtering).
"""

from __future__ import annotations

import math

import numpy as np

SSIM_WINDOW = 11  # Gaussian window side of ssim_index.m
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PEAK = 255.0


def _require_uint8(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (round the image first), got {image.dtype}")
    return image


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Luma of a uint8 RGB (H, W, 3) image as MATLAB's rgb2ycbcr returns it: uint8, ITU-R BT.601, rounded.

    Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255). A grayscale (H, W) image is returned as is
    (the MATLAB scripts treat a one-channel image as its own Y).
    """
    image = _require_uint8(image, "image")
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB or (H, W) grayscale image, got shape {image.shape}")
    rgb = image.astype(np.float64)
    y = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)  # MATLAB's uint8(): round half up


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    """image without `border` pixels on every side."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    h, w = image.shape[:2]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"a {w}x{h} image has nothing left after cropping {border} pixels from each border")
    return image[border : h - border, border : w - border] if border else image


def _pair(a: np.ndarray, b: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = _require_uint8(a, "a"), _require_uint8(b, "b")
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two Y images (H, W) of the same shape, got {a.shape} and {b.shape}")
    return crop_border(a, border).astype(np.float64), crop_border(b, border).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    """PSNR in dB (peak 255) of two uint8 Y images after cropping `border` pixels; inf when they are equal."""
    x, y = _pair(a, b, border)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK * PEAK / mse)


def ssim(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    """Mean SSIM of two uint8 Y images after cropping `border` pixels, as Wang's ssim_index.m computes it.

    Uses scikit-image's structural_similarity with the 11x11 Gaussian (sigma 1.5), population covariance
    and L = 255: it filters with padding, then drops (11 - 1) / 2 pixels per side before averaging, which
    leaves exactly the map of MATLAB's 'valid' filtering (tests/test_metrics.py checks it against the
    formula).
    """
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b, border)
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after the border crop, got {x.shape}")
    value = structural_similarity(
        x,
        y,
        gaussian_weights=True,
        sigma=SSIM_SIGMA,
        use_sample_covariance=False,
        data_range=PEAK,
        K1=SSIM_K1,
        K2=SSIM_K2,
    )
    assert isinstance(value, float)  # a numpy float64 (full=False, gradient=False)
    return float(value)


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of a uint8 SR image against its uint8 HR image: Y of both, `scale` pixels cropped."""
    y_sr, y_hr = rgb_to_y(sr), rgb_to_y(hr)
    return psnr(y_sr, y_hr, scale), ssim(y_sr, y_hr, scale)
