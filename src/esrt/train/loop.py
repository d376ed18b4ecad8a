"""The training loop: L1 or L2 + Adam on random patches, exact resume, a checkpoint on SIGTERM, DDP under torchrun.

Follows the paper's recipe (L1 loss, Adam, step decay; docs/architecture.md); every setting is a TrainConfig field.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from esrt.atomic import atomic_write_bytes
from esrt.convert import CheckpointError
from esrt.data import PatchDataset, StepSampler, load_pairs
from esrt.model import ESRT
from esrt.runtime import autocast, default_threads, flush_denormals, training_precision
from esrt.train.checkpoint import (
    checkpoints,
    export_weights,
    load_resumable,
    make_state,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
    warm_start,
)
from esrt.train.config import TrainConfig
from esrt.train.ema import EMA
from esrt.train.log import Logger
from esrt.train.twin import prepare_for_training
from esrt.train.validation import validate, validation_images


class DivergenceError(ValueError):
    """A step produced a non-finite loss or gradient; raised before that step changes the weights."""


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
        """JSON-ready: a PSNR that does not exist yet (no validation) is None, never NaN or -inf."""
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
        return {
            "iteration": self.iteration,
            "best_psnr": finite(self.best_psnr),
            "last_psnr": finite(self.last_psnr),
            "interrupted": self.interrupted,
            "notes": self.notes,
        }


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """lr at iteration: linear warm-up, then multiplied by lr_gamma at each milestone passed; with a cosine or
    linear decay, from decay_start on it falls from the step schedule's value there to lr_final."""
    stepped = lambda i: config.lr * config.lr_gamma ** sum(i >= m for m in config.lr_milestones)  # noqa: E731
    lr = stepped(iteration)
    if config.decay != "step" and iteration >= config.decay_start:
        done = (iteration - config.decay_start) / max(1, config.iterations - config.decay_start)
        remaining = (1 + math.cos(math.pi * done)) / 2 if config.decay == "cosine" else 1 - done
        lr = config.lr_final + (stepped(config.decay_start) - config.lr_final) * remaining
    if config.warmup and iteration < config.warmup:
        lr *= (iteration + 1) / config.warmup
    return lr


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


def _init_worker(worker_id: int) -> None:
    """A data-loader worker ignores SIGINT/SIGTERM: a job scheduler or Ctrl+C signals the whole process group,
    and only the main process acts on it (it saves a checkpoint, then stops its workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def _distributed() -> tuple[int, int]:
    """(rank, world): initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _finite(loss: torch.Tensor, params: list[nn.Parameter]) -> bool:
    """Whether the loss and every gradient are finite (a NaN or inf entry makes its gradient's norm non-finite)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return bool(torch.isfinite(torch.stack([loss.detach().float(), *norms])).all())


def _resume_source(config: TrainConfig, resume: str | Path | None) -> Path:
    """The folder to resume from: resume when given (it must hold a checkpoint), else out_dir."""
    if resume is None or str(resume) == "":
        return Path(config.out_dir)
    if not checkpoints(resume):
        raise FileNotFoundError(f"{resume}: no checkpoint to resume from")
    return Path(resume)


def _loader(config: TrainConfig, out_dir: Path, start: int, rank: int, world: int) -> torch.utils.data.DataLoader:
    """Batches of (LR, HR) patches from iteration start on; this rank's share of each global batch."""
    cache = config.cache_dir or str(out_dir.parent / "cache")
    pairs, skipped = load_pairs(config.data, config.scale, config.patch, cache, config.hr_scales)
    if rank == 0 and skipped:
        print(f"skipped {len(skipped)} images smaller than a {config.patch * config.scale}px HR patch")
    return torch.utils.data.DataLoader(
        PatchDataset(pairs, config.scale, config.patch, config.seed, config.sampling),
        batch_size=config.batch // world,
        sampler=StepSampler(config.batch, start, rank, world),
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        worker_init_fn=_init_worker,
        prefetch_factor=2 if config.workers > 0 else None,
    )


