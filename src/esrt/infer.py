"""Upscaling for users: image files and arrays in and out, overlapping tiles with feathered blending, x8 TTA.

Follows ESRT_SPEC.md ("Memory"): every pixel attends to a band of its own tile, so tiled output is close to,
but never exactly, the whole-image output; `esrt upscale` (the CLI) is `main_upscale` at the end of this file.
"""

from __future__ import annotations

import glob
import math
import os
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

import numpy as np
from PIL import Image, ImageFile

if TYPE_CHECKING:
    import argparse

    from esrt.model import ESRT

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}
DEFAULT_OVERLAP = 16  # LR pixels shared by neighbouring tiles, blended with linear ramps
DEFAULT_MAX_PIXELS = 4096 * 4096  # larger inputs are refused (decompression bombs) unless raised
MIN_TILE = 16
AUTO_TILE_BUDGET = 512 * 2**20  # bytes one tile's forward pass may take, at most
# Peak bytes per LR pixel of one fp32 forward pass (measured with ru_maxrss on 128-256 px tiles, +20%).
BYTES_PER_PIXEL = {2: 10_500, 3: 11_500, 4: 12_000}
_ORIENTATION_TAG = 0x0112

Precision = Literal["fp32", "bf16"]
Tile = int | Literal["auto"] | None


class ImageError(ValueError):
    """A file or array that cannot be read, upscaled or written as an image (one line, no traceback)."""


class Upscaler(Protocol):
    """Anything that super-resolves one (3, h, w) float32 array in [0, 1] to (3, scale*h, scale*w)."""

    scale: int

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class TorchUpscaler:
    """An ESRT run by PyTorch in inference mode, set up by esrt.speed.prepare_for_inference on a copy of model.

    precision "bf16" runs it under CPU/CUDA autocast. fast caps the attention chunks at
    esrt.speed.FAST_MAX_CHUNK tokens (blocked attention, not the reference: ~3x faster on large images).
    malloc applies esrt.speed.tune_malloc(), which is process-wide: the CLI does, the Python API does not.
    """

    def __init__(self, model: ESRT, precision: Precision = "fp32", fast: bool = False, malloc: bool = False) -> None:
        import copy

        from esrt import speed

        self.model = speed.prepare_for_inference(copy.deepcopy(model), precision, fast=fast, malloc=malloc)
        self.scale = int(model.scale)
        self.precision = precision
        self.device = next(model.parameters()).device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        from esrt import speed

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)  # (1, 3, h, w)
        with torch.inference_mode(), speed.autocast(self.precision, self.device.type):
            y = self.model(speed.to_input(t))  # (1, 3, s*h, s*w)
        return y[0].float().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# Tiling


