"""Tests of esrt.infer: image modes and bit depths, tiling and blending, TTA, files and the `esrt upscale` CLI.

Random-weight x2 models and images of a few pixels keep this fast; tiling is checked exactly with a pointwise net.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from esrt.cli import main
from esrt.convert import CheckpointError, save_weights
from esrt.infer import (
    ImageError,
    TorchUpscaler,
    auto_tile_size,
    blend_weights,
    collect_inputs,
    load_upscaler,
    orient,
    read_image,
    run_tiled,
    self_ensemble,
    tile_starts,
    upscale,
    write_image,
)
from esrt.model import ESRT


@pytest.fixture(scope="module")
def model() -> ESRT:
    torch.manual_seed(0)
    return ESRT(2).eval()


@pytest.fixture(scope="module")
def weights(model: ESRT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "esrt_x2.safetensors"
    save_weights(model, path)
    return path


def smooth(h: int, w: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    """A smooth test picture (gradients and waves), (h, w, channels)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [np.sin(x / 3 + c) * np.cos(y / 4 - c) for c in range(channels)]
    v = (np.stack(planes, -1) + 1) / 2
    return np.rint(v * (65535 if dtype == np.uint16 else 255)).astype(dtype)


class Nearest:
    """A pointwise 'network' (nearest-neighbour upsampling of a fixed colour transform): tiles must be exact."""

    scale = 2

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.stack([x[0] * 0.5 + x[2] * 0.25, x[1] ** 2, 1 - x[2]])
        return np.repeat(np.repeat(y, 2, axis=1), 2, axis=2).astype(np.float32)


def collect(x: np.ndarray, net: object, tile: int | None, overlap: int, scale: int = 2) -> tuple[np.ndarray, int]:
    rows: dict[int, np.ndarray] = {}

    def emit(top: int, band: np.ndarray) -> None:
        assert top == sum(r.shape[1] for r in rows.values()), "rows must come in order, without gaps"
        rows[top] = band.copy()

    count = run_tiled(x, net, scale, tile, overlap, emit)  # type: ignore[arg-type]
    return np.concatenate([rows[k] for k in sorted(rows)], axis=1), count