@dataclass
class _Run:
    """One training run's state between steps; created by _Run.open, advanced by step and after_step."""

    config: TrainConfig
    main: bool
    world: int
    device: torch.device
    model: ESRT
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    start: int
    best: float
    notes: dict[str, Any]
    loader: torch.utils.data.DataLoader
    val_images: list[Any]
    log: Logger
    saved: int = 0
    psnr: float = math.nan
    losses: list[float] = field(default_factory=list)
    t_log: float = field(default_factory=time.monotonic)
    last_save: float = field(default_factory=time.monotonic)
    bar: Any = None

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def end(self) -> int:
        """The iteration this run stops at (config.iterations, or sooner with stop_after)."""
        c = self.config
        return min(c.iterations, self.start + c.stop_after) if c.stop_after else c.iterations

    @property
    def averaged(self) -> nn.Module:
        """The model validated and exported: the EMA weights when EMA is on."""
        return self.ema.model if self.ema is not None else self.model

    @classmethod
    def open(cls, config: TrainConfig, resume: str | Path | None, rank: int, world: int) -> _Run:
        """Sets up model, optimizer, EMA and data, resumed from the newest intact checkpoint if there is one."""
        main, out_dir, source = rank == 0, Path(config.out_dir), _resume_source(config, resume)
        torch.set_num_threads(config.threads or default_threads(world))
        torch.manual_seed(config.seed)
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
        notes: dict[str, Any] = {}
        if config.precision == "auto":
            notes["precision"] = training_precision(device.type)
            if main:
                print(f"precision auto: {notes['precision']}")
        run_config = config.replace(precision=notes.get("precision", config.precision))
        model = ESRT(config.scale).to(device)
        fused = config.fused_adam and device.type in ("cpu", "cuda")
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)
        found = load_resumable(source, config.scale, device)
        if found is None and config.init_from:
            notes["warm_start_skipped"] = warm_start(model, config.init_from)
        ema = EMA(model, config.ema) if config.ema > 0 else None
        start, best = _restore(found[0], model, optimizer, ema, fused) if found else (0, -math.inf)
        if found:
            notes["resumed_from"] = str(found[1])
        if main:  # only now that the checkpoint is known to be good
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out_dir / "config.json", (json.dumps(config.to_dict(), indent=2) + "\n").encode())
            remove_stale_temporaries(out_dir)
        loader = _loader(config, out_dir, start, rank, world)
        step_model = prepare_for_training(
            model, run_config.precision, compile_blocks=config.compile, channels_last=config.channels_last
        )  # shares model's parameters; with compile, the twin with compiled blocks
        if world > 1:
            step_model = nn.parallel.DistributedDataParallel(
                step_model, device_ids=[device.index] if device.type == "cuda" else None
            )
        val_images = validation_images(config.val_dir, config.scale) if (config.val_dir and main) else []
        log = Logger(out_dir, start, enabled=main)
        parts = (model, step_model, optimizer, ema, start, best, notes, loader, val_images, log)
        return cls(run_config, main, world, device, *parts)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor], it: int) -> float:
        """One optimizer step at iteration it (counted from 0); returns the loss. Never steps into NaN weights."""
        lr_now = learning_rate(self.config, it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        lr_batch = batch[0].to(self.device, memory_format=memory_format)
        with autocast(self.config.precision, self.device.type):
            sr = self.step_model(lr_batch)
        pixel_loss = F.l1_loss if self.config.loss == "l1" else F.mse_loss
        loss = pixel_loss(sr.float(), batch[1].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not _finite(loss, list(self.model.parameters())):
            raise DivergenceError(
                f"iteration {it + 1}: the loss or a gradient is not finite; stopped without saving"
                f" (last checkpoint: {f'iteration {self.saved}' if self.saved else 'none'}); try a lower --lr"
                + (" or --no-compile" if self.config.compile else "")
            )
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, it)
        return loss.item()

    def after_step(self, it: int, loss: float, stopping: bool) -> None:
        """Progress, validation, the log row and the checkpoint that are due after iteration it."""
        c = self.config
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{self.psnr:.2f}")
        if self.val_images and (it % c.val_every == 0 or it == self.end):
            self.psnr = validate(self.averaged, self.val_images, c.scale)
            if self.psnr > self.best:
                self.best = self.psnr
                export_weights(self.averaged, self.out_dir / "best.safetensors", c, it, self.psnr)
            self.log.scalar("val/psnr", self.psnr, it)
        if it % c.log_every == 0 or it == self.end:
            speed = len(self.losses) / (time.monotonic() - self.t_log)
            self.log.row(it, sum(self.losses) / len(self.losses), learning_rate(c, it - 1), self.psnr, speed)
            self.losses, self.t_log = [], time.monotonic()
        due = it % c.save_every == 0 or time.monotonic() - self.last_save > 60 * c.save_minutes
        if due or it == self.end or stopping:
            self.save(it)

    def save(self, it: int) -> None:
        """The resumable checkpoint and last.safetensors (rank 0 only)."""
        if self.main:
            ema = self.ema.model if self.ema is not None else None
            save_checkpoint(self.out_dir, make_state(self.config, it, self.model, self.optimizer, ema, self.best))
            export_weights(self.averaged, self.out_dir / "last.safetensors", self.config, it, self.psnr)
            self.saved = it
        self.last_save = time.monotonic()


def _restore(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, fused: bool
) -> tuple[int, float]:
    """Loads a checkpoint's weights, optimizer, EMA and RNG states; returns (iteration, best PSNR)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:  # a run that had no EMA yet starts it from the resumed weights
            ema.model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint does not fit this model: {str(exc).splitlines()[0]}") from None
    for group in optimizer.param_groups:  # the saved groups carry the saving run's choice
        group["fused"] = fused or None
    set_rng_state(state["rng"])
    return state["iteration"], state.get("best_psnr", -math.inf)


def train(config: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Trains (or resumes from the newest intact checkpoint in resume, or else in out_dir) until
    config.iterations; SIGINT or SIGTERM saves a checkpoint and returns (interrupted=True).
    Flushes subnormal floats to zero for the rest of the process (esrt.runtime.flush_denormals)."""
    flush_denormals()
    rank, world = _distributed()
    run = _Run.open(config, resume, rank, world)
    if run.main and config.progress:
        from tqdm import tqdm

        run.bar = tqdm(total=config.iterations, initial=run.start, desc=f"x{config.scale}", dynamic_ncols=True)
    it = run.start
    with _StopFlag() as stop:
        batches = iter(run.loader)  # the workers start here, ignoring SIGINT/SIGTERM (_init_worker)
        while it < run.end and not stop.raised:
            loss = run.step(next(batches), it)
            it += 1
            run.after_step(it, loss, stop.raised)
    if run.bar is not None:
        run.bar.close()
    run.log.close()
    if world > 1:
        dist.barrier()
    return TrainResult(it, run.best, run.psnr, it < config.iterations, run.notes, run.model)
