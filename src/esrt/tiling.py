"""Tiled inference: tile planning, feathered blending, the auto tile size from free memory, x8 self-ensemble.

Every pixel attends to a band of its own tile, so tiled output is close to, but never exactly, the
whole-image output (docs/architecture.md, "Attention"); a pointwise network is tiled exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Literal

import numpy as np

Tile = int | Literal["auto"] | None
Network = Callable[[np.ndarray], np.ndarray]  # (3, h, w) float32 -> (3, s*h, s*w)

DEFAULT_OVERLAP = 16  # LR pixels shared by neighbouring tiles, blended with linear ramps
MIN_TILE = 16
AUTO_TILE_BUDGET = 1280 * 2**20  # bytes one tile's forward pass may take, at most (a process peak under 2 GiB)
# Peak bytes per LR pixel of one fp32 forward pass (measured with ru_maxrss on 128-256 px tiles, +20%).
BYTES_PER_PIXEL = {2: 10_500, 3: 11_500, 4: 12_000}


def parse_tile(value: str | int | None) -> int | Literal["auto"] | None:
    """A --tile option: "auto" (or None), 0 or "none" (whole image), or a tile side in LR pixels."""
    if value is None:
        return "auto"
    if isinstance(value, int):
        return value or None
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    if text in ("0", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--tile must be a number of pixels, 'auto' or 0 (whole image), got {value!r}") from None


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux; 4 GiB when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4 * 2**30


def auto_tile_size(scale: int, available: int | None = None, bytes_per_pixel: int | None = None) -> int:
    """The tile side (LR pixels) whose forward pass fits in a quarter of available memory, at most
    AUTO_TILE_BUDGET; bytes_per_pixel: the backend's peak bytes per LR pixel (default: PyTorch's, by scale)."""
    if available is None:
        available = available_memory()
    budget = min(available // 4, AUTO_TILE_BUDGET)
    per_pixel = bytes_per_pixel or BYTES_PER_PIXEL.get(scale, max(BYTES_PER_PIXEL.values()))
    side = int(math.sqrt(budget / per_pixel))
    return max(64, min(512, side // 16 * 16))


def resolve_tile(
    tile: Tile, overlap: int, scale: int, available: int | None = None, bytes_per_pixel: int | None = None
) -> int | None:
    """The tile side to use (None: whole image), "auto" resolved from available bytes (None: free host RAM; a
    GPU's free memory on CUDA, esrt.devices.free_memory) and the backend's bytes_per_pixel (auto_tile_size);
    ValueError for a tile or overlap out of range."""
    if tile is None or tile == 0:
        return None
    size = auto_tile_size(scale, available, bytes_per_pixel) if tile == "auto" else tile
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_TILE:
        raise ValueError(f"tile must be 'auto', None/0 (whole image) or an integer >= {MIN_TILE}, got {tile!r}")
    if not 0 <= overlap <= size // 2:
        raise ValueError(f"tile overlap must be between 0 and half the tile ({size // 2}), got {overlap}")
    return size


def tile_span(length: int, tile: int, overlap: int) -> int:
    """The tile length along an axis: as few tiles of at most `tile` pixels as cover length, made equal, so that
    the last tile does not overlap its neighbour by more than the others do (less work recomputed)."""
    if length <= tile:
        return length
    count = math.ceil((length - overlap) / (tile - overlap))
    return math.ceil((length + (count - 1) * overlap) / count)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size min(tile, length) covering [0, length); the last one ends at length."""
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(count)]


def tile_layout(length: int, tile: int | None, overlap: int) -> tuple[int, list[int]]:
    """The tiles along an axis of `length` pixels: their common length (tile_span) and their starts; tile None
    is one tile, the whole axis."""
    span = length if tile is None else tile_span(length, tile, overlap)
    return span, tile_starts(length, span, overlap)


def blend_weights(starts: list[int], size: int, length: int, scale: int) -> list[np.ndarray]:
    """Per-tile 1-D output weights: linear ramps across each overlap, normalised to sum to 1 everywhere."""
    n = size * scale
    k = np.arange(n, dtype=np.float64) + 0.5
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(n)
        if i > 0 and (left := (starts[i - 1] + size - start) * scale) > 0:
            w = np.minimum(w, k / left)  # rises from ~0 at the tile's edge
        if i + 1 < len(starts) and (right := (start + size - starts[i + 1]) * scale) > 0:
            w = np.minimum(w, (n - k) / right)
        weights.append(w)
    total = np.zeros(length * scale)
    for start, w in zip(starts, weights, strict=True):
        total[start * scale : start * scale + n] += w
    return [(w / total[s * scale : s * scale + n]).astype(np.float32) for s, w in zip(starts, weights, strict=True)]


def run_tiled(
    x: np.ndarray,
    net: Network,
    scale: int,
    tile: int | None,
    overlap: int,
    emit: Callable[[int, np.ndarray], None],
    on_tile: Callable[[], object] | None = None,
) -> int:
    """Super-resolves x (3, H, W) tile by tile; calls emit(row, out_rows) with finished output rows in order.

    Tiles are at most tile x tile LR pixels (tile_span: equal along each axis), neighbours share at least
    `overlap` pixels, blended with linear ramps.
    Only a band of output rows one tile high is kept in float32 at a time. Returns the number of tiles.
    """
    _, H, W = x.shape
    (th, ys), (tw, xs) = tile_layout(H, tile, overlap), tile_layout(W, tile, overlap)
    if len(ys) == len(xs) == 1:
        emit(0, net(x))  # (3, sH, sW)
        if on_tile:
            on_tile()
        return 1
    wy, wx = blend_weights(ys, th, H, scale), blend_weights(xs, tw, W, scale)
    acc = np.zeros((3, 0, W * scale), np.float32)  # output rows [acc_top, acc_top + acc.shape[1])
    acc_top = 0
    for r, y0 in enumerate(ys):
        top = y0 * scale
        if top > acc_top:  # rows above this tile row receive nothing more
            emit(acc_top, acc[:, : top - acc_top])
            acc, acc_top = acc[:, top - acc_top :], top
        need = top + th * scale - acc_top
        if acc.shape[1] < need:
            acc = np.concatenate([acc, np.zeros((3, need - acc.shape[1], W * scale), np.float32)], axis=1)
        for c, x0 in enumerate(xs):
            out = net(x[:, y0 : y0 + th, x0 : x0 + tw])  # (3, s*th, s*tw)
            out *= wy[r][:, None] * wx[c][None, :]
            acc[:, top - acc_top : top - acc_top + th * scale, x0 * scale : (x0 + tw) * scale] += out
            if on_tile:
                on_tile()
    emit(acc_top, acc)
    return len(ys) * len(xs)


def self_ensemble(net: Network) -> Network:
    """x8 test-time augmentation: the mean over the 8 flips/transpositions, each undone on the output."""

    def run(x: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for k in range(8):
            t = x[:, :, ::-1] if k & 1 else x
            t = t[:, ::-1] if k & 2 else t
            t = t.transpose(0, 2, 1) if k & 4 else t
            y = net(np.ascontiguousarray(t))
            y = y.transpose(0, 2, 1) if k & 4 else y
            y = y[:, ::-1] if k & 2 else y
            y = y[:, :, ::-1] if k & 1 else y
            total = y.copy() if total is None else total + y
        assert total is not None
        return total / 8

    return run
