"""Platform policy: which precision, how many threads, malloc tuning, subnormal flushing, and a model set up for
fast inference.

Choices measured by bench/infer.py and bench/train_step.py (docs/performance.md); the exact graph rewrites
they rely on are in esrt.rewrites, the attention's settings in esrt.model.configure_attention.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Any, Literal

import torch

from esrt.model import ESRT, configure_attention
from esrt.rewrites import fold_sub_pixel_convs

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
FAST_MAX_CHUNK = 1024  # the fast mode's attention chunk cap (tokens); chosen by bench/infer.py, see README
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def tune_malloc() -> bool:
    """Makes glibc keep freed memory in the process instead of returning every large block to the OS.

    PyTorch frees and re-allocates the activations of every step; by default glibc serves blocks above its
    mmap threshold with fresh mmap()s, so each step page-faults every activation page again (about 600k
    faults per fp32 step, 15-20% of the step). Raising the mmap and trim thresholds removes that.
    Process-wide, affects later allocations only; the price is that the peak memory stays reserved.
    Returns whether it applied (False off glibc, e.g. macOS, Windows or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def flush_denormals() -> bool:
    """Makes float arithmetic flush subnormal numbers to zero, in this thread and the threads it starts later.

    Late in a decay to a small lr, Adam's moment estimates of rarely used weights (e.g. the channel attention's
    1x1 convs) sink below float32's smallest normal number, and on x86 CPUs arithmetic on such subnormals is
    slow in hardware: training steps became about 3x slower until they were flushed (docs/performance.md).
    Values that small add nothing to the training.
    The OpenMP workers inherit the setting only if they start afterwards: call it before the first parallel
    torch operation (esrt.train.train does). Process policy, like tune_malloc: not undone.
    Returns whether it applied (False on CPUs without the flush-to-zero control, e.g. ARM).
    """
    return bool(torch.set_flush_denormal(True))


def _cpu_has(probe_name: str, flag: str) -> bool:
    probe = getattr(torch.cpu, probe_name, None)  # private torch helpers; /proc/cpuinfo when absent
    if probe is not None:
        return bool(probe())
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units)."""
    return _cpu_has("_is_amx_tile_supported", "amx_bf16")


def has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16 dot products)."""
    return has_amx() or _cpu_has("_is_avx512_bf16_supported", "avx512_bf16")


def training_precision(device_type: str = "cpu") -> Precision:
    """The faster training precision here: "bf16" on CUDA and on CPUs with native bf16, else "fp32".

    Measured (bench/train_step.py, x4, batch 16, LR patch 32): on an AVX2-only AMD EPYC the bf16 step took
    13.1-15.0 s against 1.4-1.8 s in fp32 (bf16 emulated); with AVX512-BF16 it is ~1.4x faster than fp32.
    """
    return "bf16" if device_type == "cuda" or has_native_bf16() else "fp32"


def fast_precision() -> Precision:
    """The faster inference precision on this CPU: "bf16" with AMX units, else "fp32".

    Measured (bench/infer.py, x4, 320x180): with AMX the bf16 attention is ~1.5x faster than fp32; on an AMD
    EPYC with AVX512-BF16 but no AMX, bf16 and fp32 took the same time (7.60 s), and bf16 costs Set5 PSNR.
    """
    return "bf16" if has_amx() else "fp32"


def check_precision(precision: str) -> Precision:
    """precision as a Precision; ValueError unless it is one of PRECISIONS."""
    for known in PRECISIONS:
        if precision == known:
            return known
    raise ValueError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """The forward pass's precision: bf16 autocast (fp32 master weights; the attention as the model's
    AttentionSettings.low_precision says) or plain fp32."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def to_input(x: torch.Tensor) -> torch.Tensor:
    """A batch (B, 3, H, W) in channels-last memory, the layout the oneDNN convolutions are fastest with."""
    return x.contiguous(memory_format=torch.channels_last)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(processes: int = 1) -> int:
    """torch threads per process when the user gives none: the available CPUs shared by processes."""
    return max(1, available_cpus() // max(1, processes))


def prepare_for_inference(
    model: ESRT, precision: str = "fp32", *, fast: bool = False, max_chunk: int | None = None, malloc: bool = True
) -> ESRT:
    """Sets model up in place for fast CPU inference and returns it: eval mode, channels-last, sub-pixel convs
    folded (esrt.rewrites; same parameters and state_dict keys).

    precision "fp32" gives the same output as the plain model (within 1e-5); "bf16" (run the forward under
    autocast("bf16")) also computes the attention in bf16, ~1.5x faster than fp32 there with AMX units.
    max_chunk (not the reference; see esrt.model.blocked_attention) caps the attention chunk length: on large
    inputs the attention, most of the time, then costs O(N * max_chunk) instead of O(N^2 / 4).
    fast sets max_chunk to FAST_MAX_CHUNK unless it is given. Feed it `to_input(x)`. With malloc,
    tune_malloc() (process-wide).
    """
    precision = check_precision(precision)
    if fast and max_chunk is None:
        max_chunk = FAST_MAX_CHUNK
    configure_attention(model, max_chunk=max_chunk, low_precision=precision == "bf16")
    if malloc:
        tune_malloc()
    fold_sub_pixel_convs(model.eval()).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model
