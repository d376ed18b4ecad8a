"""The training twin: a copy of the model sharing its weights, with its blocks torch.compile'd, for fast CPU steps.

Same maths as the model (tests/train/test_twin.py), rewritten where inductor is slow (esrt.rewrites); measured by
bench/train_step.py (docs/performance.md).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable

import torch
from torch import nn

from esrt.bf16_attention import bf16_attention
from esrt.model import ARFB, ATTENTION_SCALE, ESRT, ET, HPB, configure_attention
from esrt.rewrites import fold_sub_pixel_convs, fold_tokens, unfold_tokens, upsample_bilinear_matmul
from esrt.runtime import check_precision, tune_malloc


def make_optimizer(
    params: Iterable[nn.Parameter], lr: float = 2e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.Adam:
    """Adam with the paper's defaults as one fused kernel per step (the same update as the for-loop Adam)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)


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
            configure_attention(
                twin.ltb.et, kernel=functools.partial(bf16_attention, scale=ATTENTION_SCALE), low_precision=True
            )
        twin.ltb.et = _CompiledTokensET(twin.ltb.et)  # type: ignore[assignment]
    else:
        for module in twin.modules():
            if isinstance(module, ARFB):
                module.compile(dynamic=False)
    return twin
