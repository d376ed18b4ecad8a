"""Shared test fixtures: where the benchmark sets and reference fixtures live, and a fixed seed.

A test that needs data it cannot find skips, saying what is missing and how to provide it; under CI=true it fails.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import NoReturn

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"

# The benchmark sets (Set5/, Set14/, BSD100/, each with HR/ and LR_bicubic/X{2,3,4}/): $ESRT_DATA, else ./datasets.
DATA = Path(os.environ.get("ESRT_DATA") or REPO / "datasets")
# The reference fixtures (random-weight reference checkpoints and their inputs/outputs): $ESRT_FIXTURES, else
# the folder "fixtures/official" beside the data folder (links resolved).
OFFICIAL = Path(os.environ.get("ESRT_FIXTURES") or DATA.resolve().parent / "fixtures" / "official")

HOW_DATA = "set ESRT_DATA to the folder holding Set5/, Set14/ and BSD100/ (docs/evaluation.md)"
HOW_FIXTURES = "set ESRT_FIXTURES to the reference fixtures folder (docs/development.md)"

# Marks a test of the flush-to-zero control, which only x86 CPUs have (esrt.runtime.flush_denormals).
x86_only = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="flush-to-zero is an x86 control"
)


def missing(what: str, how: str) -> NoReturn:
    """Skips the calling test because `what` is missing (fails it when CI=true: CI must not pass by skipping)."""
    message = f"{what}: {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def data_path(*parts: str) -> Path:
    """DATA/parts... (DATA itself with no parts), or skip (fail in CI) naming the missing path."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        missing(f"benchmark data not found ({path})", HOW_DATA)
    return path


def fixture_path(name: str) -> Path:
    """OFFICIAL/name, or skip (fail in CI) naming the missing file."""
    path = OFFICIAL / name
    if not path.exists():
        missing(f"reference fixture not found ({path})", HOW_FIXTURES)
    return path


@pytest.fixture
def data_root() -> Path:
    """The benchmark sets' folder (skips, or fails in CI, when it has no Set5)."""
    data_path("Set5")
    return DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
