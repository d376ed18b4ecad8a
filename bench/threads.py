"""Benchmark of the thread settings under load: one x4 fast-mode upscale of a 320x180 input (random weights),
with 1 thread or one per CPU, OpenMP waiting by spinning (its default), passively, or spinning briefly, on an
idle machine and
beside busy processes (each spinning on one CPU, as another program would).

Prints one JSON object: for each load (busy processes), each setting's median seconds over --runs passes,
each setting in a fresh process (OMP_WAIT_POLICY is read once, when OpenMP starts). Stop other work first.

    python bench/threads.py [--size 320x180] [--runs 3] [--loads 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

BUSY = "while True: pass"


def run_child(size: tuple[int, int], threads: int, runs: int) -> list[float]:
    """In the child: seconds of each pass (after a warm-up)."""
    import numpy as np
    import torch

    from esrt.model import ESRT
    from esrt.upscale import TorchUpscaler

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = TorchUpscaler(ESRT(4).eval(), fast=True, malloc=True)
    x = np.random.default_rng(0).random((3, size[1], size[0]), dtype=np.float32)
    net(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    return times


def measure(args: argparse.Namespace, threads: int, wait: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if wait == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif wait.startswith("spin"):  # GNU OpenMP: spin this many times, then sleep
        env["GOMP_SPINCOUNT"] = wait.removeprefix("spin")
    command = [sys.executable, __file__, "--child", str(threads), "--size", args.size, "--runs", str(args.runs)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return {"threads": threads, "wait": wait, "seconds": round(statistics.median(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="320x180", help="input WIDTHxHEIGHT")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1], help="busy processes beside the run")
    parser.add_argument(
        "--waits", nargs="+", default=["default", "passive", "spin10000"],
        help="OpenMP waiting: default (spinning), passive, or spinN (GOMP_SPINCOUNT=N, then sleeping)",
    )  # fmt: skip
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        print(json.dumps(run_child((size[0], size[1]), args.child, args.runs)))
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    report: dict[str, Any] = {"input": args.size, "scale": 4, "mode": "fast", "cpus": cpus, "loads": {}}
    for load in args.loads:
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
        try:
            rows = [measure(args, t, w) for t in sorted({1, cpus}) for w in args.waits]
        finally:
            for process in busy:
                process.kill()
                process.wait()
        report["loads"][str(load)] = rows
    print(json.dumps(report))


if __name__ == "__main__":
    main()
