"""Training speed on CPU: malloc tuning, bf16 autocast, channels-last, torch.compile of the ARFBs, fused Adam.

None of these changes the maths of a training step (bf16 autocast aside, which is the documented precision
option). Each one is measured by bench/train_step.py; the reasons, with profile numbers, are in its docstring.

Use::

    from esrt import speed
    step_model = speed.prepare_for_training(model, "bf16")  # call step_model(lr) in the loop, save `model`
    optimizer = speed.make_optimizer(model.parameters(), lr=2e-4)
    with speed.autocast("bf16"):
        sr = step_model(speed.to_input(lr_batch))
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from esrt.model import ARFB, EMHA

PRECISIONS = ("fp32", "bf16")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def tune_malloc() -> bool:
    """Makes glibc keep freed memory in the process instead of returning every large block to the OS.

    PyTorch frees and re-allocates the activations of every step; by default glibc serves blocks above its
    mmap threshold with fresh mmap()s, so each step page-faults every activation page again (about 600k
    faults per fp32 step here, 15-20% of the step). Raising the mmap and trim thresholds removes that.
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


def has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units): where bf16 pays on CPU."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def fast_precision() -> str:
    """The fastest inference precision on this CPU: "bf16" with AMX, else "fp32" (bf16 without AMX is slower)."""
    return "bf16" if has_amx() else "fp32"


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """The forward pass's precision: bf16 autocast (fp32 master weights, fp32 attention) or plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def to_input(x: torch.Tensor) -> torch.Tensor:
    """A batch (B, 3, H, W) in channels-last memory, the layout the oneDNN convolutions are fastest with."""
    return x.contiguous(memory_format=torch.channels_last)


def make_optimizer(
    params: Iterable[nn.Parameter], lr: float = 2e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.Adam:
    """Adam with the paper's defaults as one fused kernel per step (the same update as the for-loop Adam)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)


def _sharing_copy(model: nn.Module) -> nn.Module:
    """A structural copy of model whose parameters and buffers are model's own tensors (not copies)."""
    twin = copy.deepcopy(model)
    originals = dict(model.named_modules())
    for name, module in twin.named_modules():
        source = originals[name]
        module._parameters = dict(source._parameters)
        module._buffers = dict(source._buffers)
    return twin


def prepare_for_training(
    model: nn.Module,
    precision: str = "bf16",
    *,
    compile_blocks: bool = True,
    channels_last: bool = True,
    malloc: bool = True,
) -> nn.Module:
    """Sets model up for fast training steps on CPU and returns the module to call in the training step.

    - model is converted to channels-last in place (feed it `to_input(batch)`); note that its conv weights
      are then not contiguous: `.contiguous()` them before safetensors.save_file;
    - with compile_blocks, the returned module is a twin of model that shares model's parameter tensors
      (gradients and optimizer updates land in model) and whose ARFBs are torch.compile'd (about 10 s on
      the first step). model itself stays plain eager code: deepcopy it (EMA), validate, export and save
      it as usual. Without compile_blocks, model itself is returned;
    - tune_malloc() when malloc is true (process-wide).

    The whole-model torch.compile is deliberately not used: inductor turns unfold/fold, pixel_shuffle and
    the bilinear-upsampling backward into gather/scatter loops that are slower than the ATen kernels, which
    makes the whole-model compile slower than compiling the ARFBs alone (bench/train_step.py).
    precision is only validated here; run the forward under autocast(precision).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if malloc:
        tune_malloc()
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if not compile_blocks:
        return model
    twin = _sharing_copy(model)
    for module in twin.modules():
        if isinstance(module, ARFB):
            module.compile(dynamic=False)
    return twin


def prepare_for_inference(model: nn.Module, precision: str = "fp32", *, malloc: bool = True) -> nn.Module:
    """Sets model up in place for fast CPU inference and returns it (eval mode, channels-last).

    precision "fp32" gives the same output as the plain model (within 1e-5); "bf16" (run the forward under
    autocast("bf16")) also computes the attention in bf16, ~1.5x faster than fp32 there with AMX units.
    Feed it `to_input(x)`. With malloc, tune_malloc() (process-wide).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if malloc:
        tune_malloc()
    model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for module in model.modules():
        if isinstance(module, EMHA):
            module.fp32_attention = precision == "fp32"
    return model
