"""Tests of esrt.data: patch pairs are aligned and deterministic, small images are skipped, batches split by rank."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from esrt.data import Pair, PatchDataset, StepSampler, load_pairs


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Three smooth 44x40 images and one 6x6, too small for a patch."""
    folder = tmp_path / "hr"
    folder.mkdir()
    yy, xx = np.mgrid[0:40, 0:44] / 8.0
    for i in range(3):
        img = np.stack([np.sin(xx * (c + 1) * 0.7 + yy + i + c) for c in range(3)], axis=-1)
        Image.fromarray(((img + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(folder / "tiny.png")
    return folder


def test_small_images_are_skipped(images: Path, tmp_path: Path) -> None:
    pairs, skipped = load_pairs([images], 2, 8, tmp_path)
    assert len(pairs) == 3
    assert [Path(s).name for s in skipped] == ["tiny.png"]


def test_hr_scales_add_resized_copies_cached(images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pairs, skipped = load_pairs([images], 2, 8, cache, hr_scales=(1.0, 0.5))
    # 44x40 images: at 0.5 they are 22x20 (LR 11x10); the 6x6 one is too small at either factor
    assert [p.name for p in pairs] == ["0.png", "0.png@0.5", "1.png", "1.png@0.5", "2.png", "2.png@0.5"]
    assert [Path(s).name for s in skipped] == ["tiny.png", "tiny.png at 0.5"]
    half = pairs[1]
    assert half.hr.shape == (20, 22, 3) and half.lr.shape == (10, 11, 3)
    # the resized HR is a smooth shrink of the original (MATLAB bicubic), not a crop of it
    box = torch.nn.functional.avg_pool2d(torch.from_numpy(pairs[0].hr).permute(2, 0, 1)[None].float(), 2)[0]
    assert np.abs(box.permute(1, 2, 0).numpy() - half.hr).mean() < 2.0
    files = 3 * 3  # per image: the LR, the resized HR and its LR; none for the tiny image (too small before resizing)
    assert len(list(cache.glob("*.npy"))) == files
    again, _ = load_pairs([images], 2, 8, cache, hr_scales=(1.0, 0.5))
    assert all(np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr) for a, b in zip(pairs, again, strict=True))
    assert len(list(cache.glob("*.npy"))) == files


def test_cache_follows_content_not_path_or_time(images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_pairs([images], 2, 8, cache)
    assert len(list(cache.glob("*.npy"))) == 3
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)  # a new path and new modification times: the same images
    os.utime(copy / "0.png", (1, 1))
    load_pairs([copy], 2, 8, cache)
    assert len(list(cache.glob("*.npy"))) == 3
    Image.fromarray(np.full((40, 44, 3), 7, np.uint8)).save(copy / "1.png")  # new content under an old name
    pairs, _ = load_pairs([copy], 2, 8, cache)
    assert len(list(cache.glob("*.npy"))) == 4
    assert pairs[1].lr.max() == pairs[1].lr.min() == 7


def test_patches_are_aligned_and_deterministic(images: Path, tmp_path: Path) -> None:
    pairs, _ = load_pairs([images], 2, 8, tmp_path)
    data = PatchDataset(pairs, 2, 8, seed=3)
    lr, hr = data[5]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
    assert torch.equal(data[5][0], lr)
    # the HR patch shrunk 2x by box averaging is close to the bicubic LR patch (alignment check)
    box = torch.nn.functional.avg_pool2d(hr[None], 2)[0]
    assert (box - lr).abs().mean() < 0.03
    assert not torch.equal(data[6][0], lr)


def test_area_sampling_picks_images_in_proportion_to_their_patch_positions() -> None:
    blank = lambda h, w: Pair("x", np.zeros((2 * h, 2 * w, 3), np.uint8), np.zeros((h, w, 3), np.uint8))  # noqa: E731
    pairs = [blank(8, 8), blank(17, 17), blank(8, 8)]  # 1, 100 and 1 positions of an 8x8 patch
    by_area = PatchDataset(pairs, 2, 8, seed=1, sampling="area")
    picks = np.bincount([by_area.image_index(g) for g in range(3000)], minlength=3)
    assert 0.95 < picks[1] / 3000 < 0.995 and picks[0] > 0 and picks[2] > 0  # expected 100/102 = 0.98
    by_image = PatchDataset(pairs, 2, 8, seed=1)
    assert np.bincount([by_image.image_index(g) for g in range(3000)]).tolist() == [1000, 1000, 1000]
    assert by_area.image_index(7) == PatchDataset(pairs, 2, 8, seed=1, sampling="area").image_index(7)


def test_sampler_splits_batches_between_ranks() -> None:
    it0 = iter(StepSampler(8, 3, rank=0, world=2))
    it1 = iter(StepSampler(8, 3, rank=1, world=2))
    assert [next(it0) for _ in range(8)] == [24, 25, 26, 27, 32, 33, 34, 35]
    assert [next(it1) for _ in range(4)] == [28, 29, 30, 31]
