"""Tests of esrt.train.checkpoint: atomic replacement, fallback to the previous file, refusals, warm start."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esrt.cli import main
from esrt.convert import save_weights
from esrt.model import ESRT
from esrt.train import checkpoints, train, warm_start
from esrt.train.checkpoint import CHECKPOINT, PREVIOUS, UPSAMPLERS

from .conftest import saved_weights, tiny_args, tiny_config


def _iteration(path: Path) -> int:
    return torch.load(path, weights_only=True)["iteration"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_one_file_replaced_and_the_previous_kept(images: Path, tmp_path: Path) -> None:
    train(tiny_config(images, tmp_path, iterations=3, save_every=1))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [PREVIOUS, CHECKPOINT]
    assert (_iteration(tmp_path / CHECKPOINT), _iteration(tmp_path / PREVIOUS)) == (3, 2)
    assert checkpoints(tmp_path) == [tmp_path / CHECKPOINT, tmp_path / PREVIOUS]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_crash_during_save_leaves_no_partial_checkpoint(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(tiny_config(images, tmp_path, iterations=2, save_every=1))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.pt")}

    def crash(obj: object, f: object) -> None:
        Path(str(f)).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_config(images, tmp_path, iterations=4, save_every=1))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.pt")} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_damaged_newest_falls_back_to_the_previous(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Truncated checkpoint.pt: one warning line, resume from checkpoint.prev.pt, log rows not repeated, and the
    final weights bit-identical to an uninterrupted run."""
    train(tiny_config(images, tmp_path / "whole", log_every=1))
    out = tmp_path / "split"
    train(tiny_config(images, out, iterations=4, save_every=2, log_every=1))
    newest = out / CHECKPOINT
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    result = train(tiny_config(images, out, log_every=1))
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"esrt train: warning: skipping damaged {newest}")
    assert result.notes["resumed_from"] == str(out / PREVIOUS)
    a, b = saved_weights(tmp_path / "whole"), saved_weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()[1:]] == [str(i) for i in range(1, 7)]


def test_every_checkpoint_damaged_is_an_error_and_config_json_is_kept(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tiny_args(images, tmp_path, "--save-every", "1")) == 0
    config_json = (tmp_path / "config.json").read_text()
    for name in (CHECKPOINT, PREVIOUS):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not a zip")
    capsys.readouterr()
    assert main(tiny_args(images, tmp_path, "--iterations", "4", "--lr", "0.5")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "every checkpoint is damaged" in err[-1]  # two warnings, one error
    assert (tmp_path / "config.json").read_text() == config_json


def test_planted_pickle_is_refused_without_running(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (tmp_path / CHECKPOINT).write_bytes(pickle.dumps(Payload()))
    capsys.readouterr()
    assert main(tiny_args(images, tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused: not a plain checkpoint (loading it would run code)" in err[0]
    assert not marker.exists() and not (tmp_path / "config.json").exists()


def test_checkpoint_of_another_scale_is_a_one_line_error(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tiny_args(images, tmp_path)) == 0
    capsys.readouterr()
    assert main(tiny_args(images, tmp_path, "--scale", "3")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"esrt train: error: {tmp_path / CHECKPOINT} is a x2 checkpoint, this run is x3: use another --out-dir"
    assert err == [expected]


def test_legacy_checkpoints_resume_and_stale_temporaries_go(images: Path, tmp_path: Path) -> None:
    train(tiny_config(images, tmp_path / "whole"))
    train(tiny_config(images, tmp_path, iterations=3))
    legacy = tmp_path / "checkpoint_000000003.pt"  # the older versions' name
    (tmp_path / CHECKPOINT).rename(legacy)
    (tmp_path / "checkpoint_000000001.pt").write_bytes(b"older")
    stale = [tmp_path / f".checkpoint_000000004.pt.tmp{_dead_pid()}", tmp_path / f".checkpoint.pt.{_dead_pid()}.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    result = train(tiny_config(images, tmp_path))
    assert result.notes["resumed_from"] == str(legacy)
    assert not any(p.exists() for p in stale)
    a, b = saved_weights(tmp_path / "whole"), saved_weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("scale", [3, 4])
def test_warm_start_copies_all_but_the_upsamplers(tmp_path: Path, scale: int) -> None:
    torch.manual_seed(1)
    source = ESRT(2)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    save_weights(source, tmp_path / "x2.safetensors")
    torch.manual_seed(0)
    fresh = ESRT(scale)
    torch.manual_seed(0)
    model = ESRT(scale)
    skipped = warm_start(model, tmp_path / "x2.safetensors")
    upsamplers = [k for k in model.state_dict() if k.startswith(UPSAMPLERS)]
    assert skipped == upsamplers and upsamplers
    ours, theirs, init = model.state_dict(), source.state_dict(), fresh.state_dict()
    for k in ours:
        assert torch.equal(ours[k], init[k] if k in upsamplers else theirs[k]), k


def test_summary_is_strict_json(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(tiny_args(images, tmp_path)) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}"))
    assert summary["best_psnr"] is None and summary["iteration"] == 2
