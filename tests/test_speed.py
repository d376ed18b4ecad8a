"""Tests of esrt.speed: the speed settings keep the maths (same outputs, gradients and updates)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from esrt import ESRT, speed
from esrt.model import EMHA, sdpa_kernel, upsample_bilinear


def _model(scale: int = 2) -> ESRT:
    torch.manual_seed(0)
    return ESRT(scale)


def test_sharing_copy_shares_parameters_and_gradients() -> None:
    model = _model()
    twin = speed._sharing_copy(model)
    assert twin is not model
    assert all(a is b for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    x = torch.rand(2, 3, 8, 10)
    twin(x).abs().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_folded_sub_pixel_convs_are_the_same_function(scale: int) -> None:
    model = _model(scale)
    keys = list(model.state_dict())
    folded = speed.fold_sub_pixel_convs(copy.deepcopy(model))
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
    assert (speed.conv3x3_twice(x, w1, b1, w2, b2) - reference).abs().max().item() < 1e-10
    without_ring = F.conv2d(F.conv2d(F.pad(x, (1, 1, 1, 1)), w1, b1, padding=1), w2, b2)  # ring not zeroed
    assert (without_ring - reference).abs().max().item() > 1e-3  # the correction is needed


@pytest.mark.parametrize(("small", "size"), [((3, 5), (6, 10)), ((4, 4), (9, 8)), ((1, 2), (2, 4))])
def test_bilinear_upsampling_as_matmuls_matches_interpolate(small: tuple[int, int], size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *small, dtype=torch.float64).float()
    expected = upsample_bilinear(x, size)
    assert (speed.upsample_bilinear_matmul(x, size) - expected).abs().max().item() < 1e-6


def test_prepare_for_training_compiled_step_matches_eager() -> None:
    model = _model()
    reference = copy.deepcopy(model)
    step_model = speed.prepare_for_training(model, "fp32", malloc=False)
    assert any(isinstance(m, EMHA) for m in step_model.modules())
    x, y = torch.rand(2, 3, 12, 10), torch.rand(2, 3, 24, 20)
    F.l1_loss(step_model(speed.to_input(x)), y).backward()
    F.l1_loss(reference(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    # model itself stays plain eager code: its deepcopy (EMA) runs its own weights
    ema = copy.deepcopy(model)
    with torch.no_grad():
        ema.head.weight.add_(1.0)
        assert not torch.allclose(ema(x), model(x))


def test_bf16_twin_attends_with_bf16_products_and_keeps_the_gradients() -> None:
    """The bf16 twin swaps in esrt.bf16_attention (the model keeps SDPA); its gradients stay close to fp32."""
    model = _model()
    reference = copy.deepcopy(model)
    step_model = speed.prepare_for_training(model, "bf16", malloc=False)
    twin_emha = next(m for m in step_model.modules() if isinstance(m, EMHA))
    model_emha = next(m for m in model.modules() if isinstance(m, EMHA))
    assert isinstance(twin_emha.kernel, functools.partial) and not twin_emha.fp32_attention
    assert model_emha.kernel is sdpa_kernel and model_emha.fp32_attention
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 16, 12, generator=g), torch.rand(2, 3, 32, 24, generator=g)
    with speed.autocast("bf16"):
        sr = step_model(speed.to_input(x))
    F.l1_loss(sr.float(), y).backward()
    F.l1_loss(reference(x), y).backward()
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        grads.append((p.grad.flatten(), q.grad.flatten()))
        if name.startswith("ltb.et."):  # the transformer's weights: 0.7% here (a wrong attention gradient: ~100%)
            assert (p.grad - q.grad).norm() <= 0.03 * q.grad.norm(), name
    low, full = (torch.cat(side) for side in zip(*grads, strict=True))
    assert (low - full).norm() <= 0.02 * full.norm()  # 0.6% here (bf16 autocast)


def test_fused_adam_equals_plain_adam() -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 7)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused, plain = speed.make_optimizer(params, lr=1e-2), torch.optim.Adam(twins, lr=1e-2)
    for step in range(5):
        for p, q in zip(params, twins, strict=True):
            grad = torch.randn_like(p, generator=torch.Generator().manual_seed(step))
            p.grad, q.grad = grad.clone(), grad.clone()
        fused.step()
        plain.step()
    for p, q in zip(params, twins, strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_prepare_for_inference_fp32_is_exact_and_bf16_close() -> None:
    model = _model(4).eval()
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        ref = model(x)
        fast = speed.prepare_for_inference(model, "fp32", malloc=False)(speed.to_input(x))
        assert (fast - ref).abs().max().item() <= 1e-5
        speed.prepare_for_inference(model, "bf16", malloc=False)
        assert not any(m.fp32_attention for m in model.modules() if isinstance(m, EMHA))
        with speed.autocast("bf16"):
            low = model(speed.to_input(x)).float()
    assert (low - ref).abs().mean().item() < 5e-3


def test_settings_validate_and_report() -> None:
    with pytest.raises(ValueError, match="precision"):
        speed.autocast("fp16")
    with pytest.raises(ValueError, match="precision"):
        speed.prepare_for_training(_model(), "fp16", compile_blocks=False, malloc=False)
    assert isinstance(speed.tune_malloc(), bool)
    assert speed.fast_precision() in speed.PRECISIONS
    assert speed.to_input(torch.rand(1, 3, 4, 5)).is_contiguous(memory_format=torch.channels_last)


def test_token_unfold_and_fold_match_torch() -> None:
    """The training twin's shifted-copy unfold/fold equal F.unfold/F.fold (3x3, padding 1), also channels-last."""
    x = torch.randn(2, 32, 7, 9).contiguous(memory_format=torch.channels_last)
    assert torch.equal(speed.unfold_tokens(x), F.unfold(x, 3, padding=1).transpose(1, 2))
    t = torch.randn(2, 63, 288)
    assert torch.allclose(speed.fold_tokens(t, (7, 9)), F.fold(t.transpose(1, 2), (7, 9), 3, padding=1), atol=1e-6)
