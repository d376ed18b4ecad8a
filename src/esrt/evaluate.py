"""Benchmark tables (`esrt eval`): PSNR/SSIM of bicubic or ESRT on Set5/Set14/BSD100 or any folder of HR images.

Follows the field's evaluation protocol of ESRT_SPEC.md ("Evaluation protocol"): modcrop, MATLAB bicubic LR,
uint8 SR, Y of rgb2ycbcr, border crop of s pixels, PSNR and SSIM (ssim_index.m) averaged per set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from esrt.imresize import imresize
from esrt.metrics import SSIM_WINDOW, psnr, rgb_to_y, ssim

if TYPE_CHECKING:
    from esrt.model import ESRT

Method = Literal["bicubic", "esrt"]
Precision = Literal["fp32", "bf16"]
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm")
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
    """../shared/data seen from the working directory or from the repository, when it exists."""
    here = Path(__file__).resolve()
    candidates = [Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    candidates += [parent / "shared" / "data" for parent in here.parents[2:4]]
    return next((c for c in candidates if c.is_dir()), None)


def resolve_set(spec: str, scale: int, data_root: Path | None) -> BenchmarkSet:
    """A set given by name (a folder under data_root) or by path: <set>/HR/*.png, or a folder of HR images."""
    path = Path(spec)
    if not path.is_dir():
        if data_root is None:
            raise FileNotFoundError(f"set {spec!r}: no such folder, and no data root (pass --data-root)")
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
    """An 8-bit image as uint8 (H, W) for grayscale or (H, W, 3) for colour; a one-line error otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("L", "RGB"):
                return np.asarray(img)
            if img.mode == "LA":
                return np.asarray(img.convert("L"))
            if img.mode in ("P", "RGBA", "CMYK", "YCbCr"):
                return np.asarray(img.convert("RGB"))
            raise ValueError(f"{path}: unsupported image mode {img.mode} (expected 8-bit grayscale or RGB)")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def modcrop(image: np.ndarray, scale: int, path: Path | str = "image") -> np.ndarray:
    """The top-left crop of image whose sides are multiples of scale, checked to be large enough to score."""
    h, w = image.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"{path}: a {w}x{h} image is smaller than the scale x{scale}")
    hc, wc = h // scale * scale, w // scale * scale
    if min(hc, wc) - 2 * scale < SSIM_WINDOW:
        raise ValueError(
            f"{path}: a {w}x{h} image is too small to score at x{scale} "
            f"(needs {SSIM_WINDOW} pixels per side after cropping {scale} from each border)"
        )
    return image[:hc, :wc]


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
    model: ESRT, chop: bool = False, precision: Precision = "fp32", fast: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 RGB LR (h, w, 3) -> uint8 RGB SR (sh, sw, 3) running model on the CPU.

    model is set up in place by esrt.speed.prepare_for_inference (fp32: the same output as the plain model);
    fast: blocked attention with chunks of at most esrt.speed.FAST_MAX_CHUNK tokens (not the reference).
    """
    import torch

    from esrt import speed
    from esrt.chop import forward_chop

    speed.prepare_for_inference(model, precision, fast=fast)

    def run(lr: np.ndarray) -> np.ndarray:
        pixels = np.array(lr, dtype=np.uint8, copy=True)  # writable: torch.from_numpy warns on read-only arrays
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, h, w)
        with torch.no_grad(), speed.autocast(precision):
            sr = forward_chop(model, x) if chop else model(speed.to_input(x))  # (1, 3, sh, sw)
        sr = sr.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return sr[0].permute(1, 2, 0).numpy()  # (sh, sw, 3)

    return run


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


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
    save_dir: Path | None = None,
    figures: Path | None = None,
    progress: bool = True,
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

        runner = make_esrt_runner(load_model(weights, scale=scale), chop=chop, precision=precision, fast=fast)

    results = []
    total = sum(len(b.hr_files) for b in benches)
    with tqdm(total=total, desc=f"{method} x{scale}", unit="img", leave=False, disable=not progress) as bar:
        for bench in benches:
            scores = []
            for hr_path in bench.hr_files:
                bar.set_postfix_str(f"{bench.name}/{hr_path.name}", refresh=False)
                hr = modcrop(read_image(hr_path), scale, hr_path)
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
    results = evaluate(
        args.sets,
        args.scale,
        method=args.method,
        data_root=args.data_root,
        weights=args.weights,
        chop=args.chop,
        precision=args.precision,
        fast=args.fast,
        save_dir=args.save_dir,
        figures=args.figures,
    )
    print(format_table(results, args.scale, args.method))
    if args.json is not None:
        data = to_json(results)
        if any(not math.isfinite(v["psnr"]) for v in data.values()):
            print("esrt eval: warning: infinite PSNR (SR equal to HR) written as Infinity", file=sys.stderr)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0
