"""Tests of esrt.rewrites: each rewrite computes the same function as the plain operation (values and gradients)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from esrt import ESRT
from esrt.model import upsample_bilinear
from esrt.rewrites import conv3x3_twice, fold_sub_pixel_convs, fold_tokens, unfold_tokens, upsample_bilinear_matmul


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_folded_sub_pixel_convs_are_the_same_function(scale: int) -> None:
    torch.manual_seed(0)
    model = ESRT(scale)
    keys = list(model.state_dict())
    folded = fold_sub_pixel_convs(copy.deepcopy(model))
    assert list(folded.state_dict()) == keys
    x = torch.rand(2, 3, 7, 9)
    ref, out = model(x), folded(x)
    assert (out - ref).abs().max().item() <= 1e-5
    ref.abs().mean().backward()
    out.abs().mean().backward()
    for p, q in zip(model.parameters(), folded.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("size", "biases"), [((7, 5), (True, True)), ((2, 3), (True, False)), ((1, 4), (False, True))])
def test_conv3x3_twice_is_two_convs(size: tuple[int, int], biases: tuple[bool, bool]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *size, generator=g, dtype=torch.float64)
    w1, w2 = (torch.randn(c, k, 3, 3, generator=g, dtype=torch.float64) for c, k in ((6, 4), (3, 6)))
    b1, b2 = (
        torch.randn(c, generator=g, dtype=torch.float64) if use else None for c, use in zip((6, 3), biases, strict=True)
    )
    reference = F.conv2d(F.conv2d(x, w1, b1, padding=1), w2, b2, padding=1)
    assert (conv3x3_twice(x, w1, b1, w2, b2) - reference).abs().max().item() < 1e-10
    without_ring = F.conv2d(F.conv2d(F.pad(x, (1, 1, 1, 1)), w1, b1, padding=1), w2, b2)  # ring not zeroed
    assert (without_ring - reference).abs().max().item() > 1e-3  # the correction is needed


@pytest.mark.parametrize(("small", "size"), [((3, 5), (6, 10)), ((4, 4), (9, 8)), ((1, 2), (2, 4))])
def test_bilinear_upsampling_as_matmuls_matches_interpolate(small: tuple[int, int], size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *small, dtype=torch.float64).float()
    expected = upsample_bilinear(x, size)
    assert (upsample_bilinear_matmul(x, size) - expected).abs().max().item() < 1e-6


def test_token_unfold_and_fold_match_torch() -> None:
    """The shifted-copy unfold/fold equal F.unfold/F.fold (3x3, padding 1), also on channels-last input."""
    x = torch.randn(2, 32, 7, 9).contiguous(memory_format=torch.channels_last)
    assert torch.equal(unfold_tokens(x), F.unfold(x, 3, padding=1).transpose(1, 2))
    t = torch.randn(2, 63, 288)
    assert torch.allclose(fold_tokens(t, (7, 9)), F.fold(t.transpose(1, 2), (7, 9), 3, padding=1), atol=1e-6)
