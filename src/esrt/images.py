"""Image files and arrays: the one reader and writer used by upscaling, evaluation and training data.

Pixels are (H, W, C) uint8 or uint16 arrays, C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); EXIF
orientation is applied on reading, ICC profiles are kept, 16 bits are kept in PNG and TIFF (docs/cli.md).
"""

from __future__ import annotations

import struct
import sys
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from esrt.atomic import atomic_path
from esrt.png16 import encode_png16

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}
DEFAULT_MAX_PIXELS = 4096 * 4096  # larger inputs are refused (decompression bombs) unless raised
_ORIENTATION_TAG, _ICC_TAG = 0x0112, 34675
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)
# PIL modes read through a conversion (P is RGB or RGBA depending on its transparency)
_CONVERT = {"1": "L", "PA": "RGBA", "CMYK": "RGB", "RGBX": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_CONVERT.update({"RGBa": "RGBA", "La": "LA"})


class ImageError(ValueError):
    """A file or array that cannot be read, upscaled or written as an image (one line, no traceback)."""


@dataclass(frozen=True)
class Picture:
    """Pixels read from a file, (H, W, C) uint8/uint16, with the file's ICC profile and its frame count."""

    pixels: np.ndarray
    icc: bytes | None = None
    frames: int = 1  # an animated file: only the first frame is in pixels


# ----------------------------------------------------------------------------------------------------------
# Names and shapes


def is_image_name(path: Path) -> bool:
    """Whether path has an image suffix and no hidden part (".name")."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in path.parts)


def find_images(folders: Sequence[str | Path]) -> list[Path]:
    """All image files in folders (recursively, hidden ones left out), sorted; a missing folder is an error."""
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        files += sorted(p for p in folder.rglob("*") if is_image_name(p.relative_to(folder)) and p.is_file())
    return files


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """The top-left crop whose height and width are multiples of scale."""
    h, w = image.shape[0] - image.shape[0] % scale, image.shape[1] - image.shape[1] % scale
    return image[:h, :w]


def max_value(dtype: np.dtype) -> int:
    """The white level of uint8 or uint16 pixels."""
    return 65535 if dtype == np.uint16 else 255


def check_pixels(pixels: np.ndarray) -> np.ndarray:
    """pixels as (H, W, C) uint8/uint16 with C in 1..4 ((H, W) is grey); TypeError/ValueError otherwise."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"expected a uint8 or uint16 array, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 1|2|3|4) array, got shape {pixels.shape}")
    return pixels


def to_pixels(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values in [0, 1] (clipped) as uint8/uint16 pixels, rounded to the nearest level (ties to even)."""
    v = np.clip(values, 0, 1) * max_value(dtype)
    return np.rint(v, out=v).astype(dtype)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint16 pixels rounded to 8 bits (uint8 pixels unchanged)."""
    if pixels.dtype == np.uint8:
        return pixels
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Applies an EXIF orientation (1-8) to (H, W, ...) pixels, as PIL's ImageOps.exif_transpose does."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return pixels if op is None else np.ascontiguousarray(op(pixels))


# ----------------------------------------------------------------------------------------------------------
# PIL images <-> pixels


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if isinstance(value, int) else 1


def pil_to_pixels(im: Image.Image, wide: np.ndarray | None = None) -> tuple[np.ndarray, bytes | None]:
    """(H, W, C) pixels and ICC profile of a PIL image, EXIF orientation applied (modes: see _CONVERT).

    wide: the image's pixels already decoded at 16 bits (16-bit colour files, which PIL holds as 8-bit).
    """
    mode = im.mode
    icc = None if mode == "CMYK" else im.info.get("icc_profile")  # a CMYK profile would mislabel RGB output
    if wide is not None:
        a = wide
    elif mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint16)  # native byte order
    elif mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError("32-bit integer image with values outside 0..65535 is not supported")
        a = a.astype(np.uint16)
    elif mode == "F":
        raise ImageError("32-bit float images are not supported")
    else:
        target = ("RGBA" if "transparency" in im.info else "RGB") if mode == "P" else _CONVERT.get(mode, mode)
        if target not in ("L", "LA", "RGB", "RGBA"):
            raise ImageError(f"unsupported image mode {mode}")
        try:
            a = np.asarray(im.convert(target) if target != mode else im)
        except ValueError as exc:
            raise ImageError(f"cannot convert image mode {mode} to {target} ({exc})") from None
    if a.ndim == 2:
        a = a[..., None]
    return orient(a, _orientation(im)), icc if isinstance(icc, bytes) and icc else None


