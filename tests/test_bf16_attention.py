"""Tests of esrt.bf16_attention: the bf16-product attention of the CPU training step against float64 SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from esrt import bf16_attention as module
from esrt.bf16_attention import bf16_attention


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_scores", [module.GROUP_SCORES, 3 * 37 * 37])  # one group; groups of 3 (5 = 3 + 2)
def test_matches_float64_attention(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, group_scores: int) -> None:
    monkeypatch.setattr(module, "GROUP_SCORES", group_scores)
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(5, 1, 37, 18, generator=g) * s for s in (1.5, 1.5, 1.0, 1.0))
    ins = [t.to(dtype).clone().requires_grad_() for t in (q, k, v)]
    out = bf16_attention(*ins, scale=1 / 6)
    out.backward(grad.to(dtype))
    assert out.dtype == dtype and out.shape == q.shape

    ref_ins = [t.detach().double().requires_grad_() for t in ins]  # the same (rounded) inputs
    ref = F.scaled_dot_product_attention(ref_ins[0], ref_ins[1], ref_ins[2], scale=1 / 6)
    ref.backward(grad.to(dtype).double())
    assert _relative_error(out, ref) < 0.015
    for mine, theirs in zip(ins, ref_ins, strict=True):
        assert mine.grad is not None and theirs.grad is not None and mine.grad.dtype == dtype
        assert _relative_error(mine.grad, theirs.grad) < 0.015


def test_operator_registration() -> None:
    """Schema, fake (meta) kernel and autograd registration as torch.compile relies on them."""
    q, k, v = torch.randn(3, 2, 9, 4).unbind(0)
    torch.library.opcheck(
        torch.ops.esrt.bf16_attention.default,
        (q, k, v, 0.5),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_compiles_as_one_opaque_kernel() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=g).requires_grad_() for _ in range(3))
    compiled = torch.compile(lambda a, b, c: bf16_attention(a * 2, b, c, 0.25), dynamic=False, fullgraph=True)
    out = compiled(q, k, v)
    out.sum().backward()
    expected = bf16_attention(q.detach() * 2, k.detach(), v.detach(), 0.25)
    assert torch.allclose(out.detach(), expected, atol=1e-6)
    assert q.grad is not None and q.grad.abs().sum() > 0
