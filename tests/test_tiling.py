"""Tests of esrt.tiling: tile cover and blending (exact with a pointwise net), auto tile size, TTA, --tile."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from esrt.model import ESRT
from esrt.tiling import (
    auto_tile_size,
    blend_weights,
    parse_tile,
    resolve_tile,
    run_tiled,
    self_ensemble,
    tile_span,
    tile_starts,
)
from esrt.upscale import TorchUpscaler

from .pictures import Nearest, smooth


def collect(x: np.ndarray, net: object, tile: int | None, overlap: int, scale: int = 2) -> tuple[np.ndarray, int]:
    rows: dict[int, np.ndarray] = {}

    def emit(top: int, band: np.ndarray) -> None:
        assert top == sum(r.shape[1] for r in rows.values()), "rows must come in order, without gaps"
        rows[top] = band.copy()

    count = run_tiled(x, net, scale, tile, overlap, emit)  # type: ignore[arg-type]
    return np.concatenate([rows[k] for k in sorted(rows)], axis=1), count


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(50, 16, 4), (16, 16, 4), (33, 16, 8), (100, 24, 0), (7, 16, 4)]
)
def test_tiles_cover_and_weights_sum_to_one(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    total = np.zeros(length * 3)
    for s, w in zip(starts, blend_weights(starts, size, length, 3), strict=True):
        assert w.shape == (size * 3,) and (w >= 0).all()
        total[s * 3 : (s + size) * 3] += w
    np.testing.assert_allclose(total, 1, atol=1e-6)


def test_blend_ramps_are_linear_and_feather_the_edges() -> None:
    w0, w1 = blend_weights([0, 12], 16, 28, 1)
    np.testing.assert_allclose(w0[:12], 1)
    np.testing.assert_allclose(w0[12:], [0.875, 0.625, 0.375, 0.125])  # a linear ramp down across the overlap
    np.testing.assert_allclose(w1[:4], [0.125, 0.375, 0.625, 0.875])


@pytest.mark.parametrize(
    ("tile", "overlap", "shape"), [(16, 4, (37, 45)), (16, 8, (37, 45)), (20, 0, (37, 45)), (17, 6, (37, 45)),
                                   (16, 8, (26, 26))]  # 26 at 16/8: three tiles of 14, the first and last overlap
)  # fmt: skip
def test_tiled_pointwise_net_is_exact(tile: int, overlap: int, shape: tuple[int, int]) -> None:
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    whole = Nearest()(x)
    tiled, count = collect(x, Nearest(), tile, overlap)
    assert count > 4
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_tile_span_makes_the_fewest_equal_tiles() -> None:
    for length, tile, overlap in itertools.product(range(2, 300, 7), (16, 33, 64), (0, 4, 8, 16)):
        if overlap > tile // 2:
            continue  # resolve_tile refuses it
        span = tile_span(length, tile, overlap)
        starts = tile_starts(length, span, overlap)
        fewest = 1 if length <= tile else -(-(length - overlap) // (tile - overlap))
        assert span <= tile and len(starts) == fewest and starts[-1] + span == length
        assert all(a + span - b >= overlap for a, b in itertools.pairwise(starts))  # at least `overlap` shared
        assert all(b - a in (span - overlap, span - overlap - 1) for a, b in itertools.pairwise(starts[:-1]))
    assert (tile_span(1080, 320, 16), tile_span(1920, 320, 16)) == (282, 288)  # 4 x 7 tiles, not 4 x 7 of 320


def test_tiles_agree_with_whole_image_away_from_seams() -> None:
    """Tiled ESRT output is close to, but not exactly, the whole-image output (attention band, CA pooling).

    Stated tolerance, for this random-weight model whose outputs span about 2.5: away from the blended seams
    the mean absolute difference is below 0.05 and the 99th percentile below 0.2.
    """
    torch.manual_seed(0)
    net = TorchUpscaler(ESRT(2).eval())
    x = smooth(24, 24).transpose(2, 0, 1).astype(np.float32) / 255
    whole = net(x)
    tiled, count = collect(x, net, 16, 8)  # tiles start at 0 and 8: the seam is LR [8, 16), output [16, 32)
    assert count == 4 and tiled.shape == whole.shape == (3, 48, 48)
    away = np.r_[0:16, 32:48]
    d = np.abs(tiled - whole)[:, away][:, :, away]
    assert d.mean() < 0.05 and np.quantile(d, 0.99) < 0.2
    assert np.abs(tiled - whole).max() > 1e-4  # the documented fact: exact equality is impossible


def test_auto_tile_size_follows_memory() -> None:
    assert auto_tile_size(4, available=64 * 2**30) == auto_tile_size(4, available=8 * 2**30)  # capped budget
    big, small = auto_tile_size(4, available=8 * 2**30), auto_tile_size(4, available=400 * 2**20)
    assert 64 <= small < big <= 512 and big % 16 == 0
    assert auto_tile_size(4, available=0) == 64


def test_tta_undoes_each_transform() -> None:
    x = np.random.default_rng(1).random((3, 5, 7), dtype=np.float32)
    np.testing.assert_allclose(self_ensemble(Nearest())(x), Nearest()(x), atol=1e-6)


def test_tta_is_the_mean_of_the_eight_transformed_runs() -> None:
    def net(x: np.ndarray) -> np.ndarray:  # not equivariant: position-dependent, so each transform differs
        return x * np.linspace(0, 1, x.shape[2], dtype=np.float32)[None, None, :] + x[:, :1, :1]

    x = np.random.default_rng(2).random((3, 4, 6), dtype=np.float32)
    runs = []
    for k in range(8):
        t = np.flip(x, 2) if k & 1 else x
        t = np.flip(t, 1) if k & 2 else t
        y = net(np.ascontiguousarray(t.transpose(0, 2, 1) if k & 4 else t))
        y = y.transpose(0, 2, 1) if k & 4 else y
        y = np.flip(y, 1) if k & 2 else y
        runs.append(np.flip(y, 2) if k & 1 else y)
    np.testing.assert_allclose(self_ensemble(net)(x), np.mean(runs, axis=0), atol=1e-6)


def test_parse_and_resolve_tile() -> None:
    assert [parse_tile(v) for v in (None, "auto", "AUTO", "0", "none", 0, "64", 96)] == [
        "auto", "auto", "auto", None, None, None, 64, 96,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--tile"):
        parse_tile("big")
    assert resolve_tile(None, 16, 4) is None and resolve_tile(64, 16, 4) == 64
    assert resolve_tile("auto", 16, 4) == auto_tile_size(4)
    with pytest.raises(ValueError, match="tile"):
        resolve_tile(8, 4, 4)
    with pytest.raises(ValueError, match="overlap"):
        resolve_tile(32, 17, 4)
