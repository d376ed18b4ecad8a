"""esrt.devices and the --device options: device choice, GPU-memory tiles, the slow-bf16 warning (CPU only;
the CUDA probes are replaced by stand-ins)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import esrt.runtime
from esrt import devices
from esrt.cli import main
from esrt.devices import SlowPrecisionWarning, free_memory, resolve_device, warn_if_slow_bf16
from esrt.tiling import BYTES_PER_PIXEL, auto_tile_size, resolve_tile
from esrt.upscale import load_upscaler, upscale_pixels


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(esrt.runtime, "has_native_bf16", lambda: False)
    devices._warn_slow_bf16.cache_clear()


def _png(path: Path, size: tuple[int, int] = (14, 10)) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.usefixtures("no_cuda")
def test_auto_is_the_cpu_without_cuda() -> None:
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.usefixtures("two_gpus")
def test_auto_takes_cuda_when_there_is_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="there are 2 CUDA devices"):
        resolve_device("cuda:2")


@pytest.mark.usefixtures("no_cuda")
def test_cuda_without_cuda_says_why() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "cpu:1", "cuda:x", "mps:0", ""])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="device must be"):
        resolve_device(name)


def test_mps_where_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="MPS"):
        resolve_device("mps")


def test_free_memory_reads_the_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (asked.append(d), (3 * 2**30, 80 * 2**30))[1])
    assert free_memory("cpu") is None and free_memory(None) is None
    assert free_memory("cuda:1") == 3 * 2**30
    assert asked == [torch.device("cuda", 1)]


def test_auto_tile_follows_the_memory_given() -> None:
    small = 4 * 64 * 64 * BYTES_PER_PIXEL[4]
    assert resolve_tile("auto", 16, 4, available=small) == auto_tile_size(4, small) == 64
    assert resolve_tile("auto", 16, 4, available=2**40) == auto_tile_size(4, 2**40) > 64
    assert resolve_tile(128, 16, 4, available=small) == 128  # a given tile is kept


class _GpuStandIn:
    """A nearest-neighbour x2 "network" that says it runs on CUDA and records the tiles it is given."""

    scale = 2
    device = torch.device("cuda")

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append(x.shape)
        return x.repeat(2, axis=1).repeat(2, axis=2)


@pytest.mark.parametrize(("free", "whole"), [(2**40, True), (4 * 64 * 64 * BYTES_PER_PIXEL[2], False)])
def test_upscale_sizes_auto_tiles_from_gpu_memory(free: int, whole: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (free, 2 * free))
    net = _GpuStandIn()
    pixels = np.random.default_rng(1).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    out = upscale_pixels(pixels, net, tile="auto")
    assert np.array_equal(out, pixels.repeat(2, axis=0).repeat(2, axis=1))
    if whole:
        assert net.shapes == [(3, 150, 200)]
    else:
        assert len(net.shapes) > 1 and max(max(s[1:]) for s in net.shapes) <= 64


def test_load_upscaler_loads_on_the_device() -> None:
    net = load_upscaler(scale=2, device="cpu")
    assert getattr(net, "device", None) == torch.device("cpu")


@pytest.mark.usefixtures("emulated_bf16")
def test_bf16_warning_on_emulating_cpus_comes_once() -> None:
    with pytest.warns(SlowPrecisionWarning, match="8x slower than fp32"):
        warn_if_slow_bf16("bf16", "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_slow_bf16("bf16", torch.device("cpu"))
        warn_if_slow_bf16("fp32", "cpu")
    assert caught == []


def test_no_bf16_warning_with_native_bf16_or_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    devices._warn_slow_bf16.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monkeypatch.setattr(esrt.runtime, "has_native_bf16", lambda: True)
        warn_if_slow_bf16("bf16", "cpu")
        monkeypatch.setattr(esrt.runtime, "has_native_bf16", lambda: False)
        warn_if_slow_bf16("bf16", "cuda")
    assert caught == []


def test_cli_upscale_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    assert main(["upscale", str(_png(tmp_path / "in.png")), "-o", str(out), "--scale", "2", "--device", "cpu"]) == 0
    assert Image.open(out).size == (28, 20)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("command", ["upscale", "eval"])
def test_cli_cuda_without_cuda_is_one_line(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(_png(tmp_path / "in.png")), "-o", str(tmp_path / "out")] if command == "upscale" else ["--sets", "x"]
    assert main([command, *args, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"esrt {command}: error: device cuda: CUDA is not available") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("two_gpus")
def test_cli_onnx_backend_stays_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(_png(tmp_path / "in.png"))
    assert main(["upscale", image, "--backend", "onnx", "--weights", "m.onnx", "--device", "cuda"]) == 1
    assert "runs on the CPU" in capsys.readouterr().err


def test_cli_bf16_warning_is_one_line(tmp_path: Path) -> None:
    """In a fresh process: pytest records warnings instead of printing them."""
    image = str(_png(tmp_path / "in.png", (8, 6)))
    args = ["upscale", image, "-o", str(tmp_path / "o.png"), "--precision", "bf16", "--device", "cpu"]
    code = f"import esrt.runtime as r; r.has_native_bf16 = lambda: False; import esrt.cli; exit(esrt.cli.main({args}))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "warning" in line]
    assert lines == [f"esrt upscale: warning: {devices.SLOW_BF16}"]