def pixels_to_pil(pixels: np.ndarray, icc: bytes | None = None) -> Image.Image:
    """A PIL image of (H, W, C) pixels: L, LA, RGB, RGBA for uint8, I;16 for uint16 grey."""
    pixels = check_pixels(pixels)
    C = pixels.shape[2]
    if pixels.dtype == np.uint16:
        if C != 1:
            raise ImageError("PIL cannot hold 16-bit colour; use a numpy array or write_image")
        im = Image.fromarray(np.ascontiguousarray(pixels[..., 0]))  # I;16
    else:
        im = Image.fromarray(
            np.ascontiguousarray(pixels if C > 1 else pixels[..., 0]), ("L", "LA", "RGB", "RGBA")[C - 1]
        )
    if icc:
        im.info["icc_profile"] = icc
    return im


# ----------------------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Reads an image file into pixels; raises ImageError naming what is wrong (empty, not an image, ...).

    max_pixels: larger images are refused before decoding (None: no limit).
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError("is a folder")
    if path.stat().st_size == 0:
        raise ImageError("empty file")
    tiff = _read_tiff16(path, max_pixels)
    if tiff is not None:
        return tiff
    with _open(path) as im:
        width, height = im.size
        _check_size(width, height, max_pixels)
        raw = _rawmode(im)  # before load(), which clears the tiles
        wide = _read_16bit_colour(path, im)
        try:
            im.load()
        except _DECODE_ERRORS as exc:
            raise ImageError(f"cannot decode ({exc or type(exc).__name__})") from None
        pixels, icc = pil_to_pixels(im, wide)
        if wide is None and im.mode == "RGBA" and raw == "LA;16B":
            pixels = pixels[..., [0, 3]]  # 16-bit grey+alpha PNG, which PIL decodes to 8-bit RGBA: back to LA
        frames = int(getattr(im, "n_frames", 1) or 1)
    return Picture(pixels, icc, frames)


def read_uint8(path: str | Path) -> np.ndarray:
    """An image file as 8-bit pixels without alpha: (H, W) grey or (H, W, 3) RGB (16 bits rounded to 8)."""
    pixels = to_uint8(read_image(path, max_pixels=None).pixels)
    colours = 3 if pixels.shape[2] >= 3 else 1
    return pixels[..., :colours] if colours == 3 else pixels[..., 0]


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3); grey is replicated to three channels, alpha dropped."""
    pixels = read_uint8(path)
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def _check_size(w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"{w}x{h} = {w * h} pixels is above the limit of {max_pixels} (raise --max-pixels)")


def _read_tiff16(path: Path, max_pixels: int | None) -> Picture | None:
    """A 16-bit grey, grey+alpha, RGB or RGBA TIFF read by tifffile (PIL decodes 16-bit colour at 8 bits and
    cannot open 16-bit grey+alpha), orientation tag applied; None for any other file."""
    with path.open("rb") as f:
        if f.read(4) not in (b"II*\x00", b"MM\x00*"):
            return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not isinstance(page, tifffile.TiffPage) or page.dtype != np.uint16 or page.samplesperpixel > 4:
                return None
            if page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
                return None
            _check_size(page.imagewidth, page.imagelength, max_pixels)
            pixels = page.asarray()
            axes = page.axes
            # tag values are read lazily from the file: read them before it closes
            turn = page.tags.valueof(_ORIENTATION_TAG, 1)
            icc = page.tags.valueof(_ICC_TAG)
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises many kinds on a broken file
        raise ImageError(f"cannot decode ({exc or type(exc).__name__})") from None
    if axes.startswith("S"):  # planar: (S, Y, X)
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    turn = turn if isinstance(turn, int) else 1
    profile = bytes(icc) if isinstance(icc, bytes | bytearray) and icc else None
    return Picture(orient(np.ascontiguousarray(pixels), turn), profile)


def _read_16bit_colour(path: Path, im: ImageFile.ImageFile) -> np.ndarray | None:
    """16-bit RGB(A) PNG pixels (16-bit TIFF goes to _read_tiff16 first), which PIL decodes to 8 bits:
    decoded twice, for the high and low bytes."""
    raw = _rawmode(im)
    if im.mode not in ("RGB", "RGBA") or raw is None or raw[:-1] != im.mode + ";16" or raw[-1] not in "BLN":
        return None
    order = raw[-1] if raw[-1] != "N" else ("L" if sys.byteorder == "little" else "B")
    high = _decode_as(path, im.mode + ";16" + order)  # the unpacker keeps the most significant byte
    low = _decode_as(path, im.mode + ";16" + ("B" if order == "L" else "L"))  # the other byte
    return (high.astype(np.uint16) << 8) | low


def _open(path: Path) -> ImageFile.ImageFile:
    """Image.open without PIL's own pixel limit: read_image checks max_pixels itself, before decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        except Image.UnidentifiedImageError:
            raise ImageError("not an image, or a format PIL cannot read") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _rawmode(im: ImageFile.ImageFile) -> str | None:
    """The raw mode of the decoder (the same for every tile), or None."""
    rawmodes = {t.args if isinstance(t.args, str) else t.args[0] if t.args else None for t in im.tile}
    raw = rawmodes.pop() if len(rawmodes) == 1 else None
    return raw if isinstance(raw, str) else None


