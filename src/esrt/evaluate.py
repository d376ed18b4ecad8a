"""Benchmark tables (`esrt eval`): PSNR/SSIM of bicubic or ESRT on Set5/Set14/BSD100 or any folder of HR images.

Follows the field's evaluation protocol (docs/evaluation.md): modcrop, MATLAB bicubic LR, uint8 SR, Y of
rgb2ycbcr, border crop of s pixels, PSNR and SSIM (ssim_index.m) averaged per set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from esrt.atomic import atomic_write_bytes
from esrt.images import IMAGE_SUFFIXES, ImageError, modcrop, read_uint8, write_image
from esrt.imresize import imresize
from esrt.metrics import SSIM_WINDOW, psnr, rgb_to_y, ssim

if TYPE_CHECKING:
    import torch

    from esrt.model import ESRT
    from esrt.runtime import Precision

Method = Literal["bicubic", "esrt"]
DEFAULT_SETS = ("Set5", "Set14", "BSD100")
BICUBIC_RECIPE = (
    "the papers' recipe: Y (rounded) of the modcropped HR -> MATLAB bicubic downscale -> MATLAB bicubic upscale, "
    "in double -> round to uint8"
)
FIGURE_CROP = 128  # side of the HR-space crop shown in figures


@dataclass(frozen=True)
class ImageScore:
    """Scores of one image."""

    name: str
    psnr: float
    ssim: float


@dataclass(frozen=True)
class SetScore:
    """Mean scores of one benchmark set, and the per-image scores behind them."""

    name: str
    images: tuple[ImageScore, ...]

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.images]))

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.images]))


@dataclass(frozen=True)
class BenchmarkSet:
    """A set resolved on disk: its name, HR images, and the LR folder for the scale (None: made with imresize)."""

    name: str
    hr_files: list[Path]
    lr_dir: Path | None


def default_data_root() -> Path | None:
    """The sets' folder when none is given: $ESRT_DATA, else ./datasets when it exists, else None."""
    env = os.environ.get("ESRT_DATA")
    if env:
        return Path(env)
    local = Path("datasets")
    return local if local.is_dir() else None


