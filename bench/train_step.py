"""Benchmark of one training step: ESRT x4, batch 16, LR patch 48x48, L1 loss, Adam; forward + backward + step.

Prints JSON: seconds per iteration (median over timed steps and rounds, warm-up excluded) for
- fp32_plain: the straightforward step (NCHW, torch.optim.Adam, no autocast) - the reference for the ratios;
- bf16_plain: the same with torch.autocast("cpu", dtype=torch.bfloat16);
- the trainer's speed settings (esrt.runtime, esrt.rewrites, esrt.train.twin) added one by one: channels-last,
  malloc tuning, then everything
  (bf16_fast = esrt.train.twin.prepare_for_training + make_optimizer: + compiled HPBs and ET token layer,
  upsampling branches merged into 5x5 convs, fused Adam), and fp32_fast, the same in fp32.
Every configuration runs in its own subprocess (malloc tuning is process-wide), built and warmed up one
after the other; then the processes take turns, `--steps` steps each, `--rounds` times, so that the
speed drifts of a busy computer (+-20% within seconds on some CPUs) hit all of them alike.
The processes stay alive side by side (a few GB each; the idle ones wait on a pipe and use no CPU).

    python bench/train_step.py                 # about 5 minutes on 2 idle cores
    python bench/train_step.py --quick         # fp32_plain, bf16_plain, bf16_fast only
    python bench/train_step.py --full-compile  # also whole-model torch.compile (slower; compiles ~5 min)
    nice -n 19 python bench/train_step.py --threads 1   # next to a running training: see below

It also reports CPU seconds per step (time.process_time). Next to another busy torch process (a training
run) wall times mean little: two 2-thread OpenMP processes on 2 cores slow each other down ~8x. Then run it
niced with --threads 1 and read the CPU seconds, which stay close to the single-thread work.

Why these settings (torch.profiler, bf16 step, 2 cores with AMX): the CPU bf16 flash-attention backward at
head width 18 took 35% of the step (fp32 attention is 4x faster there; model.py runs it in fp32), and the fp32
flash kernels still 38% on an AMD EPYC with AVX512-BF16, where the twin's attention as bf16 matrix products
(esrt.bf16_attention) made the step 1.26x faster (bf16_fast_flash vs bf16_fast); glibc
page faults ~600k pages per step (15-20%); the learnable scalars, PReLU and CA of the ARFBs are ~660 small
elementwise kernels in eager mode that torch.compile fuses; the ET's token tensors (16, 2304, 288) go through
~14 autocast casts and mixed-dtype adds that compile fuses too, and F.unfold/F.fold around them (im2col and
col2im, 75-145 ms per step on channels-last input) become shifted copies fused into that compiled layer
(esrt.rewrites.unfold_tokens / fold_tokens); pixel_unshuffle (the backward of the last
PixelShuffle, channels-last) and the 3x3 conv at 192x192 disappear when that conv is folded before the
shuffle, and merging it with the conv before it (esrt.rewrites.conv3x3_twice) removes x4's 128-channel 96x96 map
(1.11x on the whole step, AMD EPYC). Whole-model torch.compile of the plain model is slower than these partial
compiles: inductor turns F.unfold/F.fold, pixel_shuffle and the bilinear-upsampling backward into slow
gather/scatter loops (with the twin's replacements it is no faster than the partial compiles).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import NamedTuple


class Config(NamedTuple):
    precision: str  # "fp32" or "bf16" (autocast)
    channels_last: bool
    malloc: bool  # esrt.runtime.tune_malloc()
    compile: str  # "none", "blocks" (esrt.train.twin: compiled HPBs and ET tokens, merged
    # upsampling convs) or "model" (whole-model torch.compile, default inductor)
    fused: bool  # fused Adam
    bf16_products: bool = True  # with "blocks" and bf16: attention with bf16 products (esrt.bf16_attention)


CONFIGS = {
    "fp32_plain": Config("fp32", False, False, "none", False),
    "bf16_plain": Config("bf16", False, False, "none", False),
    "bf16_channels_last": Config("bf16", True, False, "none", False),
    "bf16_channels_last_malloc": Config("bf16", True, True, "none", False),
    "fp32_fast": Config("fp32", True, True, "blocks", True),  # the training twin, fp32
    "bf16_fast": Config("bf16", True, True, "blocks", True),  # the training twin, bf16: what `esrt train` uses
    "bf16_full_compile": Config("bf16", True, True, "model", True),
    "bf16_fast_flash": Config("bf16", True, True, "blocks", True, False),  # bf16_fast with fp32 flash attention
}
QUICK = ["fp32_plain", "bf16_plain", "bf16_fast"]


def worker(name: str, warmup: int, batch: int, patch: int, threads: int) -> None:
    """Runs one configuration: builds it, warms up (compiles), prints "ready", then times one step per line
    read from stdin and prints its wall and CPU seconds as JSON, until stdin closes."""
    import torch
    import torch.nn.functional as F

    from esrt import ESRT
    from esrt.runtime import autocast, to_input
    from esrt.train.twin import make_optimizer, prepare_for_training

    if threads:
        torch.set_num_threads(threads)
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = ESRT(4)
    precision = cfg.precision
    step_model: torch.nn.Module = model
    if cfg.compile == "blocks" or cfg.malloc or cfg.channels_last:
        step_model = prepare_for_training(
            model,
            precision,
            compile_blocks=cfg.compile == "blocks",
            channels_last=cfg.channels_last,
            malloc=cfg.malloc,
            bf16_products=cfg.bf16_products,
        )
    if cfg.compile == "model":
        step_model = torch.compile(step_model)  # type: ignore[assignment]
    if cfg.fused:
        optimizer = make_optimizer(model.parameters(), lr=2e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(1)
    lr = torch.rand(batch, 3, patch, patch, generator=g)
    hr = torch.rand(batch, 3, 4 * patch, 4 * patch, generator=g)
    if cfg.channels_last:
        lr = to_input(lr)

    def step() -> float:
        with autocast(precision):
            sr = step_model(lr)
        loss = F.l1_loss(sr.float(), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    print(json.dumps({"ready": name, "warmup_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}))
    sys.stdout.flush()
    for _ in sys.stdin:
        t, c = time.perf_counter(), time.process_time()
        loss = step()
        print(json.dumps({"time": time.perf_counter() - t, "cpu": time.process_time() - c, "loss": loss}))
        sys.stdout.flush()


def environment() -> dict[str, object]:
    import torch

    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx": "amx_bf16" in flags.split(),
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--configs", default="", help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    parser.add_argument("--full-compile", action="store_true", help="also whole-model torch.compile")
    parser.add_argument("--rounds", type=int, default=6, help="round-robin rounds over the configurations")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (include compilation)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(args.worker, args.warmup, args.batch, args.patch, args.threads)
        return

    names = QUICK if args.quick else [n for n in CONFIGS if n not in ("bf16_full_compile", "bf16_fast_flash")]
    if args.configs:
        names = args.configs.split(",")
    if args.full_compile and "bf16_full_compile" not in names:
        names.append("bf16_full_compile")
    env = environment()
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu_samples: dict[str, list[float]] = {n: [] for n in names}
    warmups: dict[str, float] = {}
    workers: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in names:  # one at a time, so that compiling does not overlap another's warm-up
            cmd = [sys.executable, __file__, "--worker", name, "--warmup", str(args.warmup)]
            cmd += ["--batch", str(args.batch), "--patch", str(args.patch), "--threads", str(args.threads)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            warmups[name] = round(ready["warmup_s"], 1)
            env["threads"] = ready["threads"]
            workers[name] = proc
        for _ in range(args.rounds):  # interleaved: a load change hits all alike
            for name, proc in workers.items():
                assert proc.stdin is not None and proc.stdout is not None
                for _ in range(args.steps):
                    proc.stdin.write("step\n")
                    proc.stdin.flush()
                    result = json.loads(proc.stdout.readline())
                    samples[name].append(result["time"])
                    cpu_samples[name].append(result["cpu"])
    finally:
        for proc in workers.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait()
    base = statistics.median(samples[names[0]])
    report = {
        "benchmark": f"train step: ESRT x4, batch {args.batch}, LR patch {args.patch}, L1, Adam (fwd+bwd+step)",
        "command": "python " + " ".join(sys.argv),
        "environment": env,
        "seconds_per_iteration": {n: round(statistics.median(samples[n]), 3) for n in names},
        f"speedup_vs_{names[0]}": {n: round(base / statistics.median(samples[n]), 2) for n in names},
        "min_seconds": {n: round(min(samples[n]), 3) for n in names},
        # CPU seconds of the process per step: with --threads 1 on a busy machine, the robust measure
        "cpu_seconds_per_iteration": {n: round(statistics.median(cpu_samples[n]), 3) for n in names},
        f"cpu_speedup_vs_{names[0]}": {
            n: round(statistics.median(cpu_samples[names[0]]) / statistics.median(cpu_samples[n]), 2) for n in names
        },
        "warmup_seconds_incl_compile": warmups,
        "samples": {n: [round(t, 3) for t in samples[n]] for n in names},
        "loadavg_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
