"""Benchmark of whole-image inference: ESRT x4, random weights, one LR image, no tiling.

Prints JSON: seconds (median of --runs forward passes after one warm-up) and peak resident memory (MiB,
ru_maxrss of a fresh subprocess per measurement, so the numbers include Python and torch) for
- plain_sdpa_fp32: the baseline - the model with each feature-split chunk sent to scaled_dot_product_attention
  one chunk at a time (PLAIN_ATTENTION below), NCHW fp32, default allocator: no other optimisation;
- fp32: the package's fp32 inference path (esrt.runtime.prepare_for_inference(model, "fp32"));
- bf16: prepare_for_inference(model, "bf16") + bf16 autocast (attention in bf16 too);
- fast: the fast mode (the default of `esrt upscale`): blocked attention with chunks of at most
  esrt.runtime.FAST_MAX_CHUNK tokens, in esrt.runtime.fast_precision() (bf16 with AMX, else fp32);
- naive_fp32 at --naive-size (160x90): the explicit softmax(QK^T)V oracle, which materialises each chunk's
  attention matrix (the reference code's memory behaviour).
Outputs are compared with the baseline's (max abs difference). With --weights (trained x4 weights, e.g.
src/esrt/weights/esrt_x4.safetensors) it also scores Set5 Y-PSNR of the plain model and of the package's
fp32, bf16 and fast paths, through esrt.evaluate.make_esrt_runner (what `esrt eval` runs).

    python bench/infer.py                       # LR 320x180, about 2 minutes on 2 cores
    python bench/infer.py --weights W.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("plain_sdpa_fp32", "fp32", "bf16", "fast", "naive_fp32")


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def plain_feature_split_attention(q, k, v, splits=4, kernel=None):  # type: ignore[no-untyped-def]
    """The baseline: scaled_dot_product_attention called once per chunk (and for the N % 4 remainder)."""
    import torch
    import torch.nn.functional as F

    from esrt.model import ATTENTION_SCALE

    N = q.shape[2]
    size = N // splits
    bounds = [(i * size, (i + 1) * size) for i in range(splits)] + ([(splits * size, N)] if N % splits else [])
    out = [
        F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=ATTENTION_SCALE)
        for a, b in bounds
    ]  # each (B, heads, b - a, d)
    return torch.cat(out, dim=2)  # (B, heads, N, d)


def worker(mode: str, size: str, runs: int, threads: int, save: str) -> dict[str, object]:
    import numpy as np
    import torch

    import esrt.model
    from esrt import ESRT, runtime

    if threads:
        torch.set_num_threads(threads)
    width, height = (int(v) for v in size.lower().split("x"))
    torch.manual_seed(0)
    model = ESRT(4).eval()
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    precision = "fp32"
    if mode == "plain_sdpa_fp32":
        esrt.model.feature_split_attention = plain_feature_split_attention  # type: ignore[assignment]
    elif mode == "naive_fp32":
        esrt.model.configure_attention(model, kernel=esrt.model.naive_kernel)
    else:
        precision = {"fp32": "fp32", "bf16": "bf16", "fast": runtime.fast_precision()}[mode]
        runtime.prepare_for_inference(model, precision, fast=mode == "fast")
        x = runtime.to_input(x)
    times, cpu_times, out = [], [], x
    with torch.inference_mode(), runtime.autocast(precision):
        for i in range(runs + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(x)
            if i:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    if save:
        np.save(save, out.float().numpy())
    return {
        "mode": mode,
        "precision": precision,
        "size": size,
        "seconds": round(statistics.median(times), 3),
        "samples": [round(t, 3) for t in times],
        "cpu_seconds": round(statistics.median(cpu_times), 3),  # robust with --threads 1 on a busy machine
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "threads": torch.get_num_threads(),
    }


def set5_psnr(weights: str, threads: int) -> dict[str, float]:
    """Set5 x4 Y-PSNR (the protocol of esrt.evaluate) of the plain model and of the package's paths."""
    import numpy as np
    import torch

    from esrt import load_model, runtime
    from esrt.evaluate import default_data_root, load_lr, make_esrt_runner, read_image, resolve_set, scorable_crop
    from esrt.metrics import psnr, rgb_to_y

    if threads:
        torch.set_num_threads(threads)
    bench = resolve_set("Set5", 4, default_data_root())
    images = []
    for path in bench.hr_files:
        hr = scorable_crop(read_image(path), 4, path)
        images.append((hr, load_lr(bench, path, hr, 4)))

    plain_model = load_model(weights, scale=4)

    def plain(lr: np.ndarray) -> np.ndarray:  # the unprepared model, NCHW fp32
        x = torch.from_numpy(np.array(lr, dtype=np.float32)).permute(2, 0, 1)[None] / 255  # (1, 3, h, w)
        with torch.inference_mode():
            sr = plain_model(x).clamp(0, 1).mul(255).round().to(torch.uint8)
        return sr[0].permute(1, 2, 0).numpy()

    runners = {
        "plain_fp32": plain,
        "fp32": make_esrt_runner(load_model(weights, scale=4), precision="fp32"),
        "bf16": make_esrt_runner(load_model(weights, scale=4), precision="bf16"),
        "fast": make_esrt_runner(load_model(weights, scale=4), precision=runtime.fast_precision(), fast=True),  # type: ignore[arg-type]
    }
    result = {}
    for mode, run in runners.items():
        scores = [psnr(rgb_to_y(run(lr)), rgb_to_y(hr), 4) for hr, lr in images]
        result[mode] = round(statistics.mean(scores), 4)
    for mode in ("bf16", "fast"):
        result[f"{mode}_minus_fp32_db"] = round(result[mode] - result["fp32"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="320x180", help="LR WIDTHxHEIGHT")
    parser.add_argument("--naive-size", default="160x90", help="LR size for the naive baseline ('' = skip)")
    parser.add_argument("--runs", type=int, default=2, help="timed forward passes per mode (after a warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--weights", default="", help="trained x4 weights: also compare Set5 PSNR fp32 vs bf16")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", default="", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.worker_size, args.runs, args.threads, args.save)))
        return

    import numpy as np

    from esrt import runtime

    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            size = args.naive_size if mode == "naive_fp32" else args.size
            if not size:
                continue
            save = str(Path(tmp) / f"{mode}.npy") if mode != "naive_fp32" else ""
            cmd = [sys.executable, __file__, "--worker", mode, "--worker-size", size, "--runs", str(args.runs)]
            cmd += ["--threads", str(args.threads), "--save", save]
            out = subprocess.check_output(cmd, text=True)
            results[mode] = json.loads(out.strip().splitlines()[-1])
        if "plain_sdpa_fp32" in results:
            base = np.load(Path(tmp) / "plain_sdpa_fp32.npy")
            for mode in ("fp32", "bf16", "fast"):
                if mode in results:
                    diff = float(np.abs(np.load(Path(tmp) / f"{mode}.npy") - base).max())
                    results[mode]["max_abs_diff_vs_plain"] = diff
                    for key in ("seconds", "cpu_seconds"):
                        plain, fast = results["plain_sdpa_fp32"][key], results[mode][key]
                        results[mode][f"{key}_speedup_vs_plain_sdpa_fp32"] = round(float(plain) / float(fast), 2)  # type: ignore[arg-type]
    report: dict[str, object] = {
        "benchmark": f"x4 inference, random weights, LR {args.size}, whole image",
        "command": "python " + " ".join(sys.argv),
        "torch": __import__("torch").__version__,
        "amx": runtime.has_amx(),
        "loadavg_at_start_end": None,
        "results": results,
    }
    if args.weights:
        report["set5_psnr_y"] = set5_psnr(args.weights, args.threads)
    report["loadavg_at_start_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
