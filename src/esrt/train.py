"""The training loop: L1 + Adam on random patches, atomic checkpoints, exact resume, DDP under torchrun.

Follows the paper's recipe (ESRT_SPEC.md, "Training recipe"); defaults live in esrt.config.TrainConfig.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from esrt.config import TrainConfig
from esrt.convert import load_checkpoint, save_weights
from esrt.data import PatchDataset, StepSampler, load_pairs, load_rgb, modcrop
from esrt.model import ESRT
from esrt.speed import autocast, prepare_for_training, training_precision

CHECKPOINT_GLOB = "checkpoint_*.pt"


class DivergenceError(ValueError):
    """A step produced a non-finite loss or gradient; raised before that step changes the weights."""


# ----------------------------------------------------------------------------------------------- helpers


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoints in out_dir, oldest first (names carry the zero-padded iteration)."""
    return sorted(out_dir.glob(CHECKPOINT_GLOB))


def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain lists, so that checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), py_gauss],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))


def _finite(loss: torch.Tensor, params: list[nn.Parameter]) -> bool:
    """Whether the loss and every gradient are finite (a NaN or inf entry makes its gradient's norm non-finite)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return bool(torch.isfinite(torch.stack([loss.detach().float(), *norms])).all())


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """lr at iteration: linear warm-up, then multiplied by lr_gamma at each milestone passed."""
    factor = config.lr_gamma ** sum(iteration >= m for m in config.lr_milestones)
    if config.warmup and iteration < config.warmup:
        factor *= (iteration + 1) / config.warmup
    return config.lr * factor


def warm_start(model: ESRT, path: str | Path) -> list[str]:
    """Copies every weight of another checkpoint whose name and shape match (not the upsamplers).

    Returns the names left at their initial values.
    """
    source = load_checkpoint(path).state_dict()
    own = model.state_dict()
    skipped = [
        k for k in own if k.startswith(("tail.0.", "skip.0.")) or k not in source or source[k].shape != own[k].shape
    ]
    model.load_state_dict({k: (own[k] if k in skipped else source[k]) for k in own})
    return skipped


def validation_images(val_dir: str | Path, scale: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HR modcropped, LR) for a benchmark folder with HR/ and optionally LR_bicubic/X{scale}/."""
    from esrt.imresize import imresize

    root = Path(val_dir)
    out = []
    for hr_path in sorted((root / "HR").glob("*.png")):
        hr = modcrop(load_rgb(hr_path), scale)
        lr_path = root / "LR_bicubic" / f"X{scale}" / hr_path.name
        lr = load_rgb(lr_path) if lr_path.is_file() else imresize(hr, 1 / scale)
        out.append((hr_path.stem, hr, lr))
    return out


@torch.no_grad()
def validate(model: nn.Module, images: list[tuple[str, np.ndarray, np.ndarray]], scale: int) -> float:
    """Mean Y-PSNR (the evaluation protocol: uint8 SR, MATLAB Y, border crop = scale) over images."""
    from esrt.metrics import psnr, rgb_to_y

    was_training = model.training
    model.eval()
    scores = []
    for _, hr, lr in images:
        x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float().div(255).unsqueeze(0)
        sr = model(x).clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
        scores.append(psnr(rgb_to_y(sr), rgb_to_y(hr), border=scale))
    model.train(was_training)
    return float(np.mean(scores))


class EMA:
    """Exponential moving average of a model's weights (float32), updated after every step.

    The decay ramps up as min(decay, (1 + t) / (10 + t)), so that short runs are not dominated by the
    initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> None:
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        ema = list(self.model.state_dict().values())
        cur = list(model.state_dict().values())
        torch._foreach_lerp_(ema, cur, 1 - decay)  # pyright: ignore[reportPrivateImportUsage]


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint and returns at the end of the iteration."""

    def __init__(self) -> None:
        self.raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _distributed() -> tuple[int, int]:
    """(rank, world): initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


# -------------------------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a training run ended with; model is this process's (unwrapped) network."""

    iteration: int
    best_psnr: float
    last_psnr: float
    interrupted: bool
    notes: dict[str, Any]
    model: ESRT

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model"}


