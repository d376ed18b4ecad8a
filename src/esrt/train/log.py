"""The training log: log.csv (always) and TensorBoard (when installed) of loss, lr, validation PSNR and speed.

A resumed run continues the CSV from the checkpoint's iteration: rows written after that checkpoint by the
interrupted run are dropped, so no iteration appears twice.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from esrt.atomic import atomic_write_bytes

COLUMNS = ["iteration", "loss", "lr", "val_psnr", "it_per_s", "time"]


def truncate_log(path: Path, iteration: int) -> int:
    """Drops the rows of the CSV at path whose iteration is past iteration (atomically); returns how many."""
    if not path.is_file():
        return 0
    rows = list(csv.reader(path.read_text().splitlines()))
    kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= iteration]
    dropped = len(rows) - 1 - len(kept)
    if dropped > 0:
        text = io.StringIO()
        csv.writer(text).writerows([rows[0], *kept])
        atomic_write_bytes(path, text.getvalue().encode())
    return dropped


class Logger:
    """Appends one CSV row per log interval and writes the same scalars to TensorBoard; disabled on ranks > 0."""

    def __init__(self, out_dir: Path, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.writer: Any = None
        if not enabled:
            return
        path = out_dir / "log.csv"
        truncate_log(path, start)
        new = not path.is_file() or path.stat().st_size == 0
        self.file = path.open("a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start + 1 if start else None)
        except ImportError:
            self.writer = None

    def row(self, it: int, loss: float, lr: float, psnr: float, speed: float) -> None:
        """One CSV row (and TensorBoard scalars) for iteration it; psnr is NaN before the first validation."""
        if not self.enabled:
            return
        self.csv.writerow([it, f"{loss:.6f}", f"{lr:.3e}", f"{psnr:.4f}", f"{speed:.4f}", int(time.time())])
        self.file.flush()
        self.scalar("train/loss", loss, it)
        self.scalar("train/lr", lr, it)
        self.scalar("train/it_per_s", speed, it)

    def scalar(self, tag: str, value: float, it: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_scalar(tag, value, it)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
