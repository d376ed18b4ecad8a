"""Tests of esrt.upscale: the Python API on numpy arrays and PIL images, its defaults, and TorchUpscaler.

Random-weight x2 models and images of a few pixels keep this fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from esrt import tiling
from esrt.convert import CheckpointError
from esrt.images import ImageError
from esrt.model import EMHA, ESRT
from esrt.runtime import FAST_MAX_CHUNK
from esrt.upscale import TorchUpscaler, load_upscaler, upscale, upscale_pixels

from .pictures import Nearest, smooth


@pytest.fixture(scope="module")
def model() -> ESRT:
    torch.manual_seed(0)
    return ESRT(2).eval()


def test_package_exports_the_function() -> None:
    import esrt.upscale_cli  # importing the submodules must not hide the function

    assert esrt.upscale is upscale and callable(esrt.upscale)


def test_tta_shape_with_model(model: ESRT) -> None:
    out = upscale(smooth(6, 9), model=model, tta=True)
    plain = upscale(smooth(6, 9), model=model)
    assert out.shape == plain.shape == (12, 18, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, plain)  # the ensemble is not the plain output


def test_numpy_kinds_round_trip(model: ESRT) -> None:
    for shape, dtype in [((6, 5), np.uint8), ((6, 5, 3), np.uint16), ((6, 5, 4), np.uint8), ((6, 5, 2), np.uint16)]:
        a = smooth(6, 5, shape[2] if len(shape) == 3 else 1, dtype).reshape(shape)
        out = upscale(a, model=model)
        assert out.dtype == dtype and out.shape == (12, 10, *shape[2:])
    with pytest.raises(TypeError):
        upscale(np.zeros((4, 4, 3), np.float32), model=model)


def test_uint16_keeps_precision(model: ESRT) -> None:
    a = smooth(6, 6, 3, np.uint16)
    out16 = upscale(a, model=model).astype(np.int64)
    out8 = upscale((a // 257).astype(np.uint8), model=model).astype(np.int64)
    assert (out16 % 257 != 0).any()  # values between the 8-bit levels: not an 8-bit result scaled up
    assert np.abs(out16 / 257 - out8).max() < 2.5


def _pil(mode: str) -> Image.Image:
    rgb = Image.fromarray(smooth(6, 7))
    if mode == "P_transparent":
        im = rgb.convert("P")
        im.info["transparency"] = 0
        return im
    if mode == "I;16":
        return Image.fromarray(smooth(6, 7, 1, np.uint16)[..., 0])
    if mode == "RGBA":
        return Image.fromarray(np.dstack([smooth(6, 7), smooth(6, 7, 1)]))
    return rgb.convert(mode)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("RGB", "RGB"),
        ("RGBA", "RGBA"),
        ("L", "L"),
        ("LA", "LA"),
        ("I;16", "I;16"),
        ("P", "RGB"),
        ("P_transparent", "RGBA"),
        ("CMYK", "RGB"),
        ("1", "L"),
    ],
)
def test_pil_modes(model: ESRT, mode: str, expected: str) -> None:
    out = upscale(_pil(mode), model=model)
    assert isinstance(out, Image.Image) and out.mode == expected and out.size == (14, 12)


def test_animated_pil_image_warns(model: ESRT, tmp_path: Path) -> None:
    frames = [Image.fromarray(smooth(6, 7)), Image.fromarray(255 - smooth(6, 7))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "a.gif") as im, pytest.warns(UserWarning, match="first frame"):
        assert upscale(im, model=model).size == (14, 12)


def test_alpha_is_upscaled_and_kept(model: ESRT) -> None:
    rgba = np.dstack([smooth(6, 7), smooth(6, 7, 1)])
    out = upscale(rgba, model=model)
    alpha = np.asarray(Image.fromarray(rgba[..., 3]).resize((14, 12), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(out[..., 3].astype(int) - alpha).max() <= 2
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert (upscale(opaque, model=model)[..., 3] == 255).all()
    by_model = upscale(rgba, model=model, alpha="model")
    assert by_model.shape == out.shape and not np.array_equal(by_model[..., 3], out[..., 3])


def test_grey_output_is_grey(model: ESRT) -> None:
    grey = smooth(6, 7, 1)[..., 0]
    rgb = np.repeat(grey[..., None], 3, axis=2)
    out_grey, out_rgb = upscale(grey, model=model), upscale(rgb, model=model)
    assert out_grey.shape == (12, 14)
    unclipped = ((out_rgb > 0) & (out_rgb < 255)).all(axis=2)  # there mean-then-round = round-then-mean, +-1
    assert unclipped.sum() > 20
    np.testing.assert_allclose(out_grey[unclipped], out_rgb.mean(axis=2)[unclipped], atol=1.0)


def test_outscale_and_bf16(model: ESRT) -> None:
    a = smooth(6, 8)
    assert upscale(a, model=model, outscale=1.5).shape == (9, 12, 3)
    assert upscale(a, model=model, outscale=3).shape == (18, 24, 3)
    bf16, fp32 = upscale(a, model=model, precision="bf16"), upscale(a, model=model)
    assert bf16.shape == fp32.shape and np.abs(bf16.astype(int) - fp32).mean() < 8


@pytest.mark.parametrize("outscale", [float("inf"), float("nan"), -1.0, 0.0, 1e-9])
def test_bad_outscale_is_refused_before_the_network_runs(outscale: float) -> None:
    net = Nearest()
    with pytest.raises(ValueError, match="outscale"):
        upscale_pixels(smooth(6, 8), net, outscale=outscale)
    assert net.calls == []


def test_fast_mode_is_the_default(model: ESRT) -> None:
    caps = {
        exact: {m.settings.max_chunk for m in load_upscaler(model, exact=exact).model.modules() if isinstance(m, EMHA)}  # type: ignore[attr-defined]
        for exact in (False, True)
    }
    assert caps == {False: {FAST_MAX_CHUNK}, True: {None}}
    image = np.random.default_rng(5).integers(0, 256, (80, 64, 3), dtype=np.uint8)  # 4 chunks of 1280 > 1024
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exact = upscale(image, model=model, tile=None, exact=True)
    fast = upscale(image, model=model, tile=None)
    difference = np.abs(exact.astype(int) - fast.astype(int))
    assert difference.max() > 0 and difference.mean() < 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert type(model.tail).__name__ == "Sequential"  # the caller's model is not folded in place


def test_large_input_is_tiled_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default call plans tiles from free memory instead of one whole-image pass."""
    monkeypatch.setattr(tiling, "available_memory", lambda: 2**30)  # 1 GiB free: 128 px tiles at x2
    side = tiling.auto_tile_size(2)
    net = Nearest()
    out = upscale(smooth(300, 260), model=net)  # type: ignore[arg-type]
    assert out.shape == (600, 520, 3)
    assert len(net.calls) > 4 and all(max(shape[1:]) <= side for shape in net.calls)
    whole = Nearest()
    upscale(smooth(300, 260), model=whole, tile=None)  # type: ignore[arg-type]
    assert whole.calls == [(3, 300, 260)]


