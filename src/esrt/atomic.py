"""Atomic file writes: a target is either untouched or complete, never half-written.

Every writer in the package (weights, checkpoints, images, ONNX files) writes to a temporary file beside the
target, flushes it to disk and renames it over the target. A temporary left behind by a killed process is
named after the target and that process's id (`.NAME.PID.tmp`), so the next write of the same target removes
it once that process is gone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_path(path: Path, pid: int | None = None) -> Path:
    """The temporary file that process pid (default: this one) writes before it becomes path."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Deletes the temporaries of path left by processes that no longer run; returns what it deleted."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.tmp")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on a clean exit it is flushed and renamed to path, else deleted.

    with atomic_path("out.png") as tmp:
        image.save(tmp, format="PNG")
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        if os.name == "posix":  # make the rename itself durable
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes data to path atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
