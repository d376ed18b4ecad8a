"""Training data: HR folders, cached MATLAB-bicubic LR images, aligned random patches with flips/rotations.

Follows the paper's training recipe (docs/training.md); sampling is a pure function of
(seed, sample index), so a resumed run sees exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from esrt.atomic import atomic_path
from esrt.images import find_images, modcrop, read_rgb

load_rgb = read_rgb  # the training images' reader (esrt.images: EXIF orientation applied, 16 bits to 8)


@dataclass(frozen=True)
class Pair:
    """One training image: modcropped HR and its bicubic LR, both uint8 (H, W, 3)."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def _cache_key(content: str, scale: int, factor: float = 1.0) -> str:
    """Cache name of an image's arrays: its content digest (copies and re-mounts keep their cache), scale, factor."""
    text = f"{content}|x{scale}|matlab-bicubic-v3"  # v2: EXIF applied; v3: keyed by content, not path and mtime
    if factor != 1:
        text += f"|hr*{factor!r}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _cached(file: Path | None, make: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    """make(*args), read from file when it is there, else computed and written there (atomically); None: no cache."""
    if file is not None and file.is_file():
        return np.load(file)
    array = make(*args)
    if file is not None:
        with atomic_path(file) as tmp, tmp.open("wb") as f:
            np.save(f, array)
    return array


def load_pairs(
    folders: Sequence[str | Path],
    scale: int,
    min_lr_size: int,
    cache_dir: str | Path | None = None,
    hr_scales: Sequence[float] = (1.0,),
) -> tuple[list[Pair], list[str]]:
    """HR/LR pairs of every image in folders, and the names of images skipped as too small.

    Each image gives one pair per factor in hr_scales: the HR resized by that factor (1: as it is), modcropped,
    and its LR, the MATLAB-bicubic downscale (esrt.imresize) by 1/scale; resized HRs and LRs are cached as .npy
    in cache_dir.
    """
    from esrt.imresize import imresize, resized_length

    pairs: list[Pair] = []
    skipped: list[str] = []
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    for path in find_images(folders):
        original = read_rgb(path)
        content = hashlib.sha1(path.read_bytes()).hexdigest()
        for factor in hr_scales:
            if min(resized_length(side, factor) for side in original.shape[:2]) // scale < min_lr_size:
                skipped.append(str(path) if factor == 1 else f"{path} at {factor:g}")
                continue
            key = _cache_key(content, scale, factor)
            if factor == 1:
                name, lr_file, hr = path.name, f"{path.stem}-{key}.npy", modcrop(original, scale)
            else:
                name, lr_file = f"{path.name}@{factor:g}", f"{path.stem}-lr-{key}.npy"
                hr = modcrop(_cached(cache and cache / f"{path.stem}-hr-{key}.npy", imresize, original, factor), scale)
            lr = _cached(cache and cache / lr_file, imresize, hr, 1 / scale)
            pairs.append(Pair(name, hr, lr))
    return pairs, skipped


def augment(image: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """Flips and 90-degree rotation (as a transpose): the 8 symmetries of the square."""
    if hflip:
        image = image[:, ::-1]
    if vflip:
        image = image[::-1]
    if transpose:
        image = image.transpose(1, 0, 2)
    return image


class PatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item g (a global sample index) is an aligned (LR p x p, HR sp x sp) pair of float tensors in [0, 1].

    Which image, where, and which flips are all drawn from a generator seeded by (seed, g): resumable.
    sampling "image": images are visited in a fresh permutation each pass over the data (seeded by (seed,
    pass)), each equally often; "area": each patch picks its image with probability proportional to the
    number of patch positions in it, so a large photograph counts by its pixels, not as one image.
    """

    def __init__(self, pairs: Sequence[Pair], scale: int, patch: int, seed: int = 0, sampling: str = "image") -> None:
        if not pairs:
            raise ValueError("no training images large enough for the patch size")
        if sampling not in ("image", "area"):
            raise ValueError(f"sampling must be image or area, got {sampling!r}")
        self.pairs = list(pairs)
        self.scale = scale
        self.patch = patch
        self.seed = seed
        self.sampling = sampling
        positions = [(p.lr.shape[0] - patch + 1) * (p.lr.shape[1] - patch + 1) for p in self.pairs]
        self._cumulative = np.cumsum(np.array(positions, dtype=np.float64))

    def __len__(self) -> int:
        return 2**62  # indexed by global sample number; the sampler decides which ones

    def image_index(self, g: int) -> int:
        if self.sampling == "area":
            u = np.random.default_rng([self.seed, 3, g]).random() * self._cumulative[-1]
            return int(np.searchsorted(self._cumulative, u, side="right"))
        n = len(self.pairs)
        order = np.random.default_rng([self.seed, 1, g // n]).permutation(n)
        return int(order[g % n])

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[self.image_index(g)]
        rng = np.random.default_rng([self.seed, 2, g])
        p, s = self.patch, self.scale
        h, w = pair.lr.shape[:2]
        y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        flips = rng.integers(0, 2, size=3).astype(bool)
        lr = augment(pair.lr[y : y + p, x : x + p], *flips)
        hr = augment(pair.hr[y * s : (y + p) * s, x * s : (x + p) * s], *flips)
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255)  # noqa: E731
        return to_tensor(lr), to_tensor(hr)


class StepSampler(Sampler[int]):
    """Global sample indices for iterations start, start+1, ...: this rank's share of each batch."""

    def __init__(self, batch: int, start_iteration: int, rank: int = 0, world: int = 1) -> None:
        if batch % world:
            raise ValueError(f"batch {batch} is not divisible by the {world} processes")
        self.batch, self.start, self.rank, self.world = batch, start_iteration, rank, world

    def __iter__(self) -> Iterator[int]:
        share = self.batch // self.world
        it = self.start
        while True:
            first = it * self.batch + self.rank * share
            yield from range(first, first + share)
            it += 1

    def __len__(self) -> int:
        return 2**62