def resolve_set(spec: str, scale: int, data_root: Path | None) -> BenchmarkSet:
    """A set given by name (a folder under data_root) or by path: <set>/HR/*.png, or a folder of HR images."""
    path = Path(spec)
    if not path.is_dir():
        if data_root is None:
            raise FileNotFoundError(f"set {spec!r}: no folder of that name, and no --data-root or ESRT_DATA")
        path = data_root / spec
        if not path.is_dir():
            raise FileNotFoundError(f"set {spec!r}: no folder {path}")
    hr_dir = path / "HR" if (path / "HR").is_dir() else path
    hr_files = sorted(p for p in hr_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not hr_files:
        raise FileNotFoundError(f"set {spec!r}: no images in {hr_dir}")
    lr_dir = path / "LR_bicubic" / f"X{scale}"
    return BenchmarkSet(path.name, hr_files, lr_dir if lr_dir.is_dir() else None)


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 (H, W) for grey or (H, W, 3) for colour (esrt.images.read_uint8), errors naming it."""
    try:
        return read_uint8(path)
    except (ImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None


def scorable_crop(image: np.ndarray, scale: int, path: Path | str = "image") -> np.ndarray:
    """The modcrop of image, checked to be large enough to score (SSIM window inside the border crop)."""
    h, w = image.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"{path}: a {w}x{h} image is smaller than the scale x{scale}")
    cropped = modcrop(image, scale)
    if min(cropped.shape[:2]) - 2 * scale < SSIM_WINDOW:
        raise ValueError(
            f"{path}: a {w}x{h} image is too small to score at x{scale} "
            f"(needs {SSIM_WINDOW} pixels per side after cropping {scale} from each border)"
        )
    return cropped


def load_lr(bench: BenchmarkSet, hr_path: Path, hr: np.ndarray, scale: int) -> np.ndarray:
    """The LR image of a modcropped HR: the set's LR file when it has an LR folder, else MATLAB bicubic of HR."""
    if bench.lr_dir is None:
        return imresize(hr, 1 / scale)
    lr_path = bench.lr_dir / hr_path.name
    if not lr_path.is_file():
        raise FileNotFoundError(f"{lr_path}: missing LR image for {hr_path}")
    lr = read_image(lr_path)
    expected = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != expected or lr.ndim != hr.ndim:
        raise ValueError(f"{lr_path}: LR shape {lr.shape} does not fit HR {hr.shape} at x{scale}")
    return lr


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def bicubic_y(hr: np.ndarray, scale: int) -> np.ndarray:
    """The papers' bicubic baseline on Y: MATLAB downscale then upscale of the rounded Y, in double, rounded."""
    y = rgb_to_y(hr).astype(np.float64)
    return _to_uint8(imresize(imresize(y, 1 / scale), scale))


def _rgb(image: np.ndarray) -> np.ndarray:
    """Grayscale replicated to three channels (as the field feeds a one-channel image to an RGB model)."""
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def make_esrt_runner(
    model: ESRT, chop: bool = False, precision: Precision = "fp32", fast: bool = False, tta: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 RGB LR (h, w, 3) -> uint8 RGB SR (sh, sw, 3): model as esrt.upscale.TorchUpscaler runs it.

    Whole image (or the reference's forward_chop with chop), SR rounded to uint8; fp32 gives the plain model's
    output. fast: blocked attention with chunks of at most esrt.runtime.FAST_MAX_CHUNK tokens (not the reference).
    tta: the x8 self-ensemble ("ESRT+"): the mean of the 8 flipped/transposed runs, then rounded.
    """
    from esrt.upscale import TorchUpscaler, upscale_pixels

    net = TorchUpscaler(model, precision, fast, malloc=True, chop=chop)
    return lambda lr: upscale_pixels(lr, net, tile=None, tta=tta)


def _save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, image)


def side_by_side(panels: Sequence[np.ndarray], crop: int = FIGURE_CROP, gap: int = 4) -> np.ndarray:
    """Centre crops (same HR-space window) of equally sized images, side by side on a white background."""
    h, w = panels[0].shape[:2]
    c_h, c_w = min(crop, h), min(crop, w)
    top, left = (h - c_h) // 2, (w - c_w) // 2
    canvas = np.full((c_h, len(panels) * (c_w + gap) - gap, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        canvas[:, i * (c_w + gap) : i * (c_w + gap) + c_w] = _rgb(panel)[top : top + c_h, left : left + c_w]
    return canvas


def evaluate(
    sets: Sequence[str],
    scale: int,
    *,
    method: Method = "esrt",
    data_root: Path | None = None,
    weights: str | Path | None = None,
    chop: bool = False,
    precision: Precision = "fp32",
    fast: bool = False,
    tta: bool = False,
    save_dir: Path | None = None,
    figures: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> list[SetScore]:
    """Scores method on each set at scale, following the protocol; one SetScore per set, in order.

    bicubic: the papers' recipe on Y (BICUBIC_RECIPE); LR files are not used. esrt: the model (weights as
    `esrt.load_model` reads them, None = shipped) on the RGB LR (the set's LR file, or MATLAB bicubic of the
    modcropped HR), SR rounded to uint8, Y of SR and HR. Grayscale images are replicated to RGB for esrt
    (and their HR too, so both Y are taken the same way); for bicubic a grayscale image is its own Y.
    """
    from tqdm import tqdm

    if scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
    if method not in ("bicubic", "esrt"):
        raise ValueError(f"method must be bicubic or esrt, got {method!r}")
    data_root = data_root if data_root is not None else default_data_root()
    if data_root is not None and not data_root.is_dir():
        raise FileNotFoundError(f"data root {data_root}: no such folder")
    benches = [resolve_set(s, scale, data_root) for s in sets]
    runner: Callable[[np.ndarray], np.ndarray] | None = None
    if method == "esrt":
        from esrt.pretrained import load_model

        model = load_model(weights, scale=scale, device=device)
        runner = make_esrt_runner(model, chop=chop, precision=precision, fast=fast, tta=tta)

    results = []
    total = sum(len(b.hr_files) for b in benches)
    with tqdm(total=total, desc=f"{method} x{scale}", unit="img", leave=False, disable=not progress) as bar:
        for bench in benches:
            scores = []
            for hr_path in bench.hr_files:
                bar.set_postfix_str(f"{bench.name}/{hr_path.name}", refresh=False)
                hr = scorable_crop(read_image(hr_path), scale, hr_path)
                if runner is None:
                    sr_y = bicubic_y(hr, scale)
                    hr_y = rgb_to_y(hr)
                    saved, panels = sr_y, [hr, sr_y]
                else:
                    lr = _rgb(load_lr(bench, hr_path, hr, scale))
                    sr = runner(lr)
                    sr_y, hr_y = rgb_to_y(sr), rgb_to_y(_rgb(hr))
                    saved, panels = sr, [hr, imresize(lr, scale), sr]
                scores.append(ImageScore(hr_path.stem, psnr(sr_y, hr_y, scale), ssim(sr_y, hr_y, scale)))
                stem = f"{bench.name}/x{scale}/{hr_path.stem}.png"
                if save_dir is not None:
                    _save_png(saved, save_dir / stem)
                if figures is not None:
                    _save_png(side_by_side(panels), figures / stem)
                bar.update()
            results.append(SetScore(bench.name, tuple(scores)))
    return results


def format_table(results: Sequence[SetScore], scale: int, method: Method) -> str:
    """The table `esrt eval` prints: one row per set, mean PSNR (dB) and SSIM on Y."""
    lines = [f"method: {method} x{scale}" + (f" ({BICUBIC_RECIPE})" if method == "bicubic" else "")]
    lines.append(f"{'set':<12} {'images':>6} {'PSNR dB':>8} {'SSIM':>8}")
    for r in results:
        lines.append(f"{r.name:<12} {len(r.images):>6} {r.psnr:>8.3f} {r.ssim:>8.4f}")
    return "\n".join(lines)


def to_json(results: Sequence[SetScore]) -> dict[str, dict[str, float | int]]:
    """{"<set>": {"psnr": float, "ssim": float, "images": int}, ...}"""
    return {r.name: {"psnr": r.psnr, "ssim": r.ssim, "images": len(r.images)} for r in results}


def main(args: argparse.Namespace) -> int:
    """`esrt eval`: runs evaluate with the parsed options, prints the table, writes JSON if asked."""
    from esrt.devices import resolve_device

    results = evaluate(
        args.sets,
        args.scale,
        method=args.method,
        data_root=args.data_root,
        weights=args.weights,
        chop=args.chop,
        precision=args.precision,
        fast=args.fast,
        tta=args.tta,
        save_dir=args.save_dir,
        figures=args.figures,
        device=resolve_device(args.device),
    )
    print(format_table(results, args.scale, args.method))
    if args.json is not None:
        data = to_json(results)
        if any(not math.isfinite(v["psnr"]) for v in data.values()):
            print("esrt eval: warning: infinite PSNR (SR equal to HR) written as Infinity", file=sys.stderr)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.json, (json.dumps(data, indent=2) + "\n").encode())
    return 0
