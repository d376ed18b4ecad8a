"""Tests of esrt.train.log: rows past a resumed checkpoint are dropped, the header stays."""

from __future__ import annotations

from pathlib import Path

from esrt.train.log import COLUMNS, Logger, truncate_log


def test_truncate_log_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(",".join(COLUMNS) + "\n" + "".join(f"{i},0.1,1e-3,nan,1.0,0\n" for i in (2, 4, 6, 8)))
    assert truncate_log(path, 4) == 2
    assert [r.split(",")[0] for r in path.read_text().splitlines()] == ["iteration", "2", "4"]
    assert truncate_log(path, 4) == 0
    assert truncate_log(tmp_path / "missing.csv", 4) == 0


def test_logger_continues_after_the_resumed_iteration(tmp_path: Path) -> None:
    log = Logger(tmp_path, 0, enabled=True)
    for it in (1, 2, 3):
        log.row(it, 0.5, 1e-3, float("nan"), 1.0)
    log.close()
    log = Logger(tmp_path, 2, enabled=True)  # resumed from iteration 2: row 3 is written again
    log.row(3, 0.4, 1e-3, 30.0, 1.0)
    log.close()
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["iteration", "1", "2", "3"]
    assert rows[-1].split(",")[1] == "0.400000"