# --- tiling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(50, 16, 4), (16, 16, 4), (33, 16, 8), (100, 24, 0), (7, 16, 4)]
)
def test_tiles_cover_and_weights_sum_to_one(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    total = np.zeros(length * 3)
    for s, w in zip(starts, blend_weights(starts, size, length, 3), strict=True):
        assert w.shape == (size * 3,) and (w >= 0).all()
        total[s * 3 : (s + size) * 3] += w
    np.testing.assert_allclose(total, 1, atol=1e-6)


def test_blend_ramps_are_linear_and_feather_the_edges() -> None:
    w0, w1 = blend_weights([0, 12], 16, 28, 1)
    np.testing.assert_allclose(w0[:12], 1)
    np.testing.assert_allclose(w0[12:], [0.875, 0.625, 0.375, 0.125])  # a linear ramp down across the overlap
    np.testing.assert_allclose(w1[:4], [0.125, 0.375, 0.625, 0.875])


@pytest.mark.parametrize(("tile", "overlap"), [(16, 4), (16, 8), (20, 0), (17, 6)])
def test_tiled_pointwise_net_is_exact(tile: int, overlap: int) -> None:
    x = np.random.default_rng(0).random((3, 37, 45), dtype=np.float32)
    whole = Nearest()(x)
    tiled, count = collect(x, Nearest(), tile, overlap)
    assert count > 4
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_tiles_agree_with_whole_image_away_from_seams(model: ESRT) -> None:
    """Tiled ESRT output is close to, but not exactly, the whole-image output (attention band, CA pooling).

    Stated tolerance, for this random-weight model whose outputs span about 2.5: away from the blended seams
    the mean absolute difference is below 0.05 and the 99th percentile below 0.2.
    """
    x = smooth(24, 24).transpose(2, 0, 1).astype(np.float32) / 255
    net = TorchUpscaler(model)
    whole = net(x)
    tiled, count = collect(x, net, 16, 8)  # tiles start at 0 and 8: the seam is LR [8, 16), output [16, 32)
    assert count == 4 and tiled.shape == whole.shape == (3, 48, 48)
    away = np.r_[0:16, 32:48]
    d = np.abs(tiled - whole)[:, away][:, :, away]
    assert d.mean() < 0.05 and np.quantile(d, 0.99) < 0.2
    assert np.abs(tiled - whole).max() > 1e-4  # the documented fact: exact equality is impossible


def test_auto_tile_size_follows_memory() -> None:
    assert auto_tile_size(4, available=64 * 2**30) == auto_tile_size(4, available=8 * 2**30)  # capped budget
    big, small = auto_tile_size(4, available=8 * 2**30), auto_tile_size(4, available=400 * 2**20)
    assert 64 <= small < big <= 512 and big % 16 == 0
    assert auto_tile_size(4, available=0) == 64


# --- TTA -----------------------------------------------------------------------------------------------------


def test_tta_undoes_each_transform() -> None:
    x = np.random.default_rng(1).random((3, 5, 7), dtype=np.float32)
    np.testing.assert_allclose(self_ensemble(Nearest())(x), Nearest()(x), atol=1e-6)


def test_tta_shape_with_model(model: ESRT) -> None:
    out = upscale(smooth(6, 9), model=model, tta=True)
    plain = upscale(smooth(6, 9), model=model)
    assert out.shape == plain.shape == (12, 18, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, plain)  # the ensemble is not the plain output


# --- the Python API: modes, bit depths -------------------------------------------------------------------


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


def test_fast_mode_is_close_and_leaves_the_model_alone(model: ESRT) -> None:
    image = np.random.default_rng(5).integers(0, 256, (80, 64, 3), dtype=np.uint8)  # 4 chunks of 1280 > 1024
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exact = upscale(image, model=model)
    fast = upscale(image, model=model, fast=True)
    assert exact.shape == fast.shape
    difference = np.abs(exact.astype(int) - fast.astype(int))
    assert difference.max() > 0 and difference.mean() < 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert type(model.tail).__name__ == "Sequential"  # the caller's model is not folded in place


def test_tile_auto_and_errors(model: ESRT) -> None:
    a = smooth(6, 8)
    np.testing.assert_array_equal(upscale(a, model=model, tile="auto"), upscale(a, model=model))  # one tile
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


# --- files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16bit_colour_files_round_trip(tmp_path: Path, channels: int, fmt: str) -> None:
    a = np.random.default_rng(channels).integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    path = tmp_path / f"a.{fmt}"
    write_image(path, a, icc=b"fake profile" if channels == 3 else None)
    if channels > 2:  # PIL's own 8-bit decoding sees the high bytes: an independent check of the writer
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im), (a >> 8).astype(np.uint8))
    back = read_image(path)
    if channels == 2 and fmt == "png":  # 16-bit grey+alpha PNG is read at 8 bits (documented)
        np.testing.assert_array_equal(back.pixels, (a >> 8).astype(np.uint8))
        return
    np.testing.assert_array_equal(back.pixels, a)
    assert back.icc == (b"fake profile" if channels == 3 else None)


def test_16bit_tiff_from_tifffile(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(0).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", a, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "t.tif").pixels, a)


def test_16bit_tiff_orientation_and_broken_file(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(1).integers(0, 65536, (4, 6, 4), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "o.tif", a, photometric="rgb", extrasamples=["unassalpha"], extratags=[(274, "H", 1, 6, False)]
    )
    np.testing.assert_array_equal(read_image(tmp_path / "o.tif").pixels, np.rot90(a, -1))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "o.tif").read_bytes()[:40])
    with pytest.raises(ImageError):
        read_image(tmp_path / "cut.tif")


def test_16bit_grey_png(tmp_path: Path) -> None:
    a = smooth(5, 6, 1, np.uint16)
    Image.fromarray(a[..., 0]).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").pixels, a)
    write_image(tmp_path / "g2.png", a)
    with Image.open(tmp_path / "g2.png") as im:
        assert im.mode.startswith("I") and np.array_equal(np.asarray(im), a[..., 0])


def test_exif_orientation_applied(tmp_path: Path) -> None:
    a = smooth(4, 6)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, "PNG", exif=exif.tobytes())
        buffer.seek(0)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(buffer)))
        np.testing.assert_array_equal(orient(a, orientation), expected)
        path = tmp_path / f"o{orientation}.png"
        path.write_bytes(buffer.getvalue())
        np.testing.assert_array_equal(read_image(path).pixels, expected)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"hello")
    Image.fromarray(smooth(1, 1)).save(tmp_path / "one.png")
    Image.fromarray(smooth(40, 40)).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name, message in [("empty", "empty"), ("text", "not an image"), ("one", "2x2"), ("cut", "decode")]:
        with pytest.raises(ValueError, match=message):
            read_image(tmp_path / f"{name}.png")
    with pytest.raises(ValueError, match="max-pixels"):
        read_image(tmp_path / "big.png", max_pixels=1000)


