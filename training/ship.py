"""Ships a run's weights into the package: src/esrt/weights/esrt_x{S}.safetensors.

Scores the candidate (default training/x{S}/last.safetensors, EMA weights) on Set5 with `esrt eval`'s protocol
(whole image, fp32) and writes it with a metadata record (scale, iterations, data, date, set5_psnr, set5_ssim;
averaged, for a mean of files) only if it beats what is shipped now, unless --force.

    python training/ship.py 4
    python training/ship.py 2 --weights training/x2/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from esrt.convert import load_checkpoint, read_metadata, save_weights
from esrt.evaluate import evaluate
from esrt.pretrained import WEIGHTS_DIR


def set5(weights: Path, scale: int) -> tuple[float, float]:
    (score,) = evaluate(["Set5"], scale, weights=weights, progress=False)
    return round(score.psnr, 4), round(score.ssim, 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scale", type=int, choices=(2, 3, 4))
    parser.add_argument("--weights", type=Path, default=None, help="default training/x{S}/last.safetensors")
    parser.add_argument("--force", action="store_true", help="ship even if it does not beat the shipped weights")
    args = parser.parse_args()
    source = args.weights or Path("training") / f"x{args.scale}" / "last.safetensors"
    target = WEIGHTS_DIR / f"esrt_x{args.scale}.safetensors"

    psnr, ssim = set5(source, args.scale)
    current = set5(target, args.scale)[0] if target.is_file() else float("-inf")
    print(json.dumps({"candidate": str(source), "set5_psnr": psnr, "set5_ssim": ssim, "shipped_set5_psnr": current}))
    if psnr <= current and not args.force:
        print(f"not shipped: {psnr} dB does not beat the shipped {current} dB", file=sys.stderr)
        return 1
    trained = read_metadata(source)
    meta = {
        "iterations": trained.get("iterations", ""),
        "data": json.loads(trained.get("data", "[]")),
        "patch": trained.get("patch", ""),
        "batch": trained.get("batch", ""),
        "precision": trained.get("precision", ""),
        "date": time.strftime("%Y-%m-%d"),
        "set5_psnr": f"{psnr:.4f}",  # four decimals always (37.4530, not 37.453): the README rounds it to two
        "set5_ssim": f"{ssim:.4f}",
    }
    if "averaged" in trained:  # a mean of weight files (training/average_weights.py): their iterations
        meta["averaged"] = trained["averaged"]
    save_weights(load_checkpoint(source), target, meta)
    print(f"shipped {target} ({trained.get('iterations', '?')} iterations, Set5 {psnr} dB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
