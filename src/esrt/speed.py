"""CPU speed settings for training and inference: malloc tuning, bf16 autocast, channels-last, partial
torch.compile, fused Adam, the last sub-pixel convolution computed before its PixelShuffle, merged
with the conv before it, and (bf16 training) attention with bf16 matrix products.

None of these changes the maths (bf16 autocast and its attention aside, the documented precision option):
outputs match the plain model within float rounding (tests/test_speed.py). Measured by bench/train_step.py and
bench/infer.py.

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
import functools
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from esrt.bf16_attention import bf16_attention
from esrt.model import ARFB, ATTENTION_SCALE, EMHA, ESRT, ET, HPB

PRECISIONS = ("fp32", "bf16")
FAST_MAX_CHUNK = 1024  # the fast mode's attention chunk cap (tokens); chosen by bench/infer.py, see README
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


def training_precision(device_type: str = "cpu") -> str:
    """The faster training precision here: "bf16" on CUDA and on CPUs with native bf16, else "fp32".

    Measured (bench/train_step.py, x4, batch 16, LR patch 32): on an AVX2-only AMD EPYC the bf16 step took
    13.1-15.0 s against 1.4-1.8 s in fp32 (bf16 emulated); with AVX512-BF16 it is ~1.4x faster than fp32.
    """
    return "bf16" if device_type == "cuda" or has_native_bf16() else "fp32"


def fast_precision() -> str:
    """The faster inference precision on this CPU: "bf16" with AMX units, else "fp32".

    Measured (bench/infer.py, x4, 320x180): with AMX the bf16 attention is ~1.5x faster than fp32; on an AMD
    EPYC with AVX512-BF16 but no AMX, bf16 and fp32 took the same time (7.60 s), and bf16 costs Set5 PSNR.
    """
    return "bf16" if has_amx() else "fp32"


def check_precision(precision: str) -> None:
    """Raises ValueError unless precision is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """The forward pass's precision: bf16 autocast (fp32 master weights; the attention as EMHA.fp32_attention
    says) or plain fp32."""
    check_precision(precision)
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


def _folded_index(out_channels: int, in_channels: int, r: int) -> torch.Tensor:
    """Where each weight of a 3x3 conv applied after PixelShuffle(r) goes in the equivalent 3x3 conv before it.

    conv3x3(pixel_shuffle(u, r), w) == pixel_shuffle(conv3x3(u, w'), r), with w' of shape
    (out * r * r, in * r * r, 3, 3) and w' = cat([w.flatten(), 0])[index]: output channel o*r*r + i*r + j
    (sub-pixel i, j) reads input channel c*r*r + i2*r + j2 at low-resolution offset (ky, kx) - 1.
    """
    zero = out_channels * in_channels * 9  # the appended 0
    index = torch.full((out_channels, r, r, in_channels, r, r, 3, 3), zero, dtype=torch.long)
    source = (torch.arange(out_channels)[:, None] * in_channels + torch.arange(in_channels)[None]) * 9  # (o, c)
    for i in range(r):
        for dy in range(3):
            ky, i2 = divmod(i + dy - 1, r)  # high-res row 2y+i+dy-1 is low-res row y+ky, sub-row i2
            for j in range(r):
                for dx in range(3):
                    kx, j2 = divmod(j + dx - 1, r)
                    index[:, i, j, :, i2, j2, ky + 1, kx + 1] = source + dy * 3 + dx
    return index.reshape(out_channels * r * r, in_channels * r * r, 3, 3)


