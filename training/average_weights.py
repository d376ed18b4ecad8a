"""Averages weight files of one scale element-wise into one file (a "model soup").

Meant for runs that began from the same weights and were fine-tuned differently, e.g. one decay with the shrunk
copies and the weights it began from: their mean can keep what each gained. The result carries the metadata of the
last file, with `iterations` the largest of the files' and `averaged` listing each file's iterations; score and
ship it with `training/ship.py S --weights OUT`.

    python training/average_weights.py runs/x2_mean.safetensors src/esrt/weights/esrt_x2.safetensors \
        runs/compare/x2/shrink7k/last.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from esrt.convert import CheckpointError, load_checkpoint, read_metadata, save_weights
from esrt.model import ESRT


def average(paths: list[Path]) -> ESRT:
    """The model whose tensors are the element-wise mean of the files' (computed in float64)."""
    models = [load_checkpoint(p) for p in paths]
    if any(m.scale != models[0].scale for m in models):
        raise SystemExit("error: the files are of different scales")
    states = [m.state_dict() for m in models]
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) for k, v in states[0].items()}
    models[0].load_state_dict(mean)
    return models[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out", type=Path, help="the averaged weights (.safetensors)")
    parser.add_argument("weights", type=Path, nargs="+", help="two or more weight files of one scale")
    args = parser.parse_args()
    if len(args.weights) < 2:
        raise SystemExit("error: give at least two weight files")
    try:  # load_checkpoint's checks: a missing, damaged or non-finite file is a one-line error
        model = average(args.weights)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None
    metas = [read_metadata(p) for p in args.weights]
    iterations = [int(m.get("iterations", 0)) for m in metas]
    meta = {k: v for k, v in metas[-1].items() if k not in ("format", "scale", "val_psnr")}
    meta |= {"iterations": max(iterations), "averaged": json.dumps(iterations)}
    save_weights(model, args.out, meta)
    print(f"wrote {args.out}: the mean of {len(args.weights)} files (iterations {iterations})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