def train(config: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Trains (or resumes from the newest checkpoint in resume, or else in out_dir) until config.iterations."""
    rank, world = _distributed()
    main = rank == 0
    out_dir = Path(config.out_dir)
    resume_dir = Path(resume) if resume else None
    if resume_dir is not None and not checkpoints(resume_dir):
        raise FileNotFoundError(f"{resume_dir}: no checkpoint to resume from")
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    threads = config.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else None
    device = device or torch.device("cpu")
    notes: dict[str, Any] = {}
    if config.precision == "auto":
        config = config.replace(precision=training_precision(device.type))
        notes["precision"] = config.precision
        if main:
            print(f"precision auto: {config.precision}")

    model = ESRT(config.scale).to(device)
    if config.init_from:
        notes["warm_start_skipped"] = warm_start(model, config.init_from)
    fused = config.fused_adam and device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)
    ema = EMA(model, config.ema) if config.ema > 0 else None
    start = 0
    best = -math.inf
    source = checkpoints(resume_dir or out_dir)
    if source:
        state = torch.load(source[-1], map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the saved groups carry the saving run's choice
            group["fused"] = fused or None
        if ema is not None and state.get("ema") is not None:
            ema.model.load_state_dict(state["ema"])
        start, best = state["iteration"], state.get("best_psnr", -math.inf)
        _set_rng_state(state["rng"])
        notes["resumed_from"] = str(source[-1])

    cache = config.cache_dir or str(out_dir.parent / "cache")
    pairs, skipped = load_pairs(config.data, config.scale, config.patch, cache)
    if main and skipped:
        print(f"skipped {len(skipped)} images smaller than a {config.patch * config.scale}px HR patch")
    dataset = PatchDataset(pairs, config.scale, config.patch, config.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch // world,
        sampler=StepSampler(config.batch, start, rank, world),
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        worker_init_fn=lambda _: torch.set_num_threads(1),
        prefetch_factor=2 if config.workers > 0 else None,
    )
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    # step_model shares model's parameters; with compile it is the twin with compiled blocks (esrt.speed)
    step_model = prepare_for_training(
        model, config.precision, compile_blocks=config.compile, channels_last=config.channels_last
    )
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids)
    val_images = validation_images(config.val_dir, config.scale) if (config.val_dir and main) else []

    log = _Logger(out_dir, enabled=main)
    end = min(config.iterations, start + config.stop_after) if config.stop_after else config.iterations
    last_save = time.monotonic()
    psnr = float("nan")
    loss_sum, loss_count, t_log = 0.0, 0, time.monotonic()
    bar = None
    if main and config.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, initial=start, desc=f"x{config.scale}", dynamic_ncols=True)
    it = saved = start
    params = list(model.parameters())
    batches = iter(loader)
    with _StopFlag() as stop:
        while it < end and not stop.raised:
            lr_now = learning_rate(config, it)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            lr_batch, hr_batch = next(batches)
            lr_batch = lr_batch.to(device, memory_format=memory_format)
            hr_batch = hr_batch.to(device)
            with autocast(config.precision, device.type):
                sr = step_model(lr_batch)
            loss = F.l1_loss(sr.float(), hr_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not _finite(loss, params):  # never step (or save) into NaN weights
                raise DivergenceError(
                    f"iteration {it + 1}: the loss or a gradient is not finite; stopped without saving"
                    f" (last checkpoint: {f'iteration {saved}' if saved else 'none'}); try a lower --lr"
                    + (" or --no-compile" if config.compile else "")
                )
            optimizer.step()
            if ema is not None:
                ema.update(model, it)
            it += 1
            loss_sum += loss.item()
            loss_count += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.2f}")
            if main and val_images and (it % config.val_every == 0 or it == end):
                psnr = validate(ema.model if ema else model, val_images, config.scale)
                if psnr > best:
                    best = psnr
                    _export(ema.model if ema else model, out_dir / "best.safetensors", config, it, psnr)
                log.scalar("val/psnr", psnr, it)
            if it % config.log_every == 0 or it == end:
                elapsed = time.monotonic() - t_log
                log.row(it, loss_sum / loss_count, lr_now, psnr, loss_count / elapsed)
                loss_sum, loss_count, t_log = 0.0, 0, time.monotonic()
            due = it % config.save_every == 0 or time.monotonic() - last_save > 60 * config.save_minutes
            if due or it == end or stop.raised:
                if main:
                    _save(out_dir, config, it, model, optimizer, ema, best)
                    saved = it
                    _export(ema.model if ema else model, out_dir / "last.safetensors", config, it, psnr)
                last_save = time.monotonic()
    if bar is not None:
        bar.close()
    log.close()
    if world > 1:
        dist.barrier()
    return TrainResult(it, best, psnr, it < config.iterations, notes, model)


def _save(
    out_dir: Path,
    config: TrainConfig,
    iteration: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    best: float,
) -> None:
    state = {
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.model.state_dict() if ema else None,
        "rng": _rng_state(),
        "best_psnr": best,
        "config": config.to_dict(),
    }
    _atomic_torch_save(state, out_dir / f"checkpoint_{iteration:09d}.pt")
    for old in checkpoints(out_dir)[: -config.keep]:
        old.unlink(missing_ok=True)


def _export(model: nn.Module, path: Path, config: TrainConfig, iteration: int, psnr: float) -> None:
    assert isinstance(model, ESRT)
    meta = {
        "iterations": iteration,
        "data": [Path(d).parent.name if Path(d).name == "HR" else Path(d).name for d in config.data],
        "date": time.strftime("%Y-%m-%d"),
        "val_psnr": None if math.isnan(psnr) else round(psnr, 4),
        "val_set": Path(config.val_dir).name if config.val_dir else "",
        "patch": config.patch,
        "batch": config.batch,
        "precision": config.precision,
    }
    save_weights(model, path, meta)


class _Logger:
    """CSV log (always) and TensorBoard (when installed) of loss, lr, validation PSNR and speed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.csv_path = out_dir / "log.csv"
        new = not self.csv_path.exists()
        self.file = self.csv_path.open("a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["iteration", "loss", "lr", "val_psnr", "it_per_s", "time"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            self.writer = None

    def row(self, it: int, loss: float, lr: float, psnr: float, speed: float) -> None:
        if not self.enabled:
            return
        self.csv.writerow([it, f"{loss:.6f}", f"{lr:.3e}", f"{psnr:.4f}", f"{speed:.4f}", int(time.time())])
        self.file.flush()
        self.scalar("train/loss", loss, it)
        self.scalar("train/lr", lr, it)
        self.scalar("train/it_per_s", speed, it)

    def scalar(self, tag: str, value: float, it: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_scalar(tag, value, it)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
