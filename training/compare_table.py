"""Prints the A/B arms of training/compare.sh as a Markdown table: settings changed, iterations, training
minutes (at the log's median speed, so pauses do not count), Set5 / Set14 / BSD100 PSNR.

    python training/compare_table.py runs/compare/x4
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from esrt.train.config import TrainConfig


def changed(arm: Path, base: dict[str, object]) -> str:
    """The arm's settings that differ from the run's own (the defaults filling what an older run lacks)."""
    config = json.loads((arm / "config.json").read_text())
    skip = {"out_dir", "progress", "iterations"}
    differ = {k: v for k, v in config.items() if k not in skip and base.get(k) != v}
    if "data" in differ:
        differ["data"] = "+".join(Path(d).parts[1] if len(Path(d).parts) > 1 else d for d in config["data"])
    return ", ".join(f"{k}={v}" for k, v in differ.items()) or "-"


def progress(arm: Path) -> tuple[int, int, float]:
    """First and last logged iteration, and the minutes the iterations take at the median logged speed (so
    that a pause for a benchmark does not count)."""
    with (arm / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    first, last = int(rows[0]["iteration"]), int(rows[-1]["iteration"])
    speed = statistics.median(float(r["it_per_s"]) for r in rows[1:] or rows)
    return first, last, (last - first) / speed / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path, help="runs/compare/<run>")
    args = parser.parse_args()
    base = TrainConfig().to_dict() | json.loads((Path("training") / args.folder.name / "config.json").read_text())
    print("| arm | settings changed | iterations | minutes | Set5 | Set14 | BSD100 |")
    print("|---|---|---|---|---|---|---|")
    for arm in sorted(p for p in args.folder.iterdir() if (p / "scores.json").is_file()):
        scores = json.loads((arm / "scores.json").read_text())
        first, last, minutes = progress(arm)
        psnr = " | ".join(f"{scores[s]['psnr']:.4f}" for s in ("Set5", "Set14", "BSD100"))
        print(f"| {arm.name} | {changed(arm, base)} | {first}-{last} | {minutes:.1f} | {psnr} |")


if __name__ == "__main__":
    main()
