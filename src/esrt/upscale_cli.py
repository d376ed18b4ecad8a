"""`esrt upscale`: image files, folders and globs in, upscaled files out, one line per failure.

Options are checked before any image is read; outputs are written atomically (esrt.atomic) and an input is
never overwritten. The options themselves are declared in esrt.cli.
"""

from __future__ import annotations

import glob
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from esrt.devices import resolve_device
from esrt.images import (
    FORMATS,
    IMAGE_SUFFIXES,
    ImageError,
    check_png_level,
    check_quality,
    is_image_name,
    read_image,
    write_image,
)
from esrt.tiling import parse_tile
from esrt.upscale import Upscaler, load_upscaler, plan_tile, upscale_pixels

if TYPE_CHECKING:
    import argparse

PREFIX = "esrt upscale"


@dataclass(frozen=True)
class Job:
    """One input file and the file its result goes to."""

    source: Path
    target: Path


def collect_inputs(items: list[str], recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(file, output stem relative to the output folder) for files, folders and globs; plus error lines."""
    found: list[tuple[Path, Path]] = []
    errors: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append((path, Path(path.stem)))
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if is_image_name(p.relative_to(path)) and p.is_file())
            found += [(p, p.relative_to(path).with_suffix("")) for p in files]
            if not files:
                errors.append(f"{item}: no images found" + ("" if recursive else " (--recursive looks deeper)"))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=recursive) if Path(p).is_file())
            images = [p for p in matches if is_image_name(Path(p.name))]
            found += [(p, Path(p.stem)) for p in images]
            if not images:
                kind = f"only files without an image suffix ({len(matches)})" if matches else "no file"
                errors.append(f"{item}: {kind} matches")
        else:
            errors.append(f"{item}: no such file or folder")
    return found, errors


def _names_a_file(output: str | None) -> bool:
    """Whether -o names an output file (an image suffix, not an existing folder, no trailing slash)."""
    if output is None:
        return False
    out = Path(output)
    return out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir() and not output.endswith(("/", os.sep))


def plan_outputs(
    inputs: list[tuple[Path, Path]], output: str | None, fmt: str | None, tag: str
) -> tuple[list[Job], list[str], str]:
    """Output path per input: <output folder>/<stem>_x<tag>.<fmt> (or -o FILE for one input); error lines."""
    out = Path(output) if output else Path("results")
    as_file = _names_a_file(output)
    if as_file and len(inputs) > 1:
        raise ValueError(f"-o {output} names one file, but there are {len(inputs)} inputs: give a folder")
    if fmt is None:
        fmt = out.suffix.lstrip(".").lower() if as_file else "png"
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(sorted(FORMATS))})")
    sources = {_identity(p) for p, _ in inputs}
    jobs: list[Job] = []
    errors: list[str] = []
    seen: dict[Path, Path] = {}
    for source, stem in inputs:
        target = out if as_file else out / stem.with_name(f"{stem.name}_x{tag}.{fmt}")
        key = _identity(target)
        if key in sources:
            errors.append(f"{source}: output {target} is an input; refusing to overwrite it")
        elif key in seen:
            errors.append(f"{source}: output {target} is also the output of {seen[key]}; skipped")
        else:
            seen[key] = source
            jobs.append(Job(source, target))
    return jobs, errors, fmt


def _identity(path: Path) -> Path:
    return Path(os.path.normcase(os.path.realpath(path)))


def check_writable(folders: set[Path]) -> None:
    """Raises OSError naming the first folder that cannot be created or written to."""
    for folder in sorted(folders):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(f"output folder {folder}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"output folder {folder}: no permission to write in {existing}")


def check_options(args: argparse.Namespace) -> None:
    """Raises ValueError for an option out of range, before anything is read."""
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive number, got {args.threads}")
    if args.outscale is not None and not (math.isfinite(args.outscale) and args.outscale > 0):
        raise ValueError(f"--outscale must be a positive number, got {args.outscale}")
    if args.max_pixels < 4:
        raise ValueError(f"--max-pixels must be at least 4, got {args.max_pixels}")
    if args.fast and args.exact:
        raise ValueError("--fast and --exact contradict each other (fast is the default)")
    check_quality(args.quality)
    check_png_level(args.png_level)


def main_upscale(args: argparse.Namespace) -> int:
    """`esrt upscale`: every input is tried; one line per failure; exit 1 when any failed."""
    start = time.perf_counter()
    check_options(args)
    tile = parse_tile(args.tile)
    inputs, errors = collect_inputs(list(args.inputs), args.recursive)
    if _names_a_file(args.output) and len(inputs) > 1:
        raise ValueError(f"-o {args.output} names one file, but there are {len(inputs)} inputs: give a folder")
    try:
        net = _cli_upscaler(args)
    except ImportError as exc:  # an optional dependency (onnxruntime) is missing
        print(f"{PREFIX}: error: {exc}", file=sys.stderr)
        return 1
    tag = f"{args.outscale:g}" if args.outscale else str(net.scale)
    jobs, plan_errors, fmt = plan_outputs(inputs, args.output, args.format, tag)
    check_writable({job.target.parent for job in jobs})
    size = plan_tile(tile, args.tile_overlap, net)  # checked once
    for line in errors + plan_errors:
        print(f"{PREFIX}: {line}", file=sys.stderr)
    written, skipped, failed = _run_jobs(jobs, net, size, fmt, args)
    failed += len(errors) + len(plan_errors)
    elapsed = time.perf_counter() - start
    print(f"{PREFIX}: {written} written, {skipped} skipped (exist), {failed} failed, in {elapsed:.1f} s")
    return 1 if failed or not (written or skipped) else 0


def _run_jobs(jobs: list[Job], net: Upscaler, tile: int | None, fmt: str, args: argparse.Namespace) -> list[int]:
    """Upscales every job; returns [written, skipped, failed]."""
    from tqdm import tqdm

    counts = [0, 0, 0]
    with tqdm(jobs, desc="upscale", unit="img", disable=None) as bar:
        for job in bar:
            if job.target.exists() and not args.overwrite:
                counts[1] += 1
                tqdm.write(f"{PREFIX}: {job.source}: {job.target} exists; skipped (--overwrite replaces)")
                continue
            try:
                picture = read_image(job.source, args.max_pixels)
                if picture.frames > 1:
                    tqdm.write(f"{PREFIX}: {job.source}: {picture.frames} frames; only the first is upscaled")
                pixels = upscale_pixels(
                    picture.pixels, net, tile=tile, tile_overlap=args.tile_overlap, tta=args.tta,
                    outscale=args.outscale, alpha=args.alpha, progress=True,
                )  # fmt: skip
                job.target.parent.mkdir(parents=True, exist_ok=True)
                write_image(job.target, pixels, picture.icc, fmt, args.quality, args.png_level)
                counts[0] += 1
            except (ImageError, OSError, ValueError, RuntimeError, MemoryError) as exc:
                counts[2] += 1
                tqdm.write(f"{PREFIX}: {job.source}: {_one_line(exc)}", file=sys.stderr)
    return counts


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _cli_upscaler(args: argparse.Namespace) -> Upscaler:
    device = resolve_device(args.device)  # ValueError (one line) for cuda/mps where there is none
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.backend == "onnx":
        if args.weights is None:
            raise ValueError("--backend onnx needs --weights MODEL.onnx (made by `esrt export --onnx`)")
        if args.precision != "fp32":
            raise ValueError("--backend onnx runs fp32 (no --precision bf16)")
        if args.device != "auto" and device.type != "cpu":
            raise ValueError(f"--backend onnx runs on the CPU (onnxruntime), not on --device {args.device}")
        from esrt.export import OnnxUpscaler

        onnx = OnnxUpscaler(args.weights, threads=args.threads)
        if args.exact and onnx.fast:
            raise ValueError(f"{args.weights}: exported in fast mode; for --exact export it with `esrt export --exact`")
        return load_upscaler(onnx, args.scale)
    return load_upscaler(None, args.scale, args.weights, args.precision, args.exact, malloc=True, device=device)
