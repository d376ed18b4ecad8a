"""Plots validation Set5 Y-PSNR against training hours for our runs (training/x{2,3,4}/log.csv).

Hours are the training processes' own time: each log row covers `iterations since the previous row` at the
row's measured it/s, so pauses between training stages do not count. Needs matplotlib (`pip install 'esrt[docs]'`).

    python docs/training_plot.py            # writes docs/training_psnr.png
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

BICUBIC_SET5 = {2: 33.66, 3: 30.39, 4: 28.42}  # published, reproduced by `esrt eval --method bicubic`
PAPER_SET5 = {2: 38.03, 3: 34.42, 4: 32.19}  # the ESRT paper's table (DIV2K, 500k GPU iterations)


def psnr_by_hours(log: Path) -> tuple[list[float], list[float]]:
    """(hours, val_psnr) at each new validation result in one run's log.csv."""
    hours, psnrs = [], []
    total, previous = 0.0, None
    with log.open() as f:
        for row in csv.DictReader(f):
            it, speed = int(row["iteration"]), float(row["it_per_s"])
            if previous is not None and it > previous and speed > 0:
                total += (it - previous) / speed / 3600
            previous = it
            psnr = float(row["val_psnr"])  # the last validation's value, repeated until the next one
            if not math.isnan(psnr) and (not psnrs or psnr != psnrs[-1]):
                hours.append(total)
                psnrs.append(psnr)
    return hours, psnrs


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", default="training", help="folder with x2/, x3/, x4/ run folders")
    parser.add_argument("--out", default="docs/training_psnr.png")
    args = parser.parse_args()

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for scale, color in ((2, "tab:blue"), (3, "tab:green"), (4, "tab:red")):
        log = Path(args.runs) / f"x{scale}" / "log.csv"
        if not log.is_file():
            continue
        hours, psnrs = psnr_by_hours(log)
        if not hours:
            continue
        ax.plot(hours, [p - BICUBIC_SET5[scale] for p in psnrs], "o-", color=color, ms=3, label=f"x{scale}")
        ax.axhline(PAPER_SET5[scale] - BICUBIC_SET5[scale], color=color, ls=":", lw=1)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("training hours (2 CPU cores, bf16)")
    ax.set_ylabel("Set5 Y-PSNR gain over bicubic (dB)")
    ax.set_title("ESRT, our runs: validation (EMA weights) vs training time; dotted = the paper")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
