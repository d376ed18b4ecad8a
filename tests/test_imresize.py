"""Tests of esrt.imresize: the 357 LR files of Set5/Set14/BSD100 rebuilt bit for bit, and small unit checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from esrt import imresize
from esrt.imresize import contributions, cubic

from .conftest import data_path

SETS = ("Set5", "Set14", "BSD100")
COUNTS = {"Set5": 5, "Set14": 14, "BSD100": 100}


@pytest.mark.slow
@pytest.mark.parametrize("name", SETS)
def test_rebuilds_lr_files_bit_for_bit(name: str) -> None:
    hr_files = sorted(data_path(name, "HR").glob("*.png"))
    assert len(hr_files) == COUNTS[name]
    checked, mismatched = 0, []
    for hr_path in hr_files:
        hr = np.asarray(Image.open(hr_path))
        for scale in (2, 3, 4):
            lr = np.asarray(Image.open(data_path(name, "LR_bicubic", f"X{scale}", hr_path.name)))
            h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale  # modcrop
            out = imresize(hr[:h, :w], 1 / scale)
            assert out.dtype == np.uint8
            checked += 1
            if out.shape != lr.shape or not np.array_equal(out, lr):
                mismatched.append(f"x{scale}/{hr_path.name}")
    assert checked == 3 * COUNTS[name]  # 357 files over the three sets
    assert mismatched == []


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_constant_image_stays_constant(scale: float) -> None:
    img = np.full((13, 17, 3), 77, np.uint8)
    out = imresize(img, scale)
    assert out.dtype == np.uint8
    assert (out == 77).all()
    f = imresize(np.full((13, 17), 0.25), scale)
    np.testing.assert_allclose(f, 0.25, rtol=0, atol=1e-12)


def test_shapes_and_dtypes() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (10, 7, 3), dtype=np.uint8)
    assert imresize(img, 3).shape == (30, 21, 3)
    assert imresize(img[:, :, 0], 2).shape == (20, 14)
    assert imresize(img[:9, :6], 1 / 3).shape == (3, 2, 3)  # 1/3 handled as an exact factor
    assert imresize(img.astype(np.float32), 2).dtype == np.float32
    assert imresize(img.astype(np.float64), 1 / 2).dtype == np.float64


def test_float_is_not_rounded_and_uint8_is() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(64, 192, (12, 12), dtype=np.uint8)  # no saturation at 0 or 255
    f = imresize(img.astype(np.float64), 2)
    assert not np.allclose(f, np.round(f))  # no rounding anywhere on the float path
    u = imresize(img, 2)
    # the uint8 path rounds after each pass: close to the float path, but not always round(float)
    assert np.abs(u.astype(np.float64) - f).max() < 1.5
    assert np.mean(u == np.floor(f + 0.5)) > 0.5


def test_upscale_reproduces_linear_ramp_in_interior() -> None:
    # The a = -0.5 cubic reproduces linear functions exactly; only the clamped border deviates.
    ramp = np.tile(np.arange(20, dtype=np.float64), (6, 1))  # (6, 20), value = column index
    out = imresize(ramp, 2)
    expected = (np.arange(1, 41) / 2 + 0.5 * (1 - 1 / 2)) - 1  # 0-based input position of each column
    np.testing.assert_allclose(out[:, 4:-4], np.broadcast_to(expected[4:-4], (12, 32)), atol=1e-12)


def test_contributions_match_matlab_formula() -> None:
    # x2 downscale of 8 pixels: output 1 reads around u = 1*2 + 0.5*(1-2) = 1.5, kernel width 8, 10 taps.
    weights, indices, out_len = contributions(8, 1 / 2)
    assert out_len == 4 and weights.shape == (4, 10)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    left = np.floor(1.5 - 4)  # 1-based first tap
    taps = left + np.arange(10)
    raw = cubic((1.5 - taps) / 2) / 2
    np.testing.assert_allclose(weights[0], raw / raw.sum())
    assert indices[0].tolist() == np.clip(taps - 1, 0, 7).astype(int).tolist()
    # plain cubic upscale: 4 + 2 taps, unstretched kernel
    weights_up, _, out_up = contributions(5, 3)
    assert out_up == 15 and weights_up.shape == (15, 6)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4, 3, 1), np.uint8), 2)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), np.int32), 2)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), np.uint8), 0)
