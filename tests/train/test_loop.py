"""Tests of esrt.train.loop: the loss falls, resume is bit-exact (EMA too), signals save, faults lose nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import esrt.runtime
from esrt.cli import main
from esrt.model import ESRT
from esrt.train import DivergenceError, TrainConfig, learning_rate, train
from esrt.train.checkpoint import CHECKPOINT, PREVIOUS

from ..conftest import x86_only
from .conftest import saved_weights, tiny_args, tiny_config


def _losses(out: Path) -> list[float]:
    return [float(r.split(",")[1]) for r in (out / "log.csv").read_text().splitlines()[1:]]


def _state(out: Path) -> dict[str, object]:
    return torch.load(out / CHECKPOINT, weights_only=True)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_schedule() -> None:
    c = TrainConfig(lr=2e-4, lr_milestones=(10, 20), warmup=0)
    assert [learning_rate(c, i) for i in (0, 9, 10, 19, 20)] == [2e-4, 2e-4, 1e-4, 1e-4, 5e-5]
    warm = c.replace(warmup=4)
    assert [learning_rate(warm, i) for i in (0, 3, 4)] == [5e-5, 2e-4, 2e-4]


def test_cosine_and_linear_decay_end_at_lr_final() -> None:
    c = TrainConfig(lr=2e-4, lr_milestones=(10,), iterations=30, decay="cosine", decay_start=20, lr_final=1e-6)
    assert learning_rate(c, 19) == 1e-4  # the step schedule before decay_start
    assert learning_rate(c, 20) == pytest.approx(1e-4)  # the decay starts from the step schedule's lr there
    assert learning_rate(c, 25) == pytest.approx((1e-4 + 1e-6) / 2)  # half-way down the cosine
    assert learning_rate(c, 30) == pytest.approx(1e-6)
    linear = c.replace(decay="linear")
    assert learning_rate(linear, 22) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.8)
    with pytest.raises(ValueError, match="decay must be step, cosine or linear"):
        c.replace(decay="exp")


def test_l2_loss_is_the_mean_squared_error(images: Path, tmp_path: Path) -> None:
    first = {}
    for loss in ("l1", "l2"):  # same seed: the same first batch through the same initial weights
        train(tiny_config(images, tmp_path / loss, iterations=1, log_every=1, loss=loss))
        first[loss] = _losses(tmp_path / loss)[0]
    assert first["l1"] ** 2 <= first["l2"] < first["l1"]  # Jensen's inequality; errors below 1
    with pytest.raises(ValueError, match="loss must be l1 or l2"):
        TrainConfig(loss="huber")


def test_loss_falls(images: Path, tmp_path: Path) -> None:
    train(tiny_config(images, tmp_path, iterations=30, lr=2e-3))
    losses = _losses(tmp_path)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    assert (tmp_path / "last.safetensors").is_file()


def test_cli_trains_two_iterations(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(tiny_args(images, tmp_path)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"iteration": 2, "best_psnr": None, "last_psnr": None, "interrupted": False, "notes": {}}
    assert _state(tmp_path)["iteration"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["batch"] == 1
    assert [r.split(",")[0] for r in (tmp_path / "log.csv").read_text().splitlines()] == ["iteration", "1", "2"]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_stop_and_resume_is_bit_exact(images: Path, tmp_path: Path, ema: float) -> None:
    train(tiny_config(images, tmp_path / "whole", ema=ema))
    first = train(tiny_config(images, tmp_path / "split", stop_after=3, ema=ema))
    assert first.iteration == 3 and first.interrupted
    train(tiny_config(images, tmp_path / "split2", ema=ema), resume=tmp_path / "split")
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "split2")
    assert _equal(a["model"], b["model"])  # type: ignore[arg-type]
    if ema:
        assert _equal(a["ema"], b["ema"])  # type: ignore[arg-type]
        assert not _equal(a["ema"], a["model"])  # type: ignore[arg-type]
    else:
        assert a["ema"] is None


@pytest.mark.slow
def test_compiled_training_follows_eager(images: Path, tmp_path: Path) -> None:
    """The default fast path (compiled blocks, folded sub-pixel convs, fused Adam) trains the same model."""
    kwargs = {"iterations": 4, "log_every": 1, "lr": 2e-3}
    eager = train(tiny_config(images, tmp_path / "eager", **kwargs))
    fast = train(tiny_config(images, tmp_path / "fast", compile=True, **kwargs))
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "fast")
    assert abs(a[0] - b[0]) < 1e-5  # same weights, same batch: same forward
    assert np.allclose(a, b, rtol=2e-3)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in ESRT(2).parameters()])  # the runs' initial weights
    a_step, b_step = (torch.cat([p.detach().flatten() for p in r.model.parameters()]) - start for r in (eager, fast))
    # measured 2.2e-4 relative, 2.5e-4 at most (Adam's step is about lr wherever a gradient is near 0, so a
    # rounding difference there moves a weight by up to lr); a wrong gradient in the twin: of order 1
    assert (a_step - b_step).norm() <= 2e-3 * a_step.norm()
    assert (a_step - b_step).abs().max() <= 1e-3


def test_divergence_stops_before_stepping_or_saving(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN gradient (here: a NaN loss from iteration 3 on) stops the run; the saved weights stay finite."""
    calls = {"n": 0}
    l1 = torch.nn.functional.l1_loss

    def poisoned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return l1(a, b) * (float("nan") if calls["n"] >= 3 else 1.0)

    monkeypatch.setattr("esrt.train.loop.F.l1_loss", poisoned)
    with pytest.raises(DivergenceError, match=r"iteration 3: .*last checkpoint: iteration 2"):
        train(tiny_config(images, tmp_path, iterations=6, save_every=2))
    assert _state(tmp_path)["iteration"] == 2 and not (tmp_path / PREVIOUS).exists()
    assert all(torch.isfinite(w).all() for w in saved_weights(tmp_path).values())


