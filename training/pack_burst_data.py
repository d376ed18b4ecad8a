"""Packs training images for a GPU burst (training/gpu_burst.sh) into a size budget, losslessly.

What a remote machine accepts is small (the repository's tracked files count too), and the training images (the
491 and Photos31) do not fit even as lossless WebP (258 of the 522 fill 48 MiB), so the burst trains on a seeded
random subset that fits --budget-mib:
each image is stored as lossless WebP or its original PNG bytes, whichever is smaller (pixels unchanged, checked).
Set5 (validation) is always included. Reads --data-root (default $ESRT_DATA, else ./datasets); writes
DEST/{T91,BSD200,BSDS500_test200,Set5}/HR and DEST/Photos31 and prints the count and size as JSON.

    python training/pack_burst_data.py training/burst_data --budget-mib 12
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from esrt.images import find_images

TRAINING = ("T91/HR", "BSD200/HR", "BSDS500_test200/HR", "Photos31")
VALIDATION = "Set5/HR"


def smallest_lossless(src: Path) -> tuple[bytes, str]:
    """(bytes, suffix) of src as lossless WebP or as it is, whichever is smaller; WebP is checked pixel for pixel."""
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="WEBP", lossless=True, quality=100, method=4)
    original = src.read_bytes()
    if buffer.tell() >= len(original):
        return original, src.suffix
    with Image.open(io.BytesIO(buffer.getvalue())) as back:
        if not np.array_equal(np.asarray(back.convert("RGB")), np.asarray(rgb)):
            raise SystemExit(f"{src}: WebP round trip changed pixels")
    return buffer.getvalue(), ".webp"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("ESRT_DATA", "datasets")))
    parser.add_argument("--budget-mib", type=float, default=12.0, help="total size of the packed images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dest.exists():
        shutil.rmtree(args.dest)
    candidates = [(name, path) for name in TRAINING for path in find_images([args.data_root / name])]
    random.Random(args.seed).shuffle(candidates)
    budget, used, count = args.budget_mib * 2**20, 0, 0
    for name, path in [(VALIDATION, p) for p in find_images([args.data_root / VALIDATION])] + candidates:
        if used > 0.98 * budget:
            break
        data, suffix = smallest_lossless(path)
        if name != VALIDATION and used + len(data) > budget:
            continue
        target = args.dest / name / (path.stem + suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        used, count = used + len(data), count + (name != VALIDATION)
    for name in TRAINING:  # the burst names all three folders
        (args.dest / name).mkdir(parents=True, exist_ok=True)
    print(json.dumps({"dest": str(args.dest), "training_images": count, "of": len(candidates), "mib": used / 2**20}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