def test_non_finite_output_is_an_error_naming_the_network() -> None:
    class Broken(Nearest):
        name = "broken.safetensors"

        def __call__(self, x: np.ndarray) -> np.ndarray:
            return super().__call__(x) * np.float32("nan")

    with pytest.raises(ImageError, match=r"broken\.safetensors: .*not finite"):
        upscale(smooth(6, 8), model=Broken())  # type: ignore[arg-type]


def test_tile_auto_and_errors(model: ESRT) -> None:
    a = smooth(6, 8)
    np.testing.assert_array_equal(upscale(a, model=model, tile="auto"), upscale(a, model=model, tile=None))
    with pytest.raises(ValueError, match="tile"):
        upscale(a, model=model, tile=8)
    with pytest.raises(ValueError, match="overlap"):
        upscale(a, model=model, tile=16, tile_overlap=9)
    with pytest.raises(ValueError, match="2x2"):
        upscale(np.zeros((1, 5, 3), np.uint8), model=model)
    with pytest.raises(ValueError, match="x2"):
        upscale(a, scale=4, model=model)


def test_missing_shipped_weights_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("esrt.pretrained.WEIGHTS_DIR", tmp_path)  # a version that ships no x3
    with pytest.raises(CheckpointError, match="no weights are shipped"):
        load_upscaler(None, 3)


def test_torch_upscaler_chop_runs_the_reference_tiling(model: ESRT) -> None:
    from esrt.chop import forward_chop

    x = np.random.default_rng(3).random((3, 30, 32), dtype=np.float32)
    with torch.no_grad():
        expected = forward_chop(model, torch.from_numpy(x)[None])[0].numpy()  # 4 quadrants of 25x26
        whole = model(torch.from_numpy(x)[None])[0].numpy()
    got = TorchUpscaler(model, chop=True)(x)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - whole).max() > 1e-4  # the quadrants are not the whole image
