"""training/average_weights.py: the element-wise mean of weight files, with its metadata record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from esrt.convert import load_checkpoint, read_metadata, save_weights
from esrt.model import ESRT

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "average_weights.py"


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_mean_of_two_files_and_its_record(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a, b = ESRT(2), ESRT(2)
    save_weights(a, tmp_path / "a.safetensors", {"iterations": 100, "data": ["T91"]})
    save_weights(b, tmp_path / "b.safetensors", {"iterations": 250, "data": ["T91", "Photos31"]})
    result = run(tmp_path / "m.safetensors", tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert result.returncode == 0, result.stderr
    mean = load_checkpoint(tmp_path / "m.safetensors").state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    for k, v in mean.items():
        torch.testing.assert_close(v, (sa[k].double() + sb[k].double()).div(2).float(), rtol=0, atol=1e-7)
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta["iterations"] == "250" and meta["averaged"] == "[100, 250]" and meta["scale"] == "2"
    assert meta["data"] == '["T91", "Photos31"]'


def test_other_scales_or_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    save_weights(ESRT(2), tmp_path / "x2.safetensors", {"iterations": 1})
    save_weights(ESRT(3), tmp_path / "x3.safetensors", {"iterations": 1})
    for files in (["x2.safetensors", "x3.safetensors"], ["x2.safetensors", "none.safetensors"], ["x2.safetensors"]):
        result = run(tmp_path / "m.safetensors", *(tmp_path / f for f in files))
        assert result.returncode == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert not (tmp_path / "m.safetensors").exists()
