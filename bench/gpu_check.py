"""GPU check: x4 parity CPU vs CUDA (fp32), a 1920x1080 x4 upscale's time, bf16/fp16 PSNR deltas on Set5.

Prints one JSON object (and writes it to --json). Needs a CUDA GPU; exits 2 saying so otherwise. Never part of
the test run. Usage: python bench/gpu_check.py [--data-root DATA] [--size 1920x1080] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esrt.devices import free_memory
from esrt.evaluate import load_lr, read_image, resolve_set, scorable_crop
from esrt.metrics import score
from esrt.model import ESRT, configure_attention
from esrt.pretrained import load_model
from esrt.runtime import prepare_for_inference, to_input
from esrt.tiling import auto_tile_size
from esrt.upscale import TorchUpscaler, upscale_pixels

PARITY_TOLERANCE = 1e-4


def test_image(height: int, width: int) -> np.ndarray:
    """A deterministic uint8 (H, W, 3) picture: smooth waves with edges and a little noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    channels = [np.sin(x / (9 + 4 * k)) * np.cos(y / (7 + 3 * k)) + ((x + y) % 64 < 32) * 0.3 for k in range(3)]
    image = 0.5 + 0.35 * np.stack(channels, axis=2) + rng.normal(0, 0.02, (height, width, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _as_input(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None].float() / 255  # (1, 3, H, W)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 tensor-core maths for CUDA convolutions and matrix products (PyTorch enables it for cuDNN by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def parity(device: torch.device, size: int = 96) -> dict[str, Any]:
    """Max |CPU - device| of the x4 output: the plain model, and esrt upscale's runner (fast mode), TF32 off/on."""
    model = load_model(scale=4)
    pixels = test_image(size, size)
    x = _as_input(pixels)
    with torch.inference_mode():
        cpu_plain = model(x)
    cpu_runner = TorchUpscaler(model, fast=True)(pixels.transpose(2, 0, 1).astype(np.float32) / 255)
    on_device = copy.deepcopy(model).to(device)
    report: dict[str, Any] = {"input": f"{size}x{size}"}
    for tf32 in (False, True):
        with _tf32(tf32), torch.inference_mode():
            plain = on_device(x.to(device)).cpu()
            runner = TorchUpscaler(on_device, fast=True)(pixels.transpose(2, 0, 1).astype(np.float32) / 255)
        name = "tf32" if tf32 else "fp32"
        report[f"plain_{name}_max_abs_diff"] = float((plain - cpu_plain).abs().max())
        report[f"runner_{name}_max_abs_diff"] = float(np.abs(runner - cpu_runner).max())
    report["pass"] = max(report["plain_fp32_max_abs_diff"], report["runner_fp32_max_abs_diff"]) <= PARITY_TOLERANCE
    return report


def timing(device: torch.device, width: int, height: int) -> dict[str, Any]:
    """Seconds for a width x height x4 upscale (fast mode) as `esrt upscale` runs it, per precision and tiling."""
    model = load_model(scale=4, device=device)
    pixels = test_image(height, width)
    free = free_memory(device)
    report: dict[str, Any] = {"input": f"{width}x{height}", "auto_tile": auto_tile_size(4, free), "free_bytes": free}
    for name, precision, tile in [
        ("fp32_auto", "fp32", "auto"),
        ("bf16_auto", "bf16", "auto"),
        ("fp32_tile512", "fp32", 512),
        ("fp32_whole", "fp32", None),
    ]:
        net = TorchUpscaler(model, precision, fast=True)
        upscale_pixels(test_image(96, 128), net, tile=tile)  # warm-up: kernels chosen, memory pools filled
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            _sync(device)
            start = time.perf_counter()
            upscale_pixels(pixels, net, tile=tile)
            _sync(device)
            seconds = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            report[name] = "out of memory"
            continue
        entry: dict[str, Any] = {"seconds": round(seconds, 3)}
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            entry["peak_gib"] = round(peak / 2**30, 2)
            if tile is None:
                entry["bytes_per_lr_pixel"] = round(peak / (width * height))
        report[name] = entry
    return report


Runner = Callable[[torch.Tensor], torch.Tensor]


def _runners(model: ESRT, device: torch.device) -> dict[str, Runner]:
    """The ways to run ESRT in reduced precision: autocast (as `--precision bf16` does) and the whole network cast."""

    def autocast(dtype: torch.dtype | None, low_precision_attention: bool) -> Runner:
        net = prepare_for_inference(copy.deepcopy(model).to(device), "fp32", malloc=False)
        configure_attention(net, low_precision=low_precision_attention)
        context = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        return lambda x: _call(net, x, context)

    def cast(dtype: torch.dtype) -> Runner:
        net = copy.deepcopy(model).to(device, dtype).eval()  # as spandrel's descriptor.half() / .bfloat16()
        configure_attention(net, low_precision=True)
        return lambda x: net(x.to(dtype)).float()

    return {
        "fp32": autocast(None, False),
        "bf16_autocast": autocast(torch.bfloat16, True),
        "fp16_autocast": autocast(torch.float16, True),
        "fp16_autocast_fp32_attention": autocast(torch.float16, False),
        "fp16_model": cast(torch.float16),
        "bf16_model": cast(torch.bfloat16),
    }


def _call(net: ESRT, x: torch.Tensor, context: Callable[[], contextlib.AbstractContextManager[Any]]) -> torch.Tensor:
    with context():
        return net(to_input(x)).float()


def set5_precisions(device: torch.device, data_root: Path, scales: tuple[int, ...] = (2, 3, 4)) -> dict[str, Any]:
    """Set5 PSNR/SSIM (the protocol of `esrt eval`, whole image, exact attention) per precision, and the deltas."""
    report: dict[str, Any] = {}
    for scale in scales:
        bench = resolve_set("Set5", scale, data_root)
        runners = _runners(load_model(scale=scale), device)
        scores: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
        for path in bench.hr_files:
            hr = scorable_crop(read_image(path), scale, path)
            x = _as_input(load_lr(bench, path, hr, scale)).to(device)
            for name, run in runners.items():
                with torch.inference_mode():
                    y = run(x)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
                if not np.isfinite(y).all():
                    raise RuntimeError(f"{name} x{scale} {path.name}: output not finite")
                scores[name].append(score(np.floor(y * 255 + 0.5).astype(np.uint8), hr, scale))
        means = {name: np.mean(values, axis=0) for name, values in scores.items()}
        report[f"x{scale}"] = {
            name: {
                "psnr": round(float(p), 4),
                "ssim": round(float(s), 4),
                "delta_db": round(float(p - means["fp32"][0]), 4),
            }
            for name, (p, s) in means.items()
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, default=os.environ.get("ESRT_DATA"), help="holds Set5/ ($ESRT_DATA)")
    parser.add_argument("--size", default="1920x1080", help="LR WIDTHxHEIGHT of the timed upscale (default 1920x1080)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        print(f"gpu_check: needs a CUDA GPU, and {why} (torch {torch.__version__})", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    width, height = (int(v) for v in args.size.lower().split("x"))
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "parity_x4": parity(device),
        "upscale_x4": timing(device, width, height),
    }
    if args.data_root is None:
        report["set5"] = "skipped: pass --data-root (or set ESRT_DATA) to the folder holding Set5/"
    else:
        report["set5"] = set5_precisions(device, Path(args.data_root))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if report["parity_x4"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
