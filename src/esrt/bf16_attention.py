"""Attention with bf16 matrix products for the CPU training step: softmax(Q K^T * scale) V, materialised a few
(L, L) matrices at a time.

PyTorch's CPU flash-attention kernels are slow at ESRT's head width of 18: at batch 16 and LR patch 48 the fp32
kernel's forward and backward took 0.56 s of a 1.45 s bf16 training step (AMD EPYC with AVX512-BF16), and the
bf16 kernel is slower still. Here the six matrix products (two forward, four backward) are bf16 batched
matmuls (oneDNN, fp32 accumulation) over groups of a few chunks whose (L, L) score matrices stay in cache,
with the softmax and its backward as the ATen kernels on those groups; the probabilities are kept in bf16 for
the backward (2 bytes per score, 340 MB at batch 16, patch 48), so nothing is recomputed. The result
is as precise as bf16 autocast allows: on inputs rounded to bf16 the error against float64 roughly doubles
(0.5% -> 0.9% relative, outputs and gradients alike).

Registered as custom operators so that torch.compile treats them as opaque kernels.
"""

from __future__ import annotations

from typing import Any

import torch

GROUP_SCORES = 1_400_000  # scores (bf16) per group of chunks: about 2.7 MB, four 576-token chunks


def _group_size(length: int) -> int:
    return max(1, GROUP_SCORES // (length * length))


@torch.library.custom_op("esrt::bf16_attention", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, probabilities): out = softmax(q k^T * scale) v in q's dtype, probabilities in bf16.
    q, k, v: (P, L, d) contiguous."""
    P, L, d = q.shape
    qs, kb, vb = (q * scale).bfloat16(), k.bfloat16(), v.bfloat16()
    probabilities = torch.empty(P, L, L, dtype=torch.bfloat16, device=q.device)
    out = torch.empty(P, L, d, dtype=torch.bfloat16, device=q.device)
    group = _group_size(L)
    for i in range(0, P, group):
        j = min(i + group, P)
        scores = torch.bmm(qs[i:j], kb[i:j].transpose(1, 2))  # (g, L, L)
        torch.softmax(scores, -1, out=probabilities[i:j])
        torch.bmm(probabilities[i:j], vb[i:j], out=out[i:j])
    return out.to(q.dtype), probabilities


@_forward.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    P, L, _ = q.shape
    return torch.empty_like(q), q.new_empty((P, L, L), dtype=torch.bfloat16)


@torch.library.custom_op("esrt::bf16_attention_backward", mutates_args=())
def _backward(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probabilities: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of _forward's out, each in its input's dtype."""
    P, L, d = q.shape
    qs, kb, vb, gb = (q * scale).bfloat16(), k.bfloat16(), v.bfloat16(), grad.bfloat16()
    dq, dk, dv = (torch.empty(P, L, d, dtype=torch.bfloat16, device=q.device) for _ in range(3))
    group = _group_size(L)
    for i in range(0, P, group):
        j = min(i + group, P)
        p = probabilities[i:j]
        dp = torch.bmm(gb[i:j], vb[i:j].transpose(1, 2))  # d out / d probabilities: (g, L, L)
        ds = torch.ops.aten._softmax_backward_data(dp, p, -1, torch.bfloat16)  # d out / d (scaled scores)
        torch.bmm(p.transpose(1, 2), gb[i:j], out=dv[i:j])
        torch.bmm(ds, kb[i:j], out=dq[i:j])
        torch.bmm(ds.transpose(1, 2), qs[i:j], out=dk[i:j])
    return dq.to(q.dtype) * scale, dk.to(k.dtype), dv.to(v.dtype)


@_backward.register_fake
def _(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probabilities: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v, scale = inputs
    ctx.save_for_backward(q, k, v, output[1])
    ctx.scale = scale


def _autograd_backward(ctx: Any, grad: torch.Tensor, _grad_probabilities: Any) -> tuple[Any, ...]:
    q, k, v, probabilities = ctx.saved_tensors
    dq, dk, dv = _backward(grad.contiguous(), q, k, v, probabilities, ctx.scale)
    return dq, dk, dv, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the last two axes of (..., L, d) tensors, products in bf16 (fp32
    accumulation); the result has q's dtype. Differentiable (q, k and v)."""
    *lead, L, d = q.shape
    flat = [t.reshape(-1, L, d).contiguous() for t in (q, k, v)]
    out, _ = _forward(*flat, scale)
    return out.reshape(*lead, L, d)
