"""Benchmark of `esrt upscale`'s path at x4 on a 1920x1080 photograph: whole image against `--tile auto`, where
the time goes, the model's GFLOP/s against a convolution micro-benchmark, and torch against onnxruntime.

Prints one JSON object. Each pass runs in a fresh process (so that each peak memory is its own) with the
shipped weights, in fast mode unless --exact:
- "whole", "tiled": seconds of the model pass (upscale_pixels), peak resident memory, tiles, and the split
  of the time: convolutions (head, LCB, body conv), transformer (LTB without its attention), attention,
  upsampler (tail and skip), tiling (cutting and blending); the model's GFLOP/s;
- "io": decoding the input PNG and encoding the output PNG as `esrt upscale` does;
- "tiled_vs_whole": the time ratio and the tiled output's difference from the whole-image output, in 8-bit
  levels, at the seams (where tiles overlap) and away from them;
- "conv_3x3_gflops": oneDNN's fp32 3x3 conv at ESRT's width (32 -> 32 channels, channels-last) on a tile;
- "backends": torch against onnxruntime (`--backend onnx`), fast mode, whole image on a 240x160 input
  (--skip-onnx), each in its own process.
Never part of the test run. Takes several minutes; the whole-image pass needs ~9 KB of memory per input pixel.

    python bench/upscale.py [--size 1920x1080] [--scale 4] [--threads N] [--exact] [--skip-whole]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from esrt.images import read_image, write_image
from esrt.model import EMHA, configure_attention
from esrt.pretrained import load_model
from esrt.runtime import to_input
from esrt.tiling import DEFAULT_OVERLAP, available_memory, tile_layout
from esrt.upscale import TorchUpscaler, plan_tile, upscale_pixels

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chelsea.png"
PARTS = {"head": "convolutions", "lcb": "convolutions", "body_conv": "convolutions", "ltb": "transformer"}
PARTS |= {"tail": "upsampler", "skip": "upsampler"}
BACKEND_SIZE = (240, 160)  # onnxruntime needs ~75 KB per input pixel (all attention chunks at once)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def make_input(path: Path, width: int, height: int) -> None:
    """A photograph at the benchmark's size: the example image, bicubic-resized."""
    Image.open(EXAMPLE).convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path)


