"""Tests of esrt.train: the loss falls, kill-and-resume is bit-exact, checkpoints are atomic, torchrun/gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import esrt.speed
from esrt.config import TrainConfig, load_config_file
from esrt.data import PatchDataset, StepSampler, load_pairs
from esrt.train import DivergenceError, checkpoints, learning_rate, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small smooth images (learnable, unlike noise) and one too small for a patch."""
    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:44] / 8.0
    for i in range(3):
        phase = rng.random(3) * 6
        img = np.stack([np.sin(xx * (c + 1) * 0.7 + yy + phase[c]) for c in range(3)], axis=-1)
        Image.fromarray(((img + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(folder / "tiny.png")
    return folder


def _config(images: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        scale=2, data=(str(images),), out_dir=str(out), patch=8, batch=4, iterations=6, precision="fp32",
        workers=0, progress=False, save_every=1000, log_every=2, threads=1, lr=1e-3, compile=False,
    )  # fmt: skip
    return base.replace(**changes)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoints(out)[-1], weights_only=True)["model"]


def test_small_images_are_skipped(images: Path, tmp_path: Path) -> None:
    pairs, skipped = load_pairs([images], 2, 8, tmp_path)
    assert len(pairs) == 3
    assert [Path(s).name for s in skipped] == ["tiny.png"]


def test_patches_are_aligned_and_deterministic(images: Path, tmp_path: Path) -> None:
    pairs, _ = load_pairs([images], 2, 8, tmp_path)
    data = PatchDataset(pairs, 2, 8, seed=3)
    lr, hr = data[5]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
    assert torch.equal(data[5][0], lr)
    # the HR patch shrunk 2x by box averaging is close to the bicubic LR patch (alignment check)
    box = torch.nn.functional.avg_pool2d(hr[None], 2)[0]
    assert (box - lr).abs().mean() < 0.03
    assert not torch.equal(data[6][0], lr)


def test_sampler_splits_batches_between_ranks() -> None:
    it0 = iter(StepSampler(8, 3, rank=0, world=2))
    it1 = iter(StepSampler(8, 3, rank=1, world=2))
    assert [next(it0) for _ in range(8)] == [24, 25, 26, 27, 32, 33, 34, 35]
    assert [next(it1) for _ in range(4)] == [28, 29, 30, 31]


def test_learning_rate_schedule() -> None:
    c = TrainConfig(lr=2e-4, lr_milestones=(10, 20), warmup=0)
    assert [learning_rate(c, i) for i in (0, 9, 10, 19, 20)] == [2e-4, 2e-4, 1e-4, 1e-4, 5e-5]


def test_loss_falls(images: Path, tmp_path: Path) -> None:
    train(_config(images, tmp_path, iterations=30, lr=2e-3))
    rows = (tmp_path / "log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    assert (tmp_path / "last.safetensors").is_file()


def _losses(out: Path) -> list[float]:
    return [float(r.split(",")[1]) for r in (out / "log.csv").read_text().splitlines()[1:]]


def test_compiled_training_follows_eager(images: Path, tmp_path: Path) -> None:
    """The default fast path (compiled blocks, folded sub-pixel convs, fused Adam) trains the same model."""
    kwargs = {"iterations": 4, "log_every": 1, "lr": 2e-3}
    eager = train(_config(images, tmp_path / "eager", **kwargs))
    fast = train(_config(images, tmp_path / "fast", compile=True, **kwargs))
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "fast")
    assert abs(a[0] - b[0]) < 1e-5  # same weights, same batch: same forward
    assert np.allclose(a, b, rtol=2e-3)
    for (name, p), q in zip(eager.model.named_parameters(), fast.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=2e-4), name


def test_kill_and_resume_is_bit_exact(images: Path, tmp_path: Path) -> None:
    train(_config(images, tmp_path / "whole"))
    first = train(_config(images, tmp_path / "split", stop_after=3))
    assert first.iteration == 3 and first.interrupted
    train(_config(images, tmp_path / "split2"), resume=tmp_path / "split")
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split2")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_crash_during_save_leaves_no_partial_checkpoint(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(_config(images, tmp_path, iterations=2, save_every=1))
    before = checkpoints(tmp_path)
    good = torch.load(before[-1], weights_only=True)["iteration"]

    def crash(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        train(_config(images, tmp_path, iterations=4, save_every=1))
    monkeypatch.undo()
    assert checkpoints(tmp_path) == before
    assert torch.load(checkpoints(tmp_path)[-1], weights_only=True)["iteration"] == good


def test_divergence_stops_before_stepping_or_saving(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN gradient (here: a NaN loss from iteration 3 on) stops the run; the saved weights stay finite."""
    calls = {"n": 0}
    l1 = torch.nn.functional.l1_loss

    def poisoned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return l1(a, b) * (float("nan") if calls["n"] >= 3 else 1.0)

    monkeypatch.setattr("esrt.train.F.l1_loss", poisoned)
    with pytest.raises(DivergenceError, match=r"iteration 3: .*last checkpoint: iteration 2"):
        train(_config(images, tmp_path, iterations=6, save_every=2))
    assert [torch.load(c, weights_only=True)["iteration"] for c in checkpoints(tmp_path)] == [2]
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path).values())


def test_auto_precision_resolves_per_machine(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    assert TrainConfig().precision == "auto"
    monkeypatch.setattr(esrt.speed, "has_native_bf16", lambda: False)
    assert esrt.speed.training_precision("cpu") == "fp32" and esrt.speed.training_precision("cuda") == "bf16"
    result = train(_config(images, tmp_path, precision="auto", iterations=1))
    assert result.notes["precision"] == "fp32"
    assert json.loads((tmp_path / "config.json").read_text())["precision"] == "auto"
    monkeypatch.setattr(esrt.speed, "has_native_bf16", lambda: True)
    assert esrt.speed.training_precision("cpu") == "bf16"


def test_config_file_and_unknown_key(tmp_path: Path) -> None:
    good = tmp_path / "x4.toml"
    good.write_text('scale = 4\nlr_milestones = [5, 10]\ndata = ["a", "b"]\n')
    config = TrainConfig(**load_config_file(good))
    assert config.lr_milestones == (5, 10) and config.data == ("a", "b")
    bad = tmp_path / "bad.toml"
    bad.write_text("scael = 4\n")
    with pytest.raises(ValueError, match="scael"):
        load_config_file(bad)


def test_torchrun_two_processes(images: Path, tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from esrt.config import TrainConfig\nfrom esrt.train import train\n"
        f"c = TrainConfig(scale=2, data=({str(images)!r},), out_dir={str(tmp_path / 'ddp')!r}, patch=8, batch=4,\n"
        "    iterations=3, precision='fp32', workers=0, progress=False, threads=1)\n"
        "model = train(c).model\n"
        "w = torch.cat([p.detach().flatten() for p in model.parameters()])\n"
        "out = [torch.zeros_like(w) for _ in range(2)]\ndist.all_gather(out, w)\n"
        "assert torch.equal(out[0], out[1]), 'ranks differ'\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    cmd.append(str(script))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(checkpoints(tmp_path / "ddp")) == 1
