"""Tests of the shipped weights: all three scales ship, carry their metadata, load at their scale, beat bicubic.

The README's scores are checked against the weights in tests/test_readme_scores.py.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest
import torch

import esrt
from esrt import pretrained
from esrt.convert import CheckpointError, read_metadata, save_weights
from esrt.data import load_rgb, modcrop
from esrt.imresize import imresize
from esrt.metrics import psnr, rgb_to_y
from esrt.model import ESRT

from .conftest import data_path

# PSNR (Y) gain over MATLAB bicubic on Set5 bird with the weights shipped at 16000/16000/15250 iterations:
# 5.34, 4.08 and 3.28 dB. Weights only ship when they beat the shipped ones on Set5; the floor, 0.5 dB below,
# catches wrong or untrained weights (random weights lose to bicubic) and a real regression.
MIN_BIRD_GAIN = {2: 4.8, 3: 3.5, 4: 2.7}


def test_all_three_scales_ship() -> None:
    names = sorted(p.name for p in pretrained.WEIGHTS_DIR.glob("*.safetensors"))
    assert names == ["esrt_x2.safetensors", "esrt_x3.safetensors", "esrt_x4.safetensors"]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_metadata_record(scale: int) -> None:
    meta = read_metadata(pretrained.shipped_weights(scale))
    assert meta["format"] == "esrt" and meta["scale"] == str(scale)
    assert int(meta["iterations"]) >= 1000
    assert 25 < float(meta["set5_psnr"]) < 45 and 0.7 < float(meta["set5_ssim"]) < 1
    assert re.fullmatch(r"\d+\.\d{4}", meta["set5_psnr"])  # four decimals: the README rounds it to two
    assert json.loads(meta["data"]) and isinstance(json.loads(meta["data"]), list)
    assert date.fromisoformat(meta["date"]) <= date.today()
    assert meta["precision"] in ("fp32", "bf16")
    assert int(meta["patch"]) > 0 and int(meta["batch"]) > 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_weights_beat_bicubic(scale: int) -> None:
    model = esrt.load_model(scale=scale)
    assert model.scale == scale and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    hr = modcrop(load_rgb(data_path("Set5", "HR", "bird.png")), scale)
    lr = load_rgb(data_path("Set5", "LR_bicubic", f"X{scale}", "bird.png"))
    with torch.no_grad():
        x = torch.from_numpy(lr.transpose(2, 0, 1).copy()).float().div(255)[None]  # (1, 3, h, w)
        y = model(x)
    assert y.shape == (1, 3, scale * lr.shape[0], scale * lr.shape[1]) and torch.isfinite(y).all()
    sr = y.clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
    y_hr = rgb_to_y(hr)
    gain = psnr(rgb_to_y(sr), y_hr, scale) - psnr(rgb_to_y(imresize(lr, scale)), y_hr, scale)
    assert gain > MIN_BIRD_GAIN[scale], f"x{scale}: {gain:.2f} dB over bicubic"


def test_unknown_scale_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^scale must be one of \(2, 3, 4\), got 5$"):
        pretrained.shipped_weights(5)


def test_missing_weights_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)  # a build of the package without weights
    with pytest.raises(CheckpointError, match=r"^no weights are shipped for x3 in this version of esrt; pass a"):
        esrt.load_model(scale=3)


def test_a_given_scale_must_match_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x2.safetensors"
    save_weights(ESRT(2), path)
    assert esrt.load_model(path, scale=2).scale == 2
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: holds x2 weights, but x4 was asked for$"):
        esrt.load_model(path, scale=4)
