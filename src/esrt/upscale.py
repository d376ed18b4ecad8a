"""Upscaling for users: the network runner (Upscaler), and `esrt.upscale` on PIL images and numpy arrays.

Colour goes through ESRT (docs/architecture.md), in tiles (esrt.tiling) when large; grey is run as three equal
channels, alpha is resized bicubically or run as grey; the fast mode (capped attention chunks) is the default.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

import numpy as np
from PIL import Image

from esrt.images import ImageError, check_pixels, max_value, pil_to_pixels, pixels_to_pil, to_pixels
from esrt.tiling import DEFAULT_OVERLAP, Network, Tile, resolve_tile, run_tiled, self_ensemble

if TYPE_CHECKING:
    import torch

    from esrt.model import ESRT
    from esrt.runtime import Precision

Alpha = Literal["bicubic", "model"]
ImageT = TypeVar("ImageT", bound=Image.Image | np.ndarray)  # upscale returns the kind it is given


class Upscaler(Protocol):
    """Anything that super-resolves one (3, h, w) float32 array in [0, 1] to (3, scale*h, scale*w).

    Optional attributes: device (a torch device: tiles are planned from a GPU's memory) and bytes_per_pixel
    (peak bytes per input pixel, when not PyTorch's: the auto tile size is planned from it).
    """

    scale: int

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def plan_tile(tile: Tile, overlap: int, net: Upscaler) -> int | None:
    """The tile side net runs at (None: whole image): "auto" from the free memory where net runs."""
    from esrt.devices import free_memory

    memory = free_memory(getattr(net, "device", None))  # a GPU's own memory; None: host RAM
    return resolve_tile(tile, overlap, net.scale, memory, getattr(net, "bytes_per_pixel", None))


class TorchUpscaler:
    """An ESRT run by PyTorch in inference mode, set up by esrt.runtime.prepare_for_inference on a copy of model.

    precision "bf16" runs it under CPU/CUDA autocast. fast caps the attention chunks (blocked attention, not
    the reference: ~3x faster on large images). chop runs the reference's forward_chop tiling (esrt.chop).
    malloc applies esrt.runtime.tune_malloc(), which is process-wide: the CLI does, the Python API does not.
    name says which weights these are, in errors.
    """

    def __init__(
        self,
        model: ESRT,
        precision: Precision = "fp32",
        fast: bool = False,
        malloc: bool = False,
        *,
        chop: bool = False,
        name: str = "the model",
    ) -> None:
        from esrt import runtime
        from esrt.devices import warn_if_slow_bf16

        self.model = runtime.prepare_for_inference(copy.deepcopy(model), precision, fast=fast, malloc=malloc)
        self.scale = int(model.scale)
        self.precision = precision
        self.chop = chop
        self.name = name
        self.device = next(model.parameters()).device
        warn_if_slow_bf16(precision, self.device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        from esrt import runtime
        from esrt.chop import forward_chop

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)  # (1, 3, h, w)
        with torch.inference_mode(), runtime.autocast(self.precision, self.device.type):
            y = forward_chop(self.model, t) if self.chop else self.model(runtime.to_input(t))  # (1, 3, s*h, s*w)
        return y[0].float().cpu().numpy()


def checked(net: Network, name: str) -> Network:
    """net, raising ImageError naming name (e.g. the weights) when its output is not finite (NaN, inf)."""

    def run(x: np.ndarray) -> np.ndarray:
        y = net(x)
        if not np.isfinite(y).all():
            raise ImageError(f"{name}: the network's output is not finite (NaN or inf): broken weights?")
        return y

    return run


def output_size(width: int, height: int, scale: int, outscale: float | None) -> tuple[int, int]:
    """(width, height) of the result: scale times the input, or outscale times it; ValueError when empty."""
    if outscale is None:
        return scale * width, scale * height
    if not (math.isfinite(outscale) and outscale > 0):
        raise ValueError(f"outscale must be a positive number, got {outscale}")
    size = (round(width * outscale), round(height * outscale))
    if min(size) < 1:
        raise ImageError(f"outscale {outscale:g} turns this {width}x{height} image into {size[0]}x{size[1]} pixels")
    return size


def upscale_pixels(
    pixels: np.ndarray,
    net: Upscaler,
    *,
    tile: Tile = "auto",
    tile_overlap: int = DEFAULT_OVERLAP,
    tta: bool = False,
    outscale: float | None = None,
    alpha: Alpha = "bicubic",
    progress: bool = False,
) -> np.ndarray:
    """Upscales (H, W, C) uint8/uint16 pixels by net.scale (then resized to outscale), same dtype and C.

    Colour (or grey, as three equal channels, averaged back) goes through the network; alpha is resized
    bicubically (alpha="bicubic") or run through the network as grey (alpha="model").
    """
    pixels = check_pixels(pixels)
    H, W, C = pixels.shape
    if H < 2 or W < 2:
        raise ImageError(f"image is {W}x{H}: ESRT needs at least 2x2 pixels")
    s = net.scale
    size = plan_tile(tile, tile_overlap, net)
    final = output_size(W, H, s, outscale)
    forward = checked(self_ensemble(net) if tta else net, getattr(net, "name", None) or type(net).__name__)
    colours = 3 if C >= 3 else 1
    out = np.empty((s * H, s * W, C), pixels.dtype)
    peak = float(max_value(pixels.dtype))

    def super_resolve(channels: np.ndarray, first: int) -> None:
        """Runs channels (H, W, 3 or 1) through the network into out[..., first : first + their count]."""
        count = channels.shape[2]
        x = channels.astype(np.float32).transpose(2, 0, 1) / np.float32(peak)  # (count, H, W)
        x = np.repeat(x, 3, axis=0) if count == 1 else x  # grey -> three equal channels

        def emit(row: int, rows: np.ndarray) -> None:  # rows (3, n, sW) float32
            v = rows if count == 3 else rows.mean(axis=0, keepdims=True)
            out[row : row + v.shape[1], :, first : first + count] = to_pixels(v, pixels.dtype).transpose(1, 2, 0)

        with _progress(progress) as bar:
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
            out[..., colours] = to_pixels(up, pixels.dtype)
    if final == (s * W, s * H):
        return out
    resized = np.empty((final[1], final[0], C), pixels.dtype)
    for c in range(C):
        resized[..., c] = to_pixels(_resize_channel(out[..., c] / peak, final, Image.Resampling.LANCZOS), pixels.dtype)
    return resized


def _resize_channel(channel: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resizes one float32 (H, W) channel to size (width, height) in PIL's float mode."""
    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize(size, resample))


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[], object]]:
    """A tqdm bar over tiles (shown only when enabled and on a terminal), as a no-argument callback."""
    if not enabled:
        yield lambda: None
        return
    from tqdm import tqdm

    with tqdm(desc="tiles", unit="tile", leave=False, disable=None) as bar:
        yield lambda: bar.update()


