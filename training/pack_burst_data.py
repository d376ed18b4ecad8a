"""Packs the training and validation images as lossless WebP for a GPU burst (training/gpu_burst.sh).

Pixels are unchanged (lossless), the files about 0.68x the PNGs' size, so the sets fit beside the repository in
what a remote machine accepts. Reads ESRT_DATA (or --data-root); writes DEST/{T91,BSD200,BSDS500_test200}/HR and
DEST/Set5/HR, and prints the total size.

    python training/pack_burst_data.py training/burst_data
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from esrt.images import find_images

SETS = ("T91/HR", "BSD200/HR", "BSDS500_test200/HR", "Set5/HR")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("ESRT_DATA", "datasets")))
    args = parser.parse_args()
    total = 0
    for name in SETS:
        (args.dest / name).mkdir(parents=True, exist_ok=True)
        for src in find_images([args.data_root / name]):
            target = args.dest / name / (src.stem + ".webp")
            if not target.exists():
                with Image.open(src) as im:
                    rgb = im.convert("RGB")
                rgb.save(target, format="WEBP", lossless=True, quality=100, method=4)
                with Image.open(target) as back:  # lossless means lossless: check every file
                    if not np.array_equal(np.asarray(back.convert("RGB")), np.asarray(rgb)):
                        raise SystemExit(f"{src}: WebP round trip changed pixels")
            total += target.stat().st_size
    print(json.dumps({"dest": str(args.dest), "bytes": total, "mib": round(total / 2**20, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
