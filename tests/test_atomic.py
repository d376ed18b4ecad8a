import os
import subprocess
import sys
from pathlib import Path

import pytest

from esrt.atomic import atomic_path, atomic_write_bytes, remove_stale_temporaries, temporary_path


def test_write_replaces_target_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_failure_keeps_old_target_and_removes_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temporary_path(target, int(dead.stdout))
    stale.write_bytes(b"x")
    live = temporary_path(target, os.getppid())
    live.write_bytes(b"y")
    other = tmp_path / ".b.bin.123.tmp"
    other.write_bytes(b"z")
    assert remove_stale_temporaries(target) == [stale]
    assert live.exists() and other.exists() and not stale.exists()