def test_auto_precision_resolves_per_machine(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(esrt.runtime, "has_native_bf16", lambda: False)
    result = train(tiny_config(images, tmp_path, precision="auto", iterations=1))
    assert result.notes["precision"] == "fp32"
    assert json.loads((tmp_path / "config.json").read_text())["precision"] == "auto"


@x86_only
def test_training_flushes_subnormals(images: Path, tmp_path: Path) -> None:
    train(tiny_config(images, tmp_path, iterations=1))
    assert (torch.tensor([torch.finfo(torch.float32).tiny]) * 0.5).item() == 0.0


@pytest.mark.slow
def test_torchrun_two_processes(images: Path, tmp_path: Path) -> None:
    """Two gloo ranks end with equal weights; --standalone picks a free port, so parallel jobs cannot collide."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from esrt.train import TrainConfig, train\n"
        f"c = TrainConfig(scale=2, data=({str(images)!r},), out_dir={str(tmp_path / 'ddp')!r}, patch=8, batch=4,\n"
        "    iterations=3, precision='fp32', workers=0, progress=False, threads=1)\n"
        "model = train(c).model\n"
        "w = torch.cat([p.detach().flatten() for p in model.parameters()])\n"
        "out = [torch.zeros_like(w) for _ in range(2)]\ndist.all_gather(out, w)\n"
        "assert torch.equal(out[0], out[1]), 'ranks differ'\n"
        "dist.barrier()\n"  # no rank closes its connections while the other still reads
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(logs), "--redirects", "3"]  # fmt: skip
    result = subprocess.run([*cmd, str(script)], capture_output=True, text=True, env=env, timeout=300)
    ranks = "".join(f"--- {f.relative_to(logs)}\n{f.read_text()[-1500:]}" for f in sorted(logs.rglob("*.log")))
    assert result.returncode == 0, ranks + result.stderr[-1000:]
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.pt")) == [CHECKPOINT]


def _esrt(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from esrt.cli import main; sys.exit(main())", *args]


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_and_exits_0(images: Path, tmp_path: Path) -> None:
    """What a job scheduler, `timeout` or a shell's Ctrl+C do: the signal reaches the data-loader worker too."""
    args = tiny_args(images, tmp_path, "--iterations", "100000", "--workers", "1", "--save-every", "100000")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(_esrt(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    log = tmp_path / "log.csv"
    while not (log.is_file() and len(log.read_text().splitlines()) > 3):  # a few iterations done
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["iteration"] >= 3
    assert _state(tmp_path)["iteration"] == summary["iteration"]
    assert "Traceback" not in err and "killed by signal" not in err


_KILLER = """
import os, signal, sys
import torch
import esrt.train.checkpoint as checkpoint
import esrt.train.loop as loop
from esrt.cli import main
from esrt.model import ESRT

save_number, phase = int(os.environ["KILL_SAVE"]), os.environ["KILL_PHASE"]
saves = {"n": 0}
real_save, real_replace, real_after_step = torch.save, os.replace, loop._Run.after_step

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def save(obj, f):
    saves["n"] += 1
    if saves["n"] == save_number and phase == "write":
        open(f, "wb").write(b"half a checkpoint")
        die()
    real_save(obj, f)

def replace(src, dst):
    if saves["n"] == save_number and phase == "install" and str(dst).endswith("checkpoint.pt"):
        die()  # the new checkpoint written, the old one already renamed to checkpoint.prev.pt
    real_replace(src, dst)

def after_step(self, it, loss, stopping):
    if saves["n"] == save_number - 1 and phase == "step" and it % 2 == 1:
        die()
    real_after_step(self, it, loss, stopping)

checkpoint.torch.save, checkpoint.os.replace, loop._Run.after_step = save, replace, after_step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_at_five_seeded_moments_loses_nothing(images: Path, tmp_path: Path) -> None:
    """Killed 5 times (mid-step, while writing a checkpoint, between keeping the previous one and installing the
    new one), resumed each time: the final weights are bit-identical to an uninterrupted run."""
    args = tiny_args(images, tmp_path / "killed", "--iterations", "12", "--save-every", "2", "--ema", "0.9")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert main(tiny_args(images, tmp_path / "whole", "--iterations", "12", "--save-every", "2", "--ema", "0.9")) == 0
    rng = random.Random(1)
    moments = [(rng.choice([1, 2]), rng.choice(["step", "write", "install"])) for _ in range(5)]
    assert {phase for _, phase in moments} == {"step", "write", "install"}
    for save, phase in moments:  # each run is killed before, inside or at the end of its save number `save`
        moment = {**env, "KILL_SAVE": str(save), "KILL_PHASE": phase}
        result = subprocess.run([sys.executable, "-c", _KILLER, *args], env=moment, capture_output=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, (save, phase, result.stderr[-2000:])
    assert subprocess.run(_esrt(*args), env=env, capture_output=True, timeout=300).returncode == 0
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "killed")
    assert b["iteration"] == 12
    assert _equal(a["model"], b["model"]) and _equal(a["ema"], b["ema"])  # type: ignore[arg-type]
    assert not [p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith(".")]  # no temporaries
