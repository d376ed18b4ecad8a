"""Tests of esrt.model: parameter counts, reference parity, SDPA vs the naive oracle, gradients, bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esrt import ESRT, forward_chop, load_model
from esrt.model import (
    EMHA,
    AttentionSettings,
    blocked_attention,
    configure_attention,
    feature_split_attention,
    naive_kernel,
    sdpa_kernel,
)

from .conftest import fixture_path

OURS = {2: 677_771, 3: 770_251, 4: 751_755}
PAPER = {2: 677_783, 3: 770_263, 4: 751_767}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_counts(scale: int) -> None:
    n = sum(p.numel() for p in ESRT(scale).parameters())
    assert n == OURS[scale]
    assert n + 12 == PAPER[scale]  # the 12 unused ARFB scalars of the reference


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reference_parity(scale: int) -> None:
    model = load_model(fixture_path(f"esrt_x{scale}_random.pth"))
    assert model.scale == scale
    io = np.load(fixture_path(f"esrt_x{scale}_io.npz"))
    with torch.no_grad():
        for name in ("48x48", "37x45_batch2"):
            out = model(torch.from_numpy(io[f"in_{name}"]))
            expected = torch.from_numpy(io[f"out_{name}"])
            assert out.shape == expected.shape
            assert (out - expected).abs().max().item() <= 1e-5, name
        out = forward_chop(model, torch.from_numpy(io["in_90x70"]))
        expected = torch.from_numpy(io["out_90x70_chop"])
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 9), (5, 6), (2, 2), (13, 3), (2, 7)])
def test_sdpa_equals_naive_oracle(h: int, w: int) -> None:
    model = ESRT(2).eval()
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        fast = model(x)
        configure_attention(model, kernel=naive_kernel)
        naive = model(x)
    assert (fast - naive).abs().max().item() < 1e-5


@pytest.mark.parametrize("n", [4, 16, 17, 18, 19, 63])
def test_feature_split_chunks(n: int) -> None:
    q, k, v = torch.randn(3, 2, 8, n, 18).unbind(0)
    out = feature_split_attention(q, k, v)
    size = n // 4
    bounds = [(i * size, (i + 1) * size) for i in range(4)] + ([(4 * size, n)] if n % 4 else [])
    for a, b in bounds:  # each chunk attends only to itself
        attn = torch.softmax(q[:, :, a:b] @ k[:, :, a:b].transpose(-2, -1) / 6, dim=-1)
        assert torch.allclose(out[:, :, a:b], attn @ v[:, :, a:b], atol=1e-5)


@pytest.mark.parametrize(("n", "cap"), [(16, 4), (17, 4), (23, 5), (100, 7), (12, 12)])
def test_blocked_attention_chunks(n: int, cap: int) -> None:
    q, k, v = torch.randn(3, 2, 8, n, 18).unbind(0)
    out = blocked_attention(q, k, v, cap)
    oracle = blocked_attention(q, k, v, cap, naive_kernel)
    assert torch.allclose(out, oracle, atol=1e-5)
    chunks = -(-n // cap)
    size, longer = divmod(n, chunks)
    lengths = [size + 1] * longer + [size] * (chunks - longer)
    assert sum(lengths) == n and max(lengths) <= cap
    a = 0
    for length in lengths:  # each chunk attends only to itself
        b = a + length
        attn = torch.softmax(q[:, :, a:b] @ k[:, :, a:b].transpose(-2, -1) / 6, dim=-1)
        assert torch.allclose(out[:, :, a:b], attn @ v[:, :, a:b], atol=1e-5)
        a = b


def test_emha_max_chunk_only_acts_above_the_cap() -> None:
    emha = EMHA().eval()
    x = torch.randn(1, 64, 288)
    with torch.no_grad():
        reference = emha(x)  # chunks of 16 tokens
        configure_attention(emha, max_chunk=16)
        assert torch.equal(emha(x), reference)
        configure_attention(emha, max_chunk=8)  # 8 chunks of 8: another function
        blocked = emha(x)
    assert not torch.allclose(blocked, reference, atol=1e-3)


def test_configure_attention_sets_every_emha_and_resets() -> None:
    model = ESRT(2)
    configure_attention(model, kernel=naive_kernel, max_chunk=5, low_precision=True)
    emhas = [m for m in model.modules() if isinstance(m, EMHA)]
    assert emhas and all(m.settings == AttentionSettings(naive_kernel, 5, True) for m in emhas)
    configure_attention(model)  # the paper's attention again
    assert all(m.settings == AttentionSettings(sdpa_kernel, None, False) for m in emhas)
    with pytest.raises(ValueError, match="max_chunk must be a positive number of tokens, got 0"):
        configure_attention(model, max_chunk=0)


def test_attention_in_fp32_under_autocast_unless_low_precision() -> None:
    """The attention kernel sees fp32 under bf16 autocast by default, bf16 with low_precision."""
    seen: list[torch.dtype] = []

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.append(q.dtype)
        return sdpa_kernel(q, k, v)

    emha = EMHA()
    x = torch.randn(1, 16, 288)
    for low in (False, True):
        configure_attention(emha, kernel=spy, low_precision=low)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            emha(x)
    assert seen == [torch.float32, torch.bfloat16]


def test_no_attention_matrix_is_materialised() -> None:
    emha = EMHA()
    x = torch.randn(1, 4096, 288)
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        emha(x)
    largest = max(e.cpu_memory_usage for e in prof.events() or [])
    chunk_matrix = 8 * (4096 // 4) ** 2 * 4  # one chunk's (heads, L, L) fp32 attention matrix
    assert largest < chunk_matrix / 2


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(3, 8, 8),
        torch.rand(1, 4, 8, 8),
        torch.rand(1, 3, 1, 8),
        torch.randint(0, 255, (1, 3, 8, 8)),
        torch.rand(1, 3, 8, 8).double(),
    ],
)
def test_bad_input_raises_value_error(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="expected"):
        ESRT(2)(bad)


def test_bad_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        ESRT(5)


def test_gradients_reach_every_parameter() -> None:
    model = ESRT(4)
    for p in model.parameters():  # random scalars, so that no product hides a zero gradient
        p.data.add_(torch.randn_like(p) * 0.05)
    for name, p in model.named_parameters():  # CA squeezes to 2 channels: keep their ReLUs alive
        if name.endswith("squeeze.bias"):
            p.data.fill_(0.5)
    model(torch.rand(2, 3, 12, 10)).abs().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert dead == []


def test_bf16_autocast_close_to_fp32() -> None:
    model = load_model(fixture_path("esrt_x4_random.pth"))
    x = torch.from_numpy(np.load(fixture_path("esrt_x4_io.npz"))["in_48x48"])
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    err = (low.float() - ref).abs()
    # measured: mean 1.5e-3, max 2.3e-2 on this random-weight checkpoint (outputs span about +-3)
    assert err.mean().item() < 5e-3
    assert err.max().item() < 0.08


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_whole_network_in_half_precision(dtype: torch.dtype) -> None:
    """model.to(half) runs (the fp32 attention hands its output back in the network's dtype) and stays close."""
    model = load_model(fixture_path("esrt_x4_random.pth"))
    x = torch.from_numpy(np.load(fixture_path("esrt_x4_io.npz"))["in_48x48"])
    with torch.no_grad():
        ref = model(x)
        low = model.to(dtype)(x.to(dtype))
    assert low.dtype == dtype
    err = (low.float() - ref).abs()
    # measured: fp16 mean 1.1e-4 / max 7.2e-4, bf16 mean 9.2e-4 / max 6.1e-3 (outputs span about +-3)
    assert err.mean().item() < 5e-3
    assert err.max().item() < 0.03
