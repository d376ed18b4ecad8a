"""Tests of the shipped weights: each file loads at its scale and beats bicubic on a Set5 image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esrt.convert import CheckpointError, read_metadata
from esrt.data import load_rgb, modcrop
from esrt.imresize import imresize
from esrt.metrics import psnr, rgb_to_y
from esrt.pretrained import WEIGHTS_DIR, load_model, shipped_weights

from .conftest import DATA

SHIPPED = sorted(int(p.stem[-1]) for p in WEIGHTS_DIR.glob("esrt_x*.safetensors"))


def test_weights_are_shipped_for_the_default_scale() -> None:
    assert 4 in SHIPPED, "esrt upscale uses x4 by default: its weights must ship"


@pytest.mark.parametrize("scale", SHIPPED)
def test_shipped_weights_beat_bicubic(scale: int) -> None:
    meta = read_metadata(shipped_weights(scale))
    assert meta["scale"] == str(scale) and int(meta["iterations"]) > 0
    model = load_model(scale=scale)
    assert model.scale == scale and not model.training
    hr = modcrop(load_rgb(DATA / "Set5" / "HR" / "bird.png"), scale)
    lr = load_rgb(DATA / "Set5" / "LR_bicubic" / f"X{scale}" / "bird.png")
    with torch.no_grad():
        x = torch.from_numpy(lr.transpose(2, 0, 1).copy()).float().div(255)[None]
        sr = model(x).clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
    bicubic = imresize(lr, scale)
    y_hr = rgb_to_y(hr)
    gain = psnr(rgb_to_y(sr), y_hr, scale) - psnr(rgb_to_y(bicubic), y_hr, scale)
    assert gain > 0, f"x{scale}: {gain:.2f} dB against bicubic"


def test_missing_scale_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="scale"):
        shipped_weights(5)
    missing = [s for s in (2, 3, 4) if s not in SHIPPED]
    for s in missing:
        with pytest.raises(CheckpointError, match="no weights are shipped"):
            load_model(scale=s)
    assert np.all(np.isin(SHIPPED, [2, 3, 4]))