def load_upscaler(
    model: ESRT | Upscaler | None = None,
    scale: int | None = None,
    weights: str | Path | None = None,
    precision: Precision = "fp32",
    exact: bool = False,
    malloc: bool = False,
    device: str | torch.device = "cpu",
) -> Upscaler:
    """An Upscaler from a model (ESRT or an Upscaler such as export.OnnxUpscaler) or from weights (None: shipped).

    exact: the reference attention (Feature Split); by default the fast mode caps the attention chunks. device:
    where weights are loaded (a given model runs where it is).
    """
    from esrt.model import ESRT

    if model is None:
        from esrt.pretrained import load_model, shipped_weights

        model = load_model(weights, scale, device=device)
        name = str(weights if weights is not None else shipped_weights(model.scale))
    elif weights is not None:
        raise ValueError("pass either model or weights, not both")
    else:
        name = "the model"
    if not isinstance(model, ESRT) and precision != "fp32":
        raise ValueError("precision bf16 needs a PyTorch model (the ONNX backend runs fp32)")
    net = TorchUpscaler(model, precision, not exact, malloc, name=name) if isinstance(model, ESRT) else model
    if scale is not None and scale != net.scale:
        raise ValueError(f"the model upscales x{net.scale}, but scale={scale} was asked for")
    return net


def upscale(
    image: ImageT,
    scale: int | None = None,
    model: ESRT | Upscaler | None = None,
    tile: Tile = "auto",
    precision: Precision = "fp32",
    tta: bool = False,
    *,
    tile_overlap: int = DEFAULT_OVERLAP,
    outscale: float | None = None,
    weights: str | Path | None = None,
    alpha: Alpha = "bicubic",
    progress: bool = False,
    exact: bool = False,
) -> ImageT:
    """Super-resolves a PIL image or a uint8/uint16 (H, W[, C]) array; returns the same kind.

    scale: 2, 3 or 4 (default 4, or the model's). model: an ESRT or an Upscaler (e.g. esrt.export.OnnxUpscaler);
    None loads `weights` (default: the shipped weights for scale). tile: "auto" (the default: the tile side that
    fits in free memory), an LR tile side, or None (whole image); tiles overlap by tile_overlap pixels blended
    with linear ramps, and tiled output differs slightly from whole-image output (each pixel attends to a
    band of its tile). precision "bf16" runs under autocast. tta: x8 self-ensemble. outscale: final factor
    (Lanczos resize of the result). exact: the reference attention; by default the fast mode caps the
    attention chunks (esrt.runtime.FAST_MAX_CHUNK tokens; docs/performance.md). PIL images: EXIF orientation
    is applied, the ICC profile is kept in result.info; an animated image gives its first frame, with a warning.
    """
    net = load_upscaler(model, scale, weights, precision, exact)
    options: dict[str, Any] = {
        "tile": tile,
        "tile_overlap": tile_overlap,
        "tta": tta,
        "outscale": outscale,
        "alpha": alpha,
        "progress": progress,
    }
    if isinstance(image, Image.Image):
        if getattr(image, "n_frames", 1) > 1:
            warnings.warn("an animated image: only its first frame is upscaled", UserWarning, stacklevel=2)
        pixels, icc = pil_to_pixels(image)
        return cast(ImageT, pixels_to_pil(upscale_pixels(pixels, net, **options), icc))
    if isinstance(image, np.ndarray):
        result = upscale_pixels(image, net, **options)
        return cast(ImageT, result[..., 0] if image.ndim == 2 else result)
    raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
