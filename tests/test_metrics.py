"""Tests of esrt.metrics: Y conversion, PSNR and SSIM against values computed by hand and the SSIM formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from esrt.metrics import psnr, rgb_to_y, score, ssim


def ssim_valid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m written out: 11x11 Gaussian (sigma 1.5), 'valid' windows, mean of the map."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()  # fspecial('gaussian', 11, 1.5)
    x, y = a.astype(np.float64), b.astype(np.float64)
    wx, wy = sliding_window_view(x, (11, 11)), sliding_window_view(y, (11, 11))  # (H-10, W-10, 11, 11)
    mx, my = (wx * w).sum(axis=(2, 3)), (wy * w).sum(axis=(2, 3))
    vx = (wx * wx * w).sum(axis=(2, 3)) - mx * mx
    vy = (wy * wy * w).sum(axis=(2, 3)) - my * my
    cxy = (wx * wy * w).sum(axis=(2, 3)) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim_map.mean())


def test_rgb_to_y_by_hand() -> None:
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    # 16 + (65.481 R + 128.553 G + 24.966 B) / 255, rounded: black 16, white 235, red 81.481, green 144.553,
    # blue 40.966, (10, 20, 30): 16 + (654.81 + 2571.06 + 748.98) / 255 = 31.588
    assert rgb_to_y(px).tolist() == [[16, 235, 81, 145, 41, 32]]
    assert rgb_to_y(px).dtype == np.uint8
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert rgb_to_y(gray) is gray  # a grayscale image is its own Y
    with pytest.raises(ValueError):
        rgb_to_y(px.astype(np.float32))


def test_identical_images() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    assert psnr(y, y, 2) == math.inf
    assert ssim(y, y, 2) == pytest.approx(1.0, abs=1e-12)


def test_known_mse_and_border_crop() -> None:
    a = np.zeros((20, 24), np.uint8)
    b = a.copy()
    b[::2] = 10  # every other row differs by 10: MSE 50
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 50), abs=1e-12)
    c = a.copy()
    c[:3] = 200  # differences only inside the 3-pixel border: they do not count
    c[:, -3:] = 7
    assert psnr(a, c, border=3) == math.inf
    assert psnr(a, c, border=2) < 30


def test_constant_shift() -> None:
    a = np.full((32, 32), 100, np.uint8)
    b = a + np.uint8(5)
    assert psnr(a, b, 4) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)
    # constant images: no variance, SSIM is the luminance term alone, (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b, 4) == pytest.approx((2 * 100 * 105 + c1) / (100**2 + 105**2 + c1), abs=1e-12)
    # a shifted textured image keeps the structure term at 1: SSIM is below 1 only through the means
    rng = np.random.default_rng(1)
    t = rng.integers(50, 200, (40, 40), dtype=np.uint8)
    assert 0.99 < ssim(t, t + np.uint8(5)) < 1.0


def test_ssim_equals_the_formula_on_a_random_pair() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (37, 45), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    for border in (0, 3):
        h, w = a.shape
        expected = ssim_valid_reference(
            a[border : h - border, border : w - border], b[border : h - border, border : w - border]
        )
        assert ssim(a, b, border) == pytest.approx(expected, abs=1e-12)
    assert ssim(a, b) < 0.97  # and the pair is far from identical, so the check has teeth


def test_score_uses_y_and_crop() -> None:
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[:2] = 0  # damage only the border of width 2
    assert score(sr, hr, 2)[0] == math.inf
    assert score(sr, hr, 1)[0] < 40


def test_rejects_bad_input() -> None:
    y = np.zeros((20, 20), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        psnr(y, y[:10])
    with pytest.raises(ValueError, match="nothing left"):
        psnr(y, y, 10)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(y, y, 5)
