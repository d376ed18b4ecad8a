"""Where the network runs: the --device choice (auto, cpu, cuda, mps), a device's free memory, a slow-bf16 warning.

Follows PyTorch's device probes (torch.cuda, torch.backends.mps); "auto" takes CUDA when there is a GPU.
"""

from __future__ import annotations

import functools
import warnings

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")

# Measured (bench/infer.py, x4, 320x180 LR) on an AVX2-only CPU: bf16 autocast 95 s, fp32 11 s.
SLOW_BF16 = (
    "precision bf16 on this CPU (no AVX512-BF16 or AMX units) is emulated and about 8x slower than fp32 "
    "(x4 320x180: 95 s against 11 s); fp32 is faster and exact here"
)


class SlowPrecisionWarning(UserWarning):
    """A precision that this hardware only emulates: correct, but much slower than fp32."""


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    return "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES?)"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a --device value: auto (CUDA when available, else the CPU), cpu, cuda[:N] or mps.

    ValueError, in one line saying why, for an unknown name or a device this computer does not have.
    """
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text}: CUDA is not available: {_no_cuda_reason()}")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ValueError(f"device {text}: there are {count} CUDA devices (cuda:0 to cuda:{count - 1})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps: Apple's Metal (MPS) backend is not available here")
    return torch.device(text)


def free_memory(device: torch.device | str | None) -> int | None:
    """Free bytes on a CUDA device (what the tile size is planned from); None elsewhere (host RAM applies)."""
    if device is None or torch.device(device).type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def warn_if_slow_bf16(precision: str, device: torch.device | str) -> None:
    """Warns (once per process, SlowPrecisionWarning) when bf16 would run emulated on this CPU, ~8x slower."""
    from esrt.runtime import has_native_bf16

    if precision == "bf16" and torch.device(device).type == "cpu" and not has_native_bf16():
        _warn_slow_bf16()


@functools.cache
def _warn_slow_bf16() -> None:
    warnings.warn(SLOW_BF16, SlowPrecisionWarning, stacklevel=4)  # points at the caller of the model's runner