class Timers:
    """Seconds per model part (forward hooks on ESRT's children) and in the attention kernel, with its FLOPs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.attention_flops = 0.0
        for name, part in PARTS.items():
            module = getattr(model, name)
            module.register_forward_pre_hook(lambda *_, n=name: self._start(n))
            module.register_forward_hook(lambda *_, n=name, p=part: self._stop(n, p))
        self._started: dict[str, float] = {}
        emha = next(m for m in model.modules() if isinstance(m, EMHA))
        kernel, max_chunk = emha.settings.kernel, emha.settings.max_chunk

        def timed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = kernel(q, k, v)
            self.seconds["attention"] += time.perf_counter() - start
            self.attention_flops += 4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]  # QK^T and PV
            return out

        configure_attention(model, kernel=timed, max_chunk=max_chunk)

    def _start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def _stop(self, name: str, part: str) -> None:
        self.seconds[part] += time.perf_counter() - self._started.pop(name)

    def split(self, total: float) -> dict[str, float]:
        """The parts' seconds; the attention is taken out of the transformer's, tiling is what is left."""
        parts = dict(self.seconds)
        parts["transformer"] = parts.get("transformer", 0.0) - parts.get("attention", 0.0)
        parts["tiling"] = total - sum(self.seconds[p] for p in set(PARTS.values()))
        return {k: round(v, 2) for k, v in sorted(parts.items())}


def dense_flops(model: torch.nn.Module, scale: int) -> float:
    """FLOPs of the convolutions and linear layers per input pixel (they grow linearly with the pixels)."""
    x = to_input(torch.rand(1, 3, 64, 64))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / (64 * 64)


def run_pass(args: argparse.Namespace) -> dict[str, Any]:
    """One upscale_pixels pass (args.part: whole or tiled) with the shipped weights; saves the output."""
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    picture = read_image(args.input)
    decode = time.perf_counter() - start
    net = TorchUpscaler(load_model(None, args.scale), "fp32", fast=not args.exact, malloc=True)  # as the CLI
    net(np.zeros((3, 32, 32), np.float32))  # the first call's one-off set-up is not timed
    timers = Timers(net.model)
    side = plan_tile("auto", DEFAULT_OVERLAP, net) if args.part == "tiled" else None  # as upscale_pixels would
    height, width = picture.pixels.shape[:2]
    start = time.perf_counter()
    out = upscale_pixels(picture.pixels, net, tile=side, tile_overlap=DEFAULT_OVERLAP)
    seconds = time.perf_counter() - start
    split, attention_flops = timers.split(seconds), timers.attention_flops  # before dense_flops runs the model
    (th, ys), (tw, xs) = tile_layout(height, side, DEFAULT_OVERLAP), tile_layout(width, side, DEFAULT_OVERLAP)
    tiles = len(ys) * len(xs)
    flops = dense_flops(net.model, args.scale) * th * tw * tiles
    model_seconds = seconds - split["tiling"]
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "tile": f"{tw}x{th}" if side else None,
        "tile_side": side,
        "tiles": tiles,
        "split_seconds": split,
        "model_gflop": round((flops + attention_flops) / 1e9, 1),
        "model_gflops": round((flops + attention_flops) / 1e9 / model_seconds, 1),
    }
    np.save(args.output, out)
    if args.part == "tiled":
        start = time.perf_counter()
        write_image(Path(args.output).with_suffix(".png"), out)
        result["io"] = {"decode_png_s": round(decode, 2), "encode_png_s": round(time.perf_counter() - start, 2)}
    return result


def seam_mask(height: int, width: int, side: int, scale: int) -> np.ndarray:
    """True on output pixels where two tiles overlap (--tile auto, DEFAULT_OVERLAP)."""

    def overlaps(length: int) -> np.ndarray:
        span, starts = tile_layout(length, side, DEFAULT_OVERLAP)
        mask = np.zeros(length * scale, bool)
        for a, b in itertools.pairwise(starts):
            mask[b * scale : (a + span) * scale] = True
        return mask

    return overlaps(height)[:, None] | overlaps(width)[None, :]


def conv_gflops(height: int, width: int, repeats: int = 5) -> float:
    """GFLOP/s of a 3x3 conv, 32 -> 32 channels, fp32, channels-last, on a (1, 32, height, width) input."""
    x = torch.rand(1, 32, height, width).to(memory_format=torch.channels_last)
    w = torch.rand(32, 32, 3, 3).to(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            F.conv2d(x, w, padding=1)
            times.append(time.perf_counter() - start)
    return 2 * 32 * 32 * 9 * height * width / statistics.median(times[1:]) / 1e9


def run_backend(args: argparse.Namespace, repeats: int = 3) -> dict[str, Any]:
    """Median seconds and peak memory of one backend (args.part: torch or onnx), fast mode, whole image."""
    from esrt.export import OnnxUpscaler

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = BACKEND_SIZE
    x = np.random.default_rng(0).random((3, height, width), dtype=np.float32)
    if args.part == "onnx":
        run: Callable[[np.ndarray], np.ndarray] = OnnxUpscaler(args.input, threads=torch.get_num_threads())
    else:
        run = TorchUpscaler(load_model(None, args.scale), "fp32", fast=True, malloc=True)
    out = run(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    np.save(args.output, out)
    return {"seconds": round(statistics.median(times), 2), "peak_rss_mib": round(peak_rss_mib())}


def child(args: argparse.Namespace, part: str, folder: Path, input_path: Path) -> dict[str, Any]:
    """Runs one part in a fresh process: its JSON line, or its last error line (a process killed for memory)."""
    command = [sys.executable, __file__, "--part", part, "--input", str(input_path)]
    command += ["--output", str(folder / f"{part}.npy"), "--scale", str(args.scale)]
    command += ["--threads", str(args.threads)] + (["--exact"] if args.exact else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="1920x1080", help="input WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--exact", action="store_true", help="the exact mode instead of the fast one")
    parser.add_argument("--skip-whole", action="store_true", help="no whole-image pass (it needs the most memory)")
    parser.add_argument("--skip-onnx", action="store_true", help="no torch-against-onnxruntime timing")
    parser.add_argument("--part", choices=("whole", "tiled", "torch", "onnx"), help=argparse.SUPPRESS)  # a child
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_pass(args) if args.part in ("whole", "tiled") else run_backend(args)))
        return

    width, height = (int(v) for v in args.size.lower().split("x"))
    report: dict[str, Any] = {"input": f"{width}x{height}", "scale": args.scale}
    report |= {"mode": "exact" if args.exact else "fast", "threads": args.threads or torch.get_num_threads()}
    report["torch"] = torch.__version__
    report["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    report["available_memory_mib"] = round(available_memory() / 2**20)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_input(folder / "input.png", width, height)
        for part in ["tiled"] if args.skip_whole else ["whole", "tiled"]:
            report[part] = child(args, part, folder, folder / "input.png")
        report["io"] = report.get("tiled", {}).pop("io", None)
        if "seconds" in report.get("whole", {}) and "seconds" in report.get("tiled", {}):
            whole, tiled = np.load(folder / "whole.npy"), np.load(folder / "tiled.npy")
            diff = np.abs(whole.astype(np.int16) - tiled.astype(np.int16))
            side = report["tiled"]["tile_side"] or max(height, width)
            seams = seam_mask(height, width, side, args.scale)
            report["tiled_vs_whole"] = {
                "time_ratio": round(report["tiled"]["seconds"] / report["whole"]["seconds"], 3),
                "mean_abs_diff_at_seams": round(float(diff[seams].mean()), 4) if seams.any() else None,
                "mean_abs_diff_elsewhere": round(float(diff[~seams].mean()), 4),
                "max_abs_diff": int(diff.max()),
            }
        tile = (report.get("tiled") or {}).get("tile") or "256x256"
        tw, th = (int(v) for v in tile.split("x"))
        report["conv_3x3_gflops"] = round(conv_gflops(th, tw), 1)
        if not args.skip_onnx:
            from esrt.export import export_onnx

            onnx_path = export_onnx(load_model(None, args.scale), folder / "esrt.onnx")  # fast mode
            compared: dict[str, Any] = {"input": "x".join(map(str, BACKEND_SIZE))}
            for part in ("torch", "onnx"):
                compared[part] = child(args, part, folder, onnx_path)
            if "seconds" in compared["onnx"]:
                diff = np.load(folder / "torch.npy") - np.load(folder / "onnx.npy")
                compared["max_abs_diff"] = float(np.abs(diff).max())
            report["backends"] = compared
    print(json.dumps(report))


if __name__ == "__main__":
    main()