def _decode_as(path: Path, rawmode: str) -> np.ndarray:
    with _open(path) as im:
        im.tile = [t._replace(args=rawmode if isinstance(t.args, str) else (rawmode, *t.args[1:])) for t in im.tile]
        try:
            im.load()
        except _DECODE_ERRORS as exc:
            raise ImageError(f"cannot decode ({exc or type(exc).__name__})") from None
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------------------
# Writing


# zlib level of written PNGs: on super-resolved photographs 3.2x faster than level 6 (PIL's default) for
# files 7% larger (docs/performance.md); 0-9 with `esrt upscale --png-level`.
PNG_LEVEL = 3


def output_format(fmt: str) -> str:
    """PIL's name of an output format (png, jpg, webp, bmp, tiff); ImageError for any other."""
    kind = FORMATS.get(fmt.lower())
    if kind is None:
        raise ImageError(f"unknown output format {fmt!r} (one of {', '.join(sorted(FORMATS))})")
    return kind


def check_quality(quality: int) -> int:
    """quality, checked to be a JPEG/WebP quality (1..100)."""
    if not 1 <= quality <= 100:
        raise ImageError(f"quality must be between 1 and 100, got {quality}")
    return quality


def check_png_level(level: int) -> int:
    """level, checked to be a zlib compression level (0..9)."""
    if not 0 <= level <= 9:
        raise ImageError(f"PNG compression level must be between 0 and 9, got {level}")
    return level


def write_image(
    path: str | Path,
    pixels: np.ndarray,
    icc: bytes | None = None,
    fmt: str | None = None,
    quality: int = 95,
    png_level: int = PNG_LEVEL,
) -> None:
    """Writes pixels atomically (esrt.atomic: a temporary file beside path, flushed, then renamed).

    fmt: png, jpg, webp, bmp or tiff (default: from the suffix, else png). 16 bits are kept in PNG and TIFF;
    JPEG, WebP and BMP get 8 bits, and JPEG drops alpha. png_level: zlib level of PNG files (0-9).
    """
    path = Path(path)
    kind = output_format(fmt or path.suffix.lstrip(".") or "png")
    check_quality(quality)
    check_png_level(png_level)
    pixels = check_pixels(pixels)
    if kind not in ("PNG", "TIFF"):
        pixels = to_uint8(pixels)
    if kind == "JPEG" and pixels.shape[2] in (2, 4):
        pixels = pixels[..., : pixels.shape[2] - 1]
    with atomic_path(path) as tmp:
        if pixels.dtype == np.uint16 and pixels.shape[2] > 1:  # PIL cannot write 16-bit colour
            if kind == "PNG":
                tmp.write_bytes(encode_png16(pixels, icc, png_level))
            else:
                _write_tiff16(tmp, pixels, icc)
        else:
            options: dict[str, Any] = {"icc_profile": icc} if icc and kind != "BMP" else {}
            if kind in ("JPEG", "WEBP"):
                options["quality"] = quality
            if kind == "PNG":
                options["compress_level"] = png_level
            pixels_to_pil(pixels).save(tmp, format=kind, **options)


def _write_tiff16(path: Path, pixels: np.ndarray, icc: bytes | None) -> None:
    import tifffile

    colour = pixels.shape[2] >= 3
    tifffile.imwrite(
        path, pixels, photometric="rgb" if colour else "minisblack", compression="zlib", iccprofile=icc,
        extrasamples=["unassalpha"] if pixels.shape[2] in (2, 4) else None,
    )  # fmt: skip
