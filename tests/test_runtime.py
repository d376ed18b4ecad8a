"""Tests of esrt.runtime: precision choice and validation, threads, malloc tuning, subnormal flushing, the inference
set-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from esrt import ESRT, runtime
from esrt.model import EMHA

from .conftest import x86_only


def test_prepare_for_inference_fp32_is_exact_and_bf16_close() -> None:
    torch.manual_seed(0)
    model = ESRT(4).eval()
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        ref = model(x)
        fast = runtime.prepare_for_inference(model, "fp32", malloc=False)(runtime.to_input(x))
        assert (fast - ref).abs().max().item() <= 1e-5
        runtime.prepare_for_inference(model, "bf16", malloc=False)
        assert all(m.settings.low_precision for m in model.modules() if isinstance(m, EMHA))
        with runtime.autocast("bf16"):
            low = model(runtime.to_input(x)).float()
    assert (low - ref).abs().mean().item() < 5e-3


def test_prepare_for_inference_sets_the_chunk_cap() -> None:
    model = ESRT(2)
    emhas = [m for m in model.modules() if isinstance(m, EMHA)]
    runtime.prepare_for_inference(model, "fp32", fast=True, malloc=False)
    assert [m.settings.max_chunk for m in emhas] == [runtime.FAST_MAX_CHUNK]
    runtime.prepare_for_inference(model, "fp32", max_chunk=64, malloc=False)
    assert [m.settings.max_chunk for m in emhas] == [64] and not emhas[0].settings.low_precision
    with pytest.raises(ValueError, match="max_chunk must be a positive number of tokens, got 0"):
        runtime.prepare_for_inference(model, "fp32", max_chunk=0, malloc=False)


def test_precision_is_validated() -> None:
    with pytest.raises(ValueError, match="precision must be fp32 or bf16, got 'fp16'"):
        runtime.autocast("fp16")
    with pytest.raises(ValueError, match="precision"):
        runtime.prepare_for_inference(ESRT(2), "fp16", malloc=False)
    assert runtime.check_precision("bf16") == "bf16"
    assert isinstance(runtime.autocast("bf16"), torch.autocast)
    assert not isinstance(runtime.autocast("fp32"), torch.autocast)


@pytest.mark.parametrize(("amx", "avx512_bf16"), [(True, True), (False, True), (False, False)])
def test_precision_choice_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool) -> None:
    flags = {"_is_amx_tile_supported": amx, "_is_avx512_bf16_supported": avx512_bf16}
    monkeypatch.setattr(runtime, "_cpu_has", lambda probe, flag: flags[probe])
    assert runtime.fast_precision() == ("bf16" if amx else "fp32")  # bf16 inference pays only with AMX
    assert runtime.training_precision("cpu") == ("bf16" if avx512_bf16 else "fp32")
    assert runtime.training_precision("cuda") == "bf16"


def test_default_threads_share_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "available_cpus", lambda: 8)
    assert [runtime.default_threads(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]


def test_to_input_is_channels_last() -> None:
    assert runtime.to_input(torch.rand(1, 3, 4, 5)).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning applies on Linux only")
def test_tune_malloc_keeps_large_blocks_off_mmap() -> None:
    """In a child process (the setting is process-wide): a 64 MiB malloc is an mmap before, a heap block after."""
    script = textwrap.dedent(
        """
        import ctypes
        from esrt.runtime import tune_malloc

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info
        libc.malloc.restype = ctypes.c_void_p

        def mmapped_after_malloc():
            block = libc.malloc(64 << 20)
            mapped = libc.mallinfo2().hblkhd
            libc.free(ctypes.c_void_p(block))
            return mapped >= 64 << 20

        print(mmapped_after_malloc(), tune_malloc(), mmapped_after_malloc())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "False"]


@x86_only
def test_flush_denormals_reaches_the_openmp_workers() -> None:
    """In a child process (the setting outlives the call): a subnormal product is zero on every thread."""
    script = textwrap.dedent(
        """
        import torch
        from esrt.runtime import flush_denormals

        applied = flush_denormals()  # before the first parallel operation starts the workers
        torch.set_num_threads(2)
        half_tiny = torch.full((1 << 20,), torch.finfo(torch.float32).tiny) * 0.5  # split across the threads
        print(applied, int((half_tiny != 0).sum()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "0"]
