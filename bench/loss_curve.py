"""Loss curves of the straightforward fp32 trainer and of the fast one (bf16 + every speed setting).

Both runs start from the same weights and see the same patches (sampling is a pure function of the seed and
the sample number), so the curves differ only by the arithmetic. Prints JSON: the mean L1 loss per window of
--window iterations for each run, their relative difference, and the seconds each run took.

    python bench/loss_curve.py                          # 1,000 iterations, x4, batch 16, LR patch 16
    python bench/loss_curve.py --patch 48 --iterations 1000  # the paper's patch (about 80 minutes on 2 cores)

The default patch is smaller than the paper's 48 so that both 1,000-iteration runs fit in minutes; the
numerical path (autocast casts, compiled blocks, fused Adam) is the same at every patch size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from esrt.train import TrainConfig, train

RUNS = {
    "fp32_plain": {"precision": "fp32", "compile": False, "fused_adam": False, "channels_last": False},
    "bf16_fast": {"precision": "bf16", "compile": True, "fused_adam": True, "channels_last": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["datasets/T91/HR", "datasets/BSD200/HR"])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--cache-dir", default="training/cache")
    args = parser.parse_args()

    curves: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in RUNS.items():
            out = Path(tmp) / name
            config = TrainConfig(
                scale=args.scale, data=tuple(args.data), out_dir=str(out), cache_dir=args.cache_dir,
                patch=args.patch, batch=args.batch, iterations=args.iterations, lr=args.lr,
                log_every=args.window, save_every=10**9, save_minutes=10**6, progress=False, **settings,
            )  # fmt: skip
            start = time.perf_counter()
            train(config)
            seconds[name] = round(time.perf_counter() - start, 1)
            rows = (out / "log.csv").read_text().splitlines()[1:]
            curves[name] = [float(r.split(",")[1]) for r in rows]
    a, b = np.array(curves["fp32_plain"]), np.array(curves["bf16_fast"])
    relative = (b - a) / a
    report = {
        "scale": args.scale,
        "patch": args.patch,
        "batch": args.batch,
        "iterations": args.iterations,
        "window": args.window,
        "loss": {k: [round(v, 5) for v in c] for k, c in curves.items()},
        "relative_difference": [round(float(r), 4) for r in relative],
        "max_abs_relative_difference": round(float(np.abs(relative).max()), 4),
        "mean_relative_difference_last_half": round(float(relative[len(relative) // 2 :].mean()), 4),
        "seconds": seconds,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
