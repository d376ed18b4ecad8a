"""Shared test fixtures: paths into ../shared and a fixed seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official"
DATA = SHARED / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
