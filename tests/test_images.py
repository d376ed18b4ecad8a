"""Tests of esrt.images: reading and writing every mode and bit depth, EXIF, ICC, bad files, atomic writes."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from esrt.images import (
    PNG_LEVEL,
    ImageError,
    find_images,
    modcrop,
    orient,
    read_image,
    read_rgb,
    read_uint8,
    write_image,
)

from .pictures import smooth


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


def test_16bit_tiff_with_icc_reads_without_warnings(tmp_path: Path) -> None:
    """The profile tag is read while the file is open (tifffile warns when a value is read after closing)."""
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(2).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "icc.tif", a, photometric="rgb", iccprofile=b"a profile" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picture = read_image(tmp_path / "icc.tif")
    assert picture.icc == b"a profile" * 40
    np.testing.assert_array_equal(picture.pixels, a)


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
    Image.fromarray(smooth(40, 40)).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name, message in [("empty", "empty"), ("text", "not an image"), ("cut", "decode")]:
        with pytest.raises(ValueError, match=message):
            read_image(tmp_path / f"{name}.png")
    with pytest.raises(ValueError, match="max-pixels"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    assert read_image(tmp_path / "big.png", max_pixels=None).pixels.shape == (40, 40, 3)


@pytest.mark.parametrize(
    ("mode", "suffix"), [("L", "png"), ("RGB", "png"), ("LA", "png"), ("RGBA", "png"), ("P", "png"), ("CMYK", "tif")]
)
def test_read_uint8_is_pils_own_conversion(tmp_path: Path, mode: str, suffix: str) -> None:
    """8-bit files read for scoring: grey stays (H, W), colour is PIL's RGB conversion, alpha dropped."""
    source = Image.fromarray(np.dstack([smooth(9, 11), smooth(9, 11, 1)]) if "A" in mode else smooth(9, 11))
    path = tmp_path / f"a.{suffix}"
    source.convert(mode).save(path)
    with Image.open(path) as im:
        expected = np.asarray(im.convert("L" if mode in ("L", "LA") else "RGB"))
    got = read_uint8(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_read_rgb_replicates_grey_and_rounds_16_bits(tmp_path: Path) -> None:
    grey = smooth(5, 6, 1)[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))
    deep = np.array([[[0, 257, 65535], [128, 32767, 40000]]] * 2, np.uint16)  # (2, 2, 3)
    write_image(tmp_path / "d.png", deep)
    expected = np.rint(deep / 257).astype(np.uint8)  # 65535 -> 255: a 16-bit level is 1/257 of an 8-bit one
    np.testing.assert_array_equal(read_rgb(tmp_path / "d.png"), expected)


def test_find_images_and_modcrop(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", ".hidden.png", "notes.txt", "deep/c.webp", ".cache/d.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images([tmp_path])] == ["a.JPG", "b.png", "deep/c.webp"]
    with pytest.raises(FileNotFoundError):
        find_images([tmp_path / "nowhere"])
    assert modcrop(np.zeros((7, 10, 3)), 3).shape == (6, 9, 3)


def test_animated_gif_counts_its_frames(tmp_path: Path) -> None:
    frames = [Image.fromarray(smooth(6, 7)), Image.fromarray(255 - smooth(6, 7))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    picture = read_image(tmp_path / "a.gif")
    assert picture.frames == 2 and picture.pixels.shape == (6, 7, 3)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_write_is_atomic_and_removes_stale_temporaries(tmp_path: Path) -> None:
    stale = tmp_path / f".out.png.{_dead_pid()}.tmp"  # left by a process killed while writing
    stale.write_bytes(b"half an image")
    write_image(tmp_path / "out.png", smooth(4, 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with pytest.raises(ImageError, match="format"):
        write_image(tmp_path / "x.gif", smooth(4, 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.parametrize("bits", [8, 16])
def test_png_level_trades_size_for_time_and_never_pixels(tmp_path: Path, bits: int) -> None:
    a = smooth(64, 80) if bits == 8 else smooth(64, 80).astype(np.uint16) * 257
    sizes = {}
    for level in (0, 9):
        path = tmp_path / f"l{level}.png"
        write_image(path, a, png_level=level)
        np.testing.assert_array_equal(read_image(path).pixels, a)
        sizes[level] = path.stat().st_size
    assert sizes[9] < 0.9 * sizes[0]  # level 0 stores the rows uncompressed
    with pytest.raises(ImageError, match="PNG compression level"):
        write_image(tmp_path / "bad.png", a, png_level=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l0.png", "l9.png"]


def test_png_level_option_default_is_png_level() -> None:
    from esrt.cli import build_parser

    args = build_parser().parse_args(["upscale", "a.png"])
    assert args.png_level == PNG_LEVEL


def test_quality_out_of_range_is_refused(tmp_path: Path) -> None:
    for quality in (0, 101, 1000):
        with pytest.raises(ImageError, match="quality"):
            write_image(tmp_path / "a.jpg", smooth(4, 5), quality=quality)
    write_image(tmp_path / "a.jpg", smooth(4, 5), quality=1)
    assert not list(tmp_path.glob(".*"))