def conv3x3_twice(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """conv2d(conv2d(x, w1, b1, padding=1), w2, b2, padding=1) as one 5x5 conv of x plus a border correction.

    Two 3x3 convs with nothing between them are one 5x5 conv whose kernel is their kernels convolved (computed
    in the weights' dtype, even under autocast) - except next to the border, where the second conv reads the
    first one's zero padding, while the 5x5 conv sees the first conv's output there. That one-pixel ring of
    the intermediate map (rows -1 and H, columns -1 and W) is computed with thin convs and its contribution
    through w2 subtracted from the output's border pixels. Exact up to float rounding, and when the
    intermediate map is wide (the sub-pixel upsampler's 32 -> 32 * r * r channels) several times cheaper.
    x: (B, C0, H, W), w1: (C1, C0, 3, 3), w2: (C2, C1, 3, 3) -> (B, C2, H, W).
    """
    H, W = x.shape[-2:]
    with torch.autocast(x.device.type, enabled=False):
        weight = F.conv2d(w1.transpose(0, 1), w2.flip(2, 3), padding=2).transpose(0, 1)  # (C2, C0, 5, 5)
        bias = None if b1 is None else w2.sum((2, 3)) @ b1
        if b2 is not None:
            bias = b2 if bias is None else bias + b2
    y = F.conv2d(x, weight, bias, padding=2)
    padded = F.pad(x, (2, 2, 2, 2))  # intermediate row r (-1 <= r <= H) reads padded rows r + 1 .. r + 3
    top = F.conv2d(padded[..., 0:3, :], w1, b1)  # (B, C1, 1, W + 2): row -1, columns -1 .. W
    bottom = F.conv2d(padded[..., H + 1 : H + 4, :], w1, b1)  # row H
    left = F.conv2d(padded[..., 1 : H + 3, 0:3], w1, b1)  # (B, C1, H, 1): column -1, rows 0 .. H - 1
    right = F.conv2d(padded[..., 1 : H + 3, W + 1 : W + 4], w1, b1)  # column W
    ring = (
        F.pad(F.conv2d(top, w2[:, :, 0:1]), (0, 0, 0, H - 1))  # reaches output row 0 through w2's top row
        + F.pad(F.conv2d(bottom, w2[:, :, 2:3]), (0, 0, H - 1, 0))
        + F.pad(F.conv2d(F.pad(left, (0, 0, 1, 1)), w2[..., 0:1]), (0, W - 1))  # corners are in top / bottom
        + F.pad(F.conv2d(F.pad(right, (0, 0, 1, 1)), w2[..., 2:3]), (W - 1, 0))
    )
    return y - ring


class _SubPixelFolded(nn.Sequential):
    """ESRT's tail or skip branch, Sequential(Upsampler, Conv3x3[, ReLU]), computing the same function with the
    Conv3x3 moved in front of the Upsampler's last PixelShuffle (weights re-indexed, see _folded_index) and
    there merged with the Upsampler's last conv into one 5x5 conv (conv3x3_twice).

    Same children, so the same parameters and state_dict keys. The branch then runs at low resolution with
    few channels: the (B, 32 * r * r, H, W) map before the last PixelShuffle and the (B, 32, sH, sW) map
    after it are never built (nor, in training, their gradients and the pixel_unshuffle of the backward);
    x4's last stage costs ~5x fewer multiply-adds.
    """

    r: int
    index: torch.Tensor

    def __init__(self, branch: nn.Sequential) -> None:
        super().__init__(*branch)
        upsampler, last, conv = self._parts()
        shuffle = upsampler[-1]
        assert isinstance(shuffle, nn.PixelShuffle)
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in (last, conv))
        self.r = shuffle.upscale_factor
        index = _folded_index(conv.out_channels, conv.in_channels, self.r)
        self.register_buffer("index", index, persistent=False)

    def _parts(self) -> tuple[nn.Sequential, nn.Conv2d, nn.Conv2d]:
        """The Upsampler, its last conv and the branch's conv."""
        upsampler, conv = self[0], self[1]
        assert isinstance(upsampler, nn.Sequential) and isinstance(conv, nn.Conv2d)
        last = upsampler[-2]
        assert isinstance(last, nn.Conv2d)
        return upsampler, last, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        upsampler, last, conv = self._parts()
        for layer in list(upsampler)[:-2]:  # x4: the first conv and PixelShuffle
            x = layer(x)
        w = conv.weight
        weight = torch.cat([w.reshape(-1), w.new_zeros(1)])[self.index]  # (out * r * r, in * r * r, 3, 3)
        bias = None if conv.bias is None else conv.bias.repeat_interleave(self.r * self.r)
        y = conv3x3_twice(x, last.weight, last.bias, weight, bias)  # (B, out * r * r, sH / r, sW / r)
        for layer in list(self)[2:]:  # the skip branch's ReLU (elementwise: commutes with PixelShuffle)
            y = layer(y)
        return F.pixel_shuffle(y, self.r)  # (B, out, sH, sW)


