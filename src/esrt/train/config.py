"""Training configuration: one frozen dataclass whose defaults are the paper's recipe; no torch import here.

Follows the training recipe of the paper and of the reference code luissen/ESRT (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

_AT_LEAST = {  # the smallest value each integer setting may take
    "patch": 2,
    "batch": 1,
    "iterations": 1,
    "warmup": 0,
    "decay_start": 0,
    "workers": 0,
    "threads": 0,
    "log_every": 1,
    "val_every": 1,
    "save_every": 1,
    "stop_after": 0,
}
_CHOICES = {  # the values each string setting may take
    "precision": ("fp32", "bf16", "auto"),
    "decay": ("step", "cosine", "linear"),
    "sampling": ("image", "area"),
    "loss": ("l1", "l2"),
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every training setting; the defaults are the paper's recipe (batch 16, LR patch 48, L1, Adam 2e-4)."""

    scale: int = field(default=4, metadata={"help": "upscaling factor: 2, 3 or 4"})
    data: tuple[str, ...] = field(default=(), metadata={"help": "folders of HR training images (PNG/JPEG)"})
    val_dir: str = field(default="", metadata={"help": "validation set folder with HR/ (and LR_bicubic/), '' = none"})
    out_dir: str = field(default="runs/esrt", metadata={"help": "checkpoints, logs and exported weights go here"})
    cache_dir: str = field(default="", metadata={"help": "where LR images are cached ('' = <out_dir>/../cache)"})
    patch: int = field(default=48, metadata={"help": "LR patch size (HR patch = patch * scale)"})
    batch: int = field(default=16, metadata={"help": "global batch size (split over processes)"})
    iterations: int = field(default=500_000, metadata={"help": "total iterations"})
    lr: float = field(default=2e-4, metadata={"help": "initial learning rate"})
    lr_milestones: tuple[int, ...] = field(
        default=(100_000, 200_000, 300_000, 400_000), metadata={"help": "iterations where the lr is multiplied"}
    )
    lr_gamma: float = field(default=0.5, metadata={"help": "lr factor at each milestone"})
    decay: str = field(default="step", metadata={"help": "step, or cosine / linear from decay_start to lr_final"})
    decay_start: int = field(default=0, metadata={"help": "iteration where a cosine or linear decay begins"})
    lr_final: float = field(default=0.0, metadata={"help": "lr at the last iteration of a cosine or linear decay"})
    hr_scales: tuple[float, ...] = field(
        default=(1.0,),
        metadata={"help": "each HR image is also trained on resized by these factors, e.g. 1 0.9 0.8 0.7 0.6"},
    )
    sampling: str = field(default="image", metadata={"help": "image (all drawn equally) or area (by their size)"})
    loss: str = field(default="l1", metadata={"help": "pixel loss: l1 (the paper's) or l2 (mean squared error)"})
    warmup: int = field(default=0, metadata={"help": "linear lr warm-up iterations"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas"})
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    precision: str = field(
        default="auto",
        metadata={"help": "fp32, bf16 (autocast, fp32 master weights) or auto (bf16 where the CPU has it natively)"},
    )
    compile: bool = field(
        default=True, metadata={"help": "torch.compile the HPBs and the ET (esrt.train.twin; 1-2 min once)"}
    )
    fused_adam: bool = field(default=True, metadata={"help": "fused Adam step (same update, one kernel)"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format (faster convs on CPU)"})
    ema: float = field(default=0.0, metadata={"help": "EMA decay of the weights (0 = off), e.g. 0.999"})
    init_from: str = field(default="", metadata={"help": "warm start: weights of another scale (upsamplers skipped)"})
    seed: int = field(default=0, metadata={"help": "random seed (data order, crops, init)"})
    workers: int = field(default=1, metadata={"help": "DataLoader worker processes"})
    threads: int = field(default=0, metadata={"help": "torch threads per process (0 = cores / processes)"})
    log_every: int = field(default=50, metadata={"help": "iterations between CSV/TensorBoard log rows"})
    val_every: int = field(default=1000, metadata={"help": "iterations between validations"})
    save_every: int = field(default=500, metadata={"help": "iterations between checkpoints"})
    save_minutes: float = field(default=5.0, metadata={"help": "minutes between checkpoints"})
    stop_after: int = field(default=0, metadata={"help": "stop (with a checkpoint) after this many iterations"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                allowed = f"{', '.join(choices[:-1])} or {choices[-1]}"
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        for name, low in _AT_LEAST.items():
            value = getattr(self, name)
            if not value >= low:  # also catches NaN
                raise ValueError(f"{name} must be at least {low}, got {value}")
        for name in ("lr", "lr_gamma", "save_minutes"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not 0 <= self.lr_final < math.inf:
            raise ValueError(f"lr_final must be a number >= 0, got {self.lr_final}")
        if not self.hr_scales or not all(0 < f <= 1 for f in self.hr_scales):
            raise ValueError(f"hr_scales must be one or more factors in (0, 1], got {list(self.hr_scales)}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0 = off), got {self.ema}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, value: Any) -> Any:
    """Turns lists from TOML/YAML/JSON into the tuples the frozen config uses."""
    kind = {f.name: f.type for f in fields(TrainConfig)}[name]
    if isinstance(value, list) and "tuple" in str(kind):
        return tuple(value)
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a TOML, YAML or JSON file of TrainConfig fields; unknown keys are an error naming them."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib  # pyright: ignore[reportMissingImports]
        raw = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text) or {}
    else:
        raw = json.loads(text)
    if "keep" in raw:
        raise ValueError(f"{path}: 'keep' is no longer a setting (checkpoint.pt and checkpoint.prev.pt are kept)")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting {unknown[0]!r}")
    return {k: _coerce(k, v) for k, v in raw.items()}