# --- the CLI ----------------------------------------------------------------------------------------------


def test_collect_inputs(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ["x.png", "y.JPG", ".hidden.png", "notes.txt", "deep/z.webp"]:
        (tmp_path / "a" / name).write_bytes(b"")
    found, errors = collect_inputs([str(tmp_path / "a")], recursive=False)
    assert [str(stem) for _, stem in found] == ["x", "y"] and not errors
    found, _ = collect_inputs([str(tmp_path / "a")], recursive=True)
    assert sorted(str(stem) for _, stem in found) == ["deep/z", "x", "y"]
    found, errors = collect_inputs([str(tmp_path / "a" / ".." / "a" / "*.png"), str(tmp_path / "nope.png")], False)
    assert [p.name for p, _ in found] == ["x.png"] and len(errors) == 1 and "nope.png" in errors[0]


def test_cli_folder_with_bad_files(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(smooth(6, 7)).save(src / "good.png")
    Image.fromarray(smooth(5, 6, 1)[..., 0]).save(src / "sub" / "deep.jpg")
    (src / "bad.png").write_bytes(b"not an image at all")
    (src / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out), "--weights", str(weights), "--recursive", "--tile", "0"])
    err = capsys.readouterr()
    assert rc == 1
    with Image.open(out / "good_x2.png") as im:
        assert im.size == (14, 12) and im.mode == "RGB"
    with Image.open(out / "sub" / "deep_x2.png") as im:
        assert im.size == (12, 10) and im.mode == "L"
    lines = [line for line in err.err.splitlines() if "bad.png" in line or "empty.jpg" in line]
    assert len(lines) == 2 and "Traceback" not in err.err
    assert "2 written" in err.out and "2 failed" in err.out
    assert not list(out.rglob(".*"))  # no temporary files left


def test_cli_never_overwrites_inputs(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(smooth(6, 7)).save(path)
    before = path.read_bytes()
    for extra in ([], ["--overwrite"]):
        rc = main(["upscale", str(path), "-o", str(path), "--weights", str(weights), *extra])
        assert rc == 1 and path.read_bytes() == before
    assert "refusing to overwrite" in capsys.readouterr().err
    # an existing output is skipped, then replaced with --overwrite
    target = tmp_path / "res" / "photo_x2.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert main(["upscale", str(path), "-o", str(tmp_path / "res"), "--weights", str(weights)]) == 0
    assert target.read_bytes() == b"old"
    assert main(["upscale", str(path), "-o", str(target.parent), "--weights", str(weights), "--overwrite"]) == 0
    with Image.open(target) as im:
        assert im.size == (14, 12)


def test_cli_keeps_icc_16bit_and_alpha(tmp_path: Path, weights: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(np.dstack([smooth(6, 7), smooth(6, 7, 1)])).save(tmp_path / "a.png", icc_profile=icc)
    write_image(tmp_path / "deep.tif", smooth(6, 7, 3, np.uint16))
    args = ["upscale", str(tmp_path / "a.png"), str(tmp_path / "deep.tif"), "-o", str(tmp_path / "o")]
    rc = main([*args, "--weights", str(weights), "--outscale", "3"])
    assert rc == 0
    with Image.open(tmp_path / "o" / "a_x3.png") as im:
        assert im.mode == "RGBA" and im.size == (21, 18) and im.info.get("icc_profile") == icc
    deep = read_image(tmp_path / "o" / "deep_x3.png").pixels
    assert deep.dtype == np.uint16 and deep.shape == (18, 21, 3)


def test_cli_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(smooth(6, 7)).save(tmp_path / "a.png")
    monkeypatch.setattr("esrt.pretrained.WEIGHTS_DIR", tmp_path / "none")  # a version that ships no weights
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path), "--scale", "2"]) == 1
    assert main(["upscale", str(tmp_path / "a.png"), "--backend", "onnx"]) == 1
    assert main(["upscale", str(tmp_path / "a.png"), "--tile", "big"]) == 1
    err = capsys.readouterr().err
    assert "no weights are shipped" in err and "--backend onnx needs --weights" in err and "--tile" in err
    assert "Traceback" not in err
