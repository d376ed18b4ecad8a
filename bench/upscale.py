"""Benchmark of `esrt upscale`'s path: peak memory (ru_maxrss) and time for a 1920x1080 input, x4, tile auto.

Prints one JSON object. Random weights (speed and memory do not depend on them). Never part of the test run.
Usage: python bench/upscale.py [--size 1920x1080] [--scale 4] [--tile auto] [--precision fp32] [--fast] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from esrt.model import ESRT
from esrt.tiling import DEFAULT_OVERLAP, auto_tile_size, available_memory, tile_starts
from esrt.upscale import TorchUpscaler, upscale_pixels


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1920x1080", help="input WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    parser.add_argument("--tile", default="auto", help="'auto', a number, or 0 for the whole image")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--fast", action="store_true", help="the fast mode (blocked attention)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    tile = None if args.tile == "0" else "auto" if args.tile == "auto" else int(args.tile)
    side = auto_tile_size(args.scale) if tile == "auto" else tile

    torch.manual_seed(0)
    net = TorchUpscaler(ESRT(args.scale).eval(), args.precision, fast=args.fast, malloc=True)  # as the CLI
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([np.sin(x / 17), np.cos(y / 23), np.sin((x + y) / 31)], -1)
    image = np.rint((image + 1) * 127.5).astype(np.uint8)  # (H, W, 3), smooth, like a photo's structure
    baseline = peak_rss_mib()

    start = time.perf_counter()
    out = upscale_pixels(image, net, tile=tile, tile_overlap=args.overlap)
    seconds = time.perf_counter() - start
    tiles = (
        1
        if side is None
        else len(tile_starts(height, side, args.overlap)) * len(tile_starts(width, side, args.overlap))
    )
    result = {
        "input": f"{width}x{height}",
        "scale": args.scale,
        "output": f"{out.shape[1]}x{out.shape[0]}",
        "tile": side,
        "tile_overlap": args.overlap,
        "tiles": tiles,
        "precision": args.precision,
        "fast": args.fast,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "megapixels_out_per_s": round(out.shape[0] * out.shape[1] / seconds / 1e6, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_before_run_mib": round(baseline, 1),
        "available_memory_mib": round(available_memory() / 2**20),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
