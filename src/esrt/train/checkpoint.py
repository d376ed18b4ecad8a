"""Training checkpoints: one resumable file per run folder, replaced atomically, the previous one kept as a fallback.

`checkpoint.pt` is the newest, `checkpoint.prev.pt` the one before; both load with torch.load(weights_only=True),
so a planted pickle never runs. Folders written by older versions (`checkpoint_*.pt`) resume too.
"""

from __future__ import annotations

import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from esrt.atomic import _alive, atomic_path
from esrt.convert import CheckpointError, load_checkpoint, save_weights
from esrt.model import ESRT
from esrt.train.config import TrainConfig

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
LEGACY_GLOB = "checkpoint_*.pt"  # one file per save, the zero-padded iteration in the name
_LEGACY_TEMPORARY = re.compile(r"\.checkpoint_\d+\.pt\.tmp(\d+)")
_REQUIRED = ("iteration", "model", "optimizer", "rng")
UPSAMPLERS = ("tail.0.", "skip.0.")  # the only scale-dependent weights


def checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoints in folder to resume from, in the order to try them: newest, previous, then legacy files
    newest first."""
    folder = Path(folder)
    found = [folder / name for name in (CHECKPOINT, PREVIOUS) if (folder / name).is_file()]
    return found + sorted(folder.glob(LEGACY_GLOB), reverse=True)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Deletes the `.checkpoint_*.pt.tmpPID` files of older versions left by processes that no longer run (the
    current temporaries are removed by esrt.atomic on the next save)."""
    removed = []
    for candidate in folder.glob(".checkpoint_*.pt.tmp*"):
        match = _LEGACY_TEMPORARY.fullmatch(candidate.name)
        if match and not _alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain lists, so that checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), py_gauss],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores what rng_state() returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))


def save_checkpoint(folder: Path, state: Mapping[str, Any]) -> Path:
    """Writes state as folder/checkpoint.pt atomically; the file it replaces becomes checkpoint.prev.pt.

    Killed at any moment, the folder holds an intact newest or previous checkpoint (or both).
    """
    path = folder / CHECKPOINT
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
        if path.exists():
            os.replace(path, folder / PREVIOUS)
    return path


def _read(path: Path, device: torch.device) -> dict[str, Any]:
    """The checkpoint at path; CheckpointError when it would run code; OSError/RuntimeError/... when damaged."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        if "Unsupported global" in str(exc) or "Weights only load failed" in str(exc):
            raise CheckpointError(f"{path}: refused: not a plain checkpoint (loading it would run code)") from None
        raise
    if not isinstance(state, dict) or not all(key in state for key in _REQUIRED):
        raise ValueError("not a training checkpoint")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:160]


def load_resumable(folder: Path, scale: int, device: torch.device) -> tuple[dict[str, Any], Path] | None:
    """(state, path) of the newest intact checkpoint in folder, None when it has none.

    A damaged candidate is skipped with one warning line on stderr; a pickle that would run code, or a
    checkpoint of another scale, is an error (CheckpointError), as is a folder whose every candidate is damaged.
    """
    candidates = checkpoints(folder)
    for path in candidates:
        try:
            state = _read(path, device)
        except CheckpointError:
            raise
        except Exception as exc:  # truncated, corrupted or unreadable: fall back to the one before
            print(f"esrt train: warning: skipping damaged {path} ({_first_line(exc)})", file=sys.stderr)
            continue
        found = state.get("config", {}).get("scale", scale)
        if found != scale:
            raise CheckpointError(f"{path} is a x{found} checkpoint, this run is x{scale}: use another --out-dir")
        return state, path
    if candidates:
        raise CheckpointError(f"{folder}: every checkpoint is damaged ({', '.join(p.name for p in candidates)})")
    return None


def make_state(
    config: TrainConfig,
    iteration: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    best: float,
) -> dict[str, Any]:
    """What a checkpoint holds: weights, optimizer, EMA weights, every RNG, the best validation PSNR, config."""
    return {
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_state(),
        "best_psnr": best,
        "config": config.to_dict(),
    }


def warm_start(model: ESRT, path: str | Path) -> list[str]:
    """Copies every weight of another checkpoint (weights file or reference .pth) into model, except the
    upsamplers (scale-dependent) and any whose name or shape differs.

    Returns the names left at their initial values.
    """
    source = load_checkpoint(path).state_dict()
    own = model.state_dict()
    skipped = [k for k in own if k.startswith(UPSAMPLERS) or k not in source or source[k].shape != own[k].shape]
    model.load_state_dict({k: (own[k] if k in skipped else source[k]) for k in own})
    return skipped


def export_weights(model: nn.Module, path: Path, config: TrainConfig, iteration: int, psnr: float) -> None:
    """Saves model's weights (safetensors) with what they were trained on and their validation PSNR."""
    assert isinstance(model, ESRT)
    meta = {
        "iterations": iteration,
        "data": [Path(d).parent.name if Path(d).name == "HR" else Path(d).name for d in config.data],
        "date": time.strftime("%Y-%m-%d"),
        "val_psnr": round(psnr, 4) if math.isfinite(psnr) else None,
        "val_set": Path(config.val_dir).name if config.val_dir else "",
        "patch": config.patch,
        "batch": config.batch,
        "precision": config.precision,
    }
    save_weights(model, path, meta)