def fold_sub_pixel_convs(model: ESRT) -> ESRT:
    """Replaces model.tail and model.skip in place by _SubPixelFolded equivalents; returns model."""
    if not isinstance(model.tail, _SubPixelFolded):
        model.tail = _SubPixelFolded(model.tail)
    if not isinstance(model.skip, _SubPixelFolded):
        model.skip = _SubPixelFolded(model.skip)
    return model


def unfold_tokens(x: torch.Tensor) -> torch.Tensor:
    """F.unfold(x, 3, padding=1).transpose(1, 2) written as nine shifted copies: (B, C, H, W) -> (B, H*W, C*9).

    Token n = y*W + x holds x[c, y+ky-1, x+kx-1] at c*9 + ky*3 + kx, as F.unfold. Unlike F.unfold (im2col,
    slow on channels-last bf16 input) this is plain indexing that torch.compile fuses with its neighbours.
    """
    B, C, H, W = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (B, H+2, W+2, C)
    patches = torch.stack([padded[:, i : i + H, j : j + W] for i in range(3) for j in range(3)], dim=-1)
    return patches.reshape(B, H * W, C * 9)  # (B, H, W, C, 9) -> tokens


def fold_tokens(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The adjoint of unfold_tokens, F.fold(t.transpose(1, 2), size, 3, padding=1): (B, H*W, C*9) -> (B, C, H, W)
    channels-last, each pixel the sum of the nine token entries that cover it."""
    B, N, D = t.shape
    H, W = size
    parts = t.reshape(B, H, W, D // 9, 9)
    out = sum(
        F.pad(parts[..., i * 3 + j], (0, 0, j, 2 - j, i, 2 - i)) for i in range(3) for j in range(3)
    )  # (B, H+2, W+2, C)
    assert isinstance(out, torch.Tensor)
    return out[:, 1 : H + 1, 1 : W + 1].permute(0, 3, 1, 2)


class _CompiledTokensET(nn.Module):
    """Wraps an ET (training twin only): the same unfold -> transformer layer -> fold under one torch.compile,
    with unfold and fold as shifted copies (unfold_tokens, fold_tokens) that inductor fuses into the
    LayerNorm and the residual sum instead of the im2col / col2im kernels."""

    def __init__(self, et: ET) -> None:
        super().__init__()
        self.et = et
        self.layer = torch.compile(self._layer, dynamic=False)

    def _layer(self, x: torch.Tensor) -> torch.Tensor:
        t = unfold_tokens(x)
        t = t + self.et.emha(self.et.norm1(t))
        t = t + self.et.mlp(self.et.norm2(t))
        return fold_tokens(t, (x.shape[2], x.shape[3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True: output i samples the input at
    i * (n_in - 1) / (n_out - 1), weight max(0, 1 - |position - j|) on input j (a tent, so two neighbours)."""
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    position = torch.arange(n_out, dtype=torch.float64)[:, None] * step
    return (1 - (position - torch.arange(n_in, dtype=torch.float64)[None]).abs()).clamp(min=0).float()


def upsample_bilinear_matmul(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """F.interpolate(x, size, mode="bilinear", align_corners=True) as two small matmuls, in fp32 even under
    autocast. Unlike the interpolation kernel, whose backward inductor compiles to a slow scatter loop, its
    backward is two matmuls again, so torch.compile can take whole HPBs."""
    rows, cols = bilinear_matrix(size[0], x.shape[2]), bilinear_matrix(size[1], x.shape[3])
    with torch.autocast(x.device.type, enabled=False):
        return torch.einsum("Hh,bchw,Ww->bcHW", rows.to(x.device), x.float(), cols.to(x.device))


class _CompiledHPB(nn.Module):
    """Wraps an HPB (training twin only): the whole block (its ARFBs, the frequency split, fusion and channel
    attention) under one torch.compile, with its bilinear upsampling swapped for upsample_bilinear_matmul."""

    def __init__(self, hpb: HPB) -> None:
        super().__init__()
        self.hpb = hpb
        hpb.hfm.upsample = upsample_bilinear_matmul  # the twin's own HFM: the model keeps F.interpolate
        self.block = torch.compile(hpb.forward, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


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
    bf16_products: bool = True,
) -> nn.Module:
    """Sets model up for fast training steps on CPU and returns the module to call in the training step.

    - model is converted to channels-last in place (feed it `to_input(batch)`); note that its conv weights
      are then not contiguous: `.contiguous()` them before safetensors.save_file;
    - with compile_blocks, the returned module is a twin of model that shares model's parameter tensors
      (gradients and optimizer updates land in model) and whose three HPBs and ET (each as one graph,
      _CompiledHPB and _CompiledTokensET) are torch.compile'd (about 1-2 min on the first step), with the
      sub-pixel convs folded (fold_sub_pixel_convs). A model other than ESRT gets its ARFBs compiled.
      model itself stays plain eager code: deepcopy it (EMA), validate, export and save it as usual.
      Without compile_blocks, model itself is returned;
    - with compile_blocks, bf16_products, precision "bf16" and model on the CPU, the twin's attention is
      esrt.bf16_attention (bf16 matrix products, 1.5-1.8x faster than the fp32 flash kernel) instead of fp32 SDPA;
    - tune_malloc() when malloc is true (process-wide).

    The whole-model torch.compile is deliberately not used: inductor turns F.unfold/F.fold, pixel_shuffle and
    the bilinear-upsampling backward into gather/scatter loops that are slower than the ATen kernels, which
    makes the whole-model compile slower than compiling the ARFBs alone (bench/train_step.py); the compiled
    HPBs and ET avoid those ops (upsample_bilinear_matmul, unfold_tokens, fold_tokens).
    precision is only validated here; run the forward under autocast(precision).
    """
    check_precision(precision)
    if malloc:
        tune_malloc()
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if not compile_blocks:
        return model
    twin = _sharing_copy(model)
    if isinstance(twin, ESRT):
        fold_sub_pixel_convs(twin)
        twin.lcb.hpbs = nn.ModuleList(_CompiledHPB(hpb) for hpb in twin.lcb.hpbs)  # type: ignore[arg-type]
        if bf16_products and precision == "bf16" and twin.head.weight.device.type == "cpu":
            twin.ltb.et.emha.kernel = functools.partial(bf16_attention, scale=ATTENTION_SCALE)
            twin.ltb.et.emha.fp32_attention = False
        twin.ltb.et = _CompiledTokensET(twin.ltb.et)  # type: ignore[assignment]
    else:
        for module in twin.modules():
            if isinstance(module, ARFB):
                module.compile(dynamic=False)
    return twin


def prepare_for_inference(
    model: ESRT, precision: str = "fp32", *, fast: bool = False, max_chunk: int | None = None, malloc: bool = True
) -> ESRT:
    """Sets model up in place for fast CPU inference and returns it: eval mode, channels-last, sub-pixel convs
    folded (same parameters and state_dict keys).

    precision "fp32" gives the same output as the plain model (within 1e-5); "bf16" (run the forward under
    autocast("bf16")) also computes the attention in bf16, ~1.5x faster than fp32 there with AMX units.
    max_chunk (not the reference; see esrt.model.blocked_attention) caps the attention chunk length: on large
    inputs the attention, most of the time, then costs O(N * max_chunk) instead of O(N^2 / 4).
    fast sets max_chunk to FAST_MAX_CHUNK unless it is given. Feed it `to_input(x)`. With malloc,
    tune_malloc() (process-wide).
    """
    check_precision(precision)
    if fast and max_chunk is None:
        max_chunk = FAST_MAX_CHUNK
    if max_chunk is not None and max_chunk < 1:
        raise ValueError(f"max_chunk must be a positive number of tokens, got {max_chunk}")
    if malloc:
        tune_malloc()
    fold_sub_pixel_convs(model.eval()).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for module in model.modules():
        if isinstance(module, EMHA):
            module.fp32_attention = precision == "fp32"
            module.max_chunk = max_chunk
    return model