def auto_tile_size(scale: int, available: int | None = None) -> int:
    """The tile side (LR pixels) whose forward pass fits in a quarter of available memory, at most 512 MiB."""
    if available is None:
        available = available_memory()
    budget = min(available // 4, AUTO_TILE_BUDGET)
    side = int(math.sqrt(budget / BYTES_PER_PIXEL.get(scale, max(BYTES_PER_PIXEL.values()))))
    return max(64, min(512, side // 16 * 16))


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux; 4 GiB when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4 * 2**30


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size min(tile, length) covering [0, length); the last one ends at length."""
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(count)]


def blend_weights(starts: list[int], size: int, length: int, scale: int) -> list[np.ndarray]:
    """Per-tile 1-D output weights: linear ramps across each overlap, normalised to sum to 1 everywhere."""
    n = size * scale
    k = np.arange(n, dtype=np.float64) + 0.5
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(n)
        if i > 0 and (left := (starts[i - 1] + size - start) * scale) > 0:
            w = np.minimum(w, k / left)  # rises from ~0 at the tile's edge
        if i + 1 < len(starts) and (right := (start + size - starts[i + 1]) * scale) > 0:
            w = np.minimum(w, (n - k) / right)
        weights.append(w)
    total = np.zeros(length * scale)
    for start, w in zip(starts, weights, strict=True):
        total[start * scale : start * scale + n] += w
    return [(w / total[s * scale : s * scale + n]).astype(np.float32) for s, w in zip(starts, weights, strict=True)]


def run_tiled(
    x: np.ndarray,
    net: Callable[[np.ndarray], np.ndarray],
    scale: int,
    tile: int | None,
    overlap: int,
    emit: Callable[[int, np.ndarray], None],
    on_tile: Callable[[], object] | None = None,
) -> int:
    """Super-resolves x (3, H, W) tile by tile; calls emit(row, out_rows) with finished output rows in order.

    Tiles are tile x tile LR pixels, neighbours share `overlap` pixels that are blended with linear ramps.
    Only a band of output rows one tile high is kept in float32 at a time. Returns the number of tiles.
    """
    _, H, W = x.shape
    th, tw = (H, W) if tile is None else (min(tile, H), min(tile, W))
    ys, xs = tile_starts(H, th, overlap), tile_starts(W, tw, overlap)
    if len(ys) == len(xs) == 1:
        emit(0, net(x))  # (3, sH, sW)
        if on_tile:
            on_tile()
        return 1
    wy, wx = blend_weights(ys, th, H, scale), blend_weights(xs, tw, W, scale)
    acc = np.zeros((3, 0, W * scale), np.float32)  # output rows [acc_top, acc_top + acc.shape[1])
    acc_top = 0
    for r, y0 in enumerate(ys):
        top = y0 * scale
        if top > acc_top:  # rows above this tile row receive nothing more
            emit(acc_top, acc[:, : top - acc_top])
            acc, acc_top = acc[:, top - acc_top :], top
        need = top + th * scale - acc_top
        if acc.shape[1] < need:
            acc = np.concatenate([acc, np.zeros((3, need - acc.shape[1], W * scale), np.float32)], axis=1)
        for c, x0 in enumerate(xs):
            out = net(x[:, y0 : y0 + th, x0 : x0 + tw])  # (3, s*th, s*tw)
            out *= wy[r][:, None] * wx[c][None, :]
            acc[:, top - acc_top : top - acc_top + th * scale, x0 * scale : (x0 + tw) * scale] += out
            if on_tile:
                on_tile()
    emit(acc_top, acc)
    return len(ys) * len(xs)


def self_ensemble(net: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """x8 test-time augmentation: the mean over the 8 flips/transpositions, each undone on the output."""

    def run(x: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for k in range(8):
            t = x[:, :, ::-1] if k & 1 else x
            t = t[:, ::-1] if k & 2 else t
            t = t.transpose(0, 2, 1) if k & 4 else t
            y = net(np.ascontiguousarray(t))
            y = y.transpose(0, 2, 1) if k & 4 else y
            y = y[:, ::-1] if k & 2 else y
            y = y[:, :, ::-1] if k & 1 else y
            total = y.copy() if total is None else total + y
        assert total is not None
        return total / 8

    return run


# ----------------------------------------------------------------------------------------------------------
# Pixels: (H, W, C) uint8 or uint16 arrays, C = 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA)


def _max_value(dtype: np.dtype) -> int:
    return 65535 if dtype == np.uint16 else 255


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"expected a uint8 or uint16 array, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 1|2|3|4) array, got shape {pixels.shape}")
    if pixels.shape[0] < 2 or pixels.shape[1] < 2:
        raise ImageError(f"image is {pixels.shape[1]}x{pixels.shape[0]}: ESRT needs at least 2x2 pixels")
    return pixels


def _resize_channel(channel: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resizes one float32 (H, W) channel to size (width, height) in PIL's float mode."""
    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize(size, resample))


def _to_int(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    v = np.clip(v, 0, 1) * _max_value(dtype)
    return np.rint(v, out=v).astype(dtype)


def upscale_pixels(
    pixels: np.ndarray,
    net: Upscaler,
    *,
    tile: Tile = None,
    tile_overlap: int = DEFAULT_OVERLAP,
    tta: bool = False,
    outscale: float | None = None,
    alpha: Literal["bicubic", "model"] = "bicubic",
    progress: bool = False,
) -> np.ndarray:
    """Upscales (H, W, C) uint8/uint16 pixels by net.scale (then resized to outscale), same dtype and C.

    Colour (or grey, as three equal channels, averaged back) goes through the network; alpha is resized
    bicubically (alpha="bicubic") or run through the network as grey (alpha="model").
    """
    pixels = _check_pixels(pixels)
    s = net.scale
    H, W, C = pixels.shape
    size = _tile_size(tile, tile_overlap, s)
    if outscale is not None and not outscale > 0:
        raise ValueError(f"outscale must be positive, got {outscale}")
    forward = self_ensemble(net) if tta else net
    colours = 3 if C >= 3 else 1
    out = np.empty((s * H, s * W, C), pixels.dtype)
    peak = float(_max_value(pixels.dtype))

    def super_resolve(channels: np.ndarray, first: int) -> None:
        """Runs channels (H, W, 3 or 1) through the network into out[..., first : first + their count]."""
        count = channels.shape[2]
        x = channels.astype(np.float32).transpose(2, 0, 1) / np.float32(peak)  # (count, H, W)
        x = np.repeat(x, 3, axis=0) if count == 1 else x  # grey -> three equal channels

        def emit(row: int, rows: np.ndarray) -> None:  # rows (3, n, sW) float32
            v = rows if count == 3 else rows.mean(axis=0, keepdims=True)
            out[row : row + v.shape[1], :, first : first + count] = _to_int(v, pixels.dtype).transpose(1, 2, 0)

        with _progress(progress, "tiles") as bar:
            run_tiled(x, forward, s, size, tile_overlap, emit, bar)

    super_resolve(pixels[..., :colours], 0)
    if C in (2, 4):
        a = pixels[..., colours]
        if a.min() == a.max():
            out[..., colours] = a[0, 0]  # constant alpha (usually opaque) stays exact
        elif alpha == "model":
            super_resolve(pixels[..., colours:], colours)
        else:
            up = _resize_channel(a / peak, (s * W, s * H), Image.Resampling.BICUBIC)
            out[..., colours] = _to_int(up, pixels.dtype)
    if outscale is not None and outscale != s:
        size2 = (max(1, round(W * outscale)), max(1, round(H * outscale)))
        resized = np.empty((size2[1], size2[0], C), pixels.dtype)
        for c in range(C):
            ch = _resize_channel(out[..., c] / peak, size2, Image.Resampling.LANCZOS)
            resized[..., c] = _to_int(ch, pixels.dtype)
        out = resized
    return out


def _tile_size(tile: Tile, overlap: int, scale: int) -> int | None:
    if tile is None or tile == 0:
        return None
    size = auto_tile_size(scale) if tile == "auto" else tile
    if not isinstance(size, int) or size < MIN_TILE:
        raise ValueError(f"tile must be 'auto', None/0 (whole image) or an integer >= {MIN_TILE}, got {tile!r}")
    if not 0 <= overlap <= size // 2:
        raise ValueError(f"tile overlap must be between 0 and half the tile ({size // 2}), got {overlap}")
    return size


@contextmanager
def _progress(enabled: bool, desc: str) -> Iterator[Callable[[], object]]:
    """A tqdm bar over tiles (shown only when enabled and on a terminal), as a no-argument callback."""
    if not enabled:
        yield lambda: None
        return
    from tqdm import tqdm

    with tqdm(desc=desc, unit="tile", leave=False, disable=None) as bar:
        yield lambda: bar.update()


# ----------------------------------------------------------------------------------------------------------
# PIL images <-> pixels

_CONVERT = {"1": "L", "PA": "RGBA", "CMYK": "RGB", "RGBX": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_CONVERT.update({"RGBa": "RGBA", "La": "LA"})


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


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if isinstance(value, int) else 1


def pil_to_pixels(im: Image.Image, wide: np.ndarray | None = None) -> tuple[np.ndarray, bytes | None]:
    """(H, W, C) pixels and ICC profile of a PIL image, EXIF orientation applied (see the mode table).

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
        target = _CONVERT.get(mode, mode)
        if mode == "P":
            target = "RGBA" if "transparency" in im.info else "RGB"
        if target not in ("L", "LA", "RGB", "RGBA"):
            raise ImageError(f"unsupported image mode {mode}")
        try:
            im = im.convert(target) if target != mode else im
        except ValueError as exc:
            raise ImageError(f"cannot convert image mode {mode} to {target} ({exc})") from None
        a = np.asarray(im)
    if a.ndim == 2:
        a = a[..., None]
    return orient(a, _orientation(im)), icc if isinstance(icc, bytes) and icc else None


def pixels_to_pil(pixels: np.ndarray, icc: bytes | None = None) -> Image.Image:
    """A PIL image of (H, W, C) pixels: L, LA, RGB, RGBA for uint8, I;16 for uint16 grey."""
    pixels = _check_pixels(pixels)
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
# The Python API


def load_upscaler(
    model: ESRT | Upscaler | None = None,
    scale: int | None = None,
    weights: str | Path | None = None,
    precision: Precision = "fp32",
    fast: bool = False,
    malloc: bool = False,
) -> Upscaler:
    """An Upscaler from a model (ESRT or an Upscaler such as export.OnnxUpscaler) or from weights."""
    from esrt.model import ESRT

    if model is None:
        from esrt.pretrained import load_model

        model = load_model(weights, scale)
    elif weights is not None:
        raise ValueError("pass either model or weights, not both")
    net: Upscaler = TorchUpscaler(model, precision, fast, malloc) if isinstance(model, ESRT) else model
    if not isinstance(model, ESRT) and precision != "fp32":
        raise ValueError("precision bf16 needs a PyTorch model (the ONNX backend runs fp32)")
    if not isinstance(model, ESRT) and fast:
        raise ValueError("fast mode needs a PyTorch model (the ONNX backend runs the reference attention)")
    if scale is not None and scale != net.scale:
        raise ValueError(f"the model upscales x{net.scale}, but scale={scale} was asked for")
    return net


@overload
def upscale(
    image: Image.Image,
    scale: int | None = ...,
    model: ESRT | Upscaler | None = ...,
    tile: Tile = ...,
    precision: Precision = ...,
    tta: bool = ...,
    *,
    tile_overlap: int = ...,
    outscale: float | None = ...,
    weights: str | Path | None = ...,
    alpha: Literal["bicubic", "model"] = ...,
    progress: bool = ...,
    fast: bool = ...,
) -> Image.Image: ...
@overload
def upscale(
    image: np.ndarray,
    scale: int | None = ...,
    model: ESRT | Upscaler | None = ...,
    tile: Tile = ...,
    precision: Precision = ...,
    tta: bool = ...,
    *,
    tile_overlap: int = ...,
    outscale: float | None = ...,
    weights: str | Path | None = ...,
    alpha: Literal["bicubic", "model"] = ...,
    progress: bool = ...,
    fast: bool = ...,
) -> np.ndarray: ...
def upscale(
    image: Image.Image | np.ndarray,
    scale: int | None = None,
    model: ESRT | Upscaler | None = None,
    tile: Tile = None,
    precision: Precision = "fp32",
    tta: bool = False,
    *,
    tile_overlap: int = DEFAULT_OVERLAP,
    outscale: float | None = None,
    weights: str | Path | None = None,
    alpha: Literal["bicubic", "model"] = "bicubic",
    progress: bool = False,
    fast: bool = False,
) -> Image.Image | np.ndarray:
    """Super-resolves a PIL image or a uint8/uint16 (H, W[, C]) array; returns the same kind.

    scale: 2, 3 or 4 (default 4, or the model's). model: an ESRT or an Upscaler (e.g. esrt.export.OnnxUpscaler);
    None loads `weights` (default: the shipped weights for scale). tile: None (whole image), an LR tile side,
    or "auto" (from free memory); tiles overlap by tile_overlap pixels blended with linear ramps. Tiled output
    differs slightly from whole-image output (each pixel attends to a band of its tile). precision "bf16"
    runs under autocast. tta: x8 self-ensemble. outscale: final factor (Lanczos resize of the result).
    fast: blocked attention (chunks of at most esrt.speed.FAST_MAX_CHUNK tokens; see the README's table).
    PIL images: EXIF orientation is applied, the ICC profile is kept in result.info; modes as in the README.
    """
    net = load_upscaler(model, scale, weights, precision, fast)
    options: dict[str, Any] = {
        "tile": tile,
        "tile_overlap": tile_overlap,
        "tta": tta,
        "outscale": outscale,
        "alpha": alpha,
        "progress": progress,
    }
    if isinstance(image, Image.Image):
        pixels, icc = pil_to_pixels(image)
        return pixels_to_pil(upscale_pixels(pixels, net, **options), icc)
    if isinstance(image, np.ndarray):
        result = upscale_pixels(image, net, **options)
        return result[..., 0] if image.ndim == 2 else result
    raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")


# ----------------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class Picture:
    """Pixels read from a file, (H, W, C) uint8/uint16, with the file's ICC profile."""

    pixels: np.ndarray
    icc: bytes | None = None


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Reads an image file into pixels; raises ImageError naming what is wrong (empty, not an image, ...)."""
    path = Path(path)
    if path.is_dir():
        raise ImageError("is a folder")
    if path.stat().st_size == 0:
        raise ImageError("empty file")
    tiff = _read_tiff16(path, max_pixels)
    if tiff is not None:
        return tiff
    with _open(path) as im:
        w, h = im.size
        _check_size(w, h, max_pixels)
        raw = _rawmode(im)  # before load(), which clears the tiles
        wide = _read_16bit_colour(path, im)
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error) as exc:
            raise ImageError(f"cannot decode ({exc or type(exc).__name__})") from None
        pixels, icc = pil_to_pixels(im, wide)
        if wide is None and im.mode == "RGBA" and raw == "LA;16B":
            pixels = pixels[..., [0, 3]]  # 16-bit grey+alpha PNG, which PIL decodes to 8-bit RGBA: back to LA
    return Picture(pixels, icc)


def _check_size(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageError(f"{w}x{h} = {w * h} pixels is above the limit of {max_pixels} (raise --max-pixels)")
    if w < 2 or h < 2:
        raise ImageError(f"image is {w}x{h}: ESRT needs at least 2x2 pixels")


def _read_tiff16(path: Path, max_pixels: int) -> Picture | None:
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
            orientation, icc = page.tags.get(274), page.tags.get(34675)
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises many kinds on a broken file
        raise ImageError(f"cannot decode ({exc or type(exc).__name__})") from None
    if axes.startswith("S"):  # planar: (S, Y, X)
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    turn = orientation.value if orientation is not None and isinstance(orientation.value, int) else 1
    profile = icc.value if icc is not None and isinstance(icc.value, bytes) and icc.value else None
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
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error) as exc:
            raise ImageError(f"cannot decode ({exc or type(exc).__name__})") from None
        return np.asarray(im)


def write_image(
    path: str | Path, pixels: np.ndarray, icc: bytes | None = None, fmt: str | None = None, quality: int = 95
) -> None:
    """Writes pixels atomically (temporary file in the same folder, then os.replace).

    fmt: png, jpg, webp, bmp or tiff (default: from the suffix, else png). 16 bits are kept in PNG and TIFF;
    JPEG, WebP and BMP get 8 bits, and JPEG drops alpha.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "png").lower()
    if fmt not in FORMATS:
        raise ImageError(f"unknown output format {fmt!r} (one of {', '.join(sorted(FORMATS))})")
    kind = FORMATS[fmt]
    pixels = _check_pixels(pixels)
    if pixels.dtype == np.uint16 and kind not in ("PNG", "TIFF"):
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if kind == "JPEG" and pixels.shape[2] in (2, 4):
        pixels = pixels[..., : pixels.shape[2] - 1]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if pixels.dtype == np.uint16 and pixels.shape[2] > 1:  # PIL cannot write 16-bit colour
            if kind == "PNG":
                tmp.write_bytes(_png16(pixels, icc))
            else:
                import tifffile

                colour = pixels.shape[2] >= 3
                tifffile.imwrite(
                    tmp, pixels, photometric="rgb" if colour else "minisblack", compression="zlib", iccprofile=icc,
                    extrasamples=["unassalpha"] if pixels.shape[2] in (2, 4) else None,
                )  # fmt: skip
        else:
            options: dict[str, Any] = {"icc_profile": icc} if icc and kind != "BMP" else {}
            if kind in ("JPEG", "WEBP"):
                options["quality"] = quality
            pixels_to_pil(pixels).save(tmp, format=kind, **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16(pixels: np.ndarray, icc: bytes | None) -> bytes:
    """A 16-bit PNG (grey+alpha, RGB or RGBA), rows Sub-filtered; PIL cannot write 16-bit colour."""
    H, W, C = pixels.shape
    raw = pixels.astype(">u2").reshape(H, W * C).view(np.uint8).reshape(H, W * C * 2)
    bpp = 2 * C
    rows = np.empty((H, 1 + raw.shape[1]), np.uint8)
    rows[:, 0] = 1  # filter type Sub: byte minus the byte one pixel to the left
    rows[:, 1 : 1 + bpp] = raw[:, :bpp]
    rows[:, 1 + bpp :] = raw[:, bpp:] - raw[:, :-bpp]  # uint8 wraps around, as PNG requires
    colour_type = {2: 4, 3: 2, 4: 6}[C]
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 16, colour_type, 0, 0, 0))]
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    chunks += [_png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


# ----------------------------------------------------------------------------------------------------------
# `esrt upscale`


def collect_inputs(items: list[str], recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(file, output stem relative to the output folder) for files, folders and globs; plus error lines."""
    found: list[tuple[Path, Path]] = []
    errors: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append((path, Path(path.stem)))
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if _is_image_name(p.relative_to(path)) and p.is_file())
            found += [(p, p.relative_to(path).with_suffix("")) for p in files]
            if not files:
                errors.append(f"{item}: no images found" + ("" if recursive else " (--recursive looks deeper)"))
        elif glob.has_magic(item):
            files = sorted(Path(p) for p in glob.glob(item, recursive=recursive) if Path(p).is_file())
            found += [(p, Path(p.stem)) for p in files if _is_image_name(Path(p.name))]
            if not files:
                errors.append(f"{item}: no file matches")
        else:
            errors.append(f"{item}: no such file or folder")
    return found, errors


def _is_image_name(rel: Path) -> bool:
    return rel.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in rel.parts)


@dataclass(frozen=True)
class _Job:
    source: Path
    target: Path


def plan_outputs(
    inputs: list[tuple[Path, Path]], output: str | None, fmt: str | None, tag: str
) -> tuple[list[_Job], list[str], str]:
    """Output path per input: <output folder>/<stem>_x<tag>.<fmt> (or -o FILE for one input); error lines."""
    out = Path(output) if output else Path("results")
    as_file = (
        output is not None
        and len(inputs) == 1
        and out.suffix.lower() in IMAGE_SUFFIXES
        and not out.is_dir()
        and not output.endswith(("/", os.sep))
    )
    if fmt is None:
        fmt = out.suffix.lstrip(".").lower() if as_file else "png"
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(sorted(FORMATS))})")
    sources = {_identity(p) for p, _ in inputs}
    jobs: list[_Job] = []
    errors: list[str] = []
    seen: dict[Path, Path] = {}
    for source, stem in inputs:
        target = out if as_file else out / stem.with_name(f"{stem.name}_x{tag}.{fmt}")
        key = _identity(target)
        if key in sources:
            errors.append(f"{source}: output {target} is an input; refusing to overwrite it")
        elif key in seen:
            errors.append(f"{source}: output {target} is also the output of {seen[key]}; skipped")
        else:
            seen[key] = source
            jobs.append(_Job(source, target))
    return jobs, errors, fmt


def _identity(path: Path) -> Path:
    return Path(os.path.normcase(os.path.realpath(path)))


def main_upscale(args: argparse.Namespace) -> int:
    """`esrt upscale`: every input is tried; one line per failure; exit 1 when any failed."""
    from tqdm import tqdm

    start = time.perf_counter()
    inputs, errors = collect_inputs(list(args.inputs), args.recursive)
    tag = f"{args.outscale:g}" if args.outscale else str(args.scale or "")
    tile = _parse_tile(args.tile)
    try:
        net = _cli_upscaler(args)
    except ImportError as exc:  # an optional dependency (onnxruntime) is missing
        print(f"esrt upscale: error: {exc}", file=sys.stderr)
        return 1
    tag = tag or str(net.scale)
    jobs, plan_errors, fmt = plan_outputs(inputs, args.output, args.format, tag)
    errors += plan_errors
    for line in errors:
        print(f"esrt upscale: {line}", file=sys.stderr)
    failed, written, skipped = len(errors), 0, 0
    tile = _tile_size(tile, args.tile_overlap, net.scale)  # checked once, before any image
    with tqdm(jobs, desc="upscale", unit="img", disable=None) as bar:
        for job in bar:
            if job.target.exists() and not args.overwrite:
                skipped += 1
                tqdm.write(f"esrt upscale: {job.source}: {job.target} exists; skipped (--overwrite replaces)")
                continue
            try:
                picture = read_image(job.source, args.max_pixels)
                pixels = upscale_pixels(
                    picture.pixels,
                    net,
                    tile=tile,
                    tile_overlap=args.tile_overlap,
                    tta=args.tta,
                    outscale=args.outscale,
                    alpha=args.alpha,
                    progress=True,
                )
                job.target.parent.mkdir(parents=True, exist_ok=True)
                write_image(job.target, pixels, picture.icc, fmt, args.quality)
                written += 1
            except (ImageError, OSError, ValueError, RuntimeError, MemoryError) as exc:
                failed += 1
                tqdm.write(f"esrt upscale: {job.source}: {_one_line(exc)}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    print(f"esrt upscale: {written} written, {skipped} skipped (exist), {failed} failed, in {elapsed:.1f} s")
    return 1 if failed or not (written or skipped) else 0


def _parse_tile(text: str) -> Tile:
    if text.lower() in ("0", "none"):
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--tile must be a number of pixels, 'auto' or 0, got {text!r}") from None


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return exc.strerror or type(exc).__name__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _cli_upscaler(args: argparse.Namespace) -> Upscaler:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.backend == "onnx":
        if args.weights is None:
            raise ValueError("--backend onnx needs --weights MODEL.onnx (made by `esrt export --onnx`)")
        if args.precision != "fp32" or args.fast:
            raise ValueError("--backend onnx runs fp32 with the reference attention only (no --precision, --fast)")
        from esrt.export import OnnxUpscaler

        return load_upscaler(OnnxUpscaler(args.weights, threads=args.threads), args.scale)
    return load_upscaler(None, args.scale, args.weights, args.precision, args.fast, malloc=True)
