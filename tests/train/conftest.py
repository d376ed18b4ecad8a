"""Fixtures of the training tests: a folder of small smooth images and a tiny, fast training configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from esrt.train import TrainConfig


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small smooth images (learnable, unlike noise) and one too small for a patch."""
    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:44] / 8.0
    for i in range(3):
        phase = rng.random(3) * 6
        img = np.stack([np.sin(xx * (c + 1) * 0.7 + yy + phase[c]) for c in range(3)], axis=-1)
        Image.fromarray(((img + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(folder / "tiny.png")
    return folder


def tiny_config(images: Path, out: Path, **changes: object) -> TrainConfig:
    """x2, LR patch 8, batch 4, 6 iterations in fp32 without compilation: seconds on one thread."""
    base = TrainConfig(
        scale=2, data=(str(images),), out_dir=str(out), patch=8, batch=4, iterations=6, precision="fp32",
        workers=0, progress=False, save_every=1000, log_every=2, threads=1, lr=1e-3, compile=False,
    )  # fmt: skip
    return base.replace(**changes)


def tiny_args(images: Path, out: Path, *more: str) -> list[str]:
    """The same tiny run as `esrt train` arguments (cache next to out)."""
    return [
        "train", "--scale", "2", "--data", str(images), "--out-dir", str(out), "--patch", "8", "--batch", "1",
        "--iterations", "2", "--precision", "fp32", "--workers", "0", "--no-progress", "--threads", "1",
        "--no-compile", "--log-every", "1", *more,
    ]  # fmt: skip


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    """The model weights of out's newest checkpoint."""
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]
