"""Helpers shared by the tests of esrt.demo: a small model, PNG bytes, an app with its runner, form posts."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask.testing import FlaskClient
from PIL import Image

from esrt.demo import DemoConfig, JobRunner, create_app
from esrt.model import ESRT
from esrt.upscale import upscale


def random_model(scale: int = 4) -> ESRT:
    """An eval-mode ESRT with seeded random weights: the demo must reproduce esrt.upscale, not make nice pictures."""
    torch.manual_seed(0)
    return ESRT(scale).eval()


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    """A PNG of random RGB pixels, size (width, height)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def upscaled(data: bytes, model: ESRT, **options: Any) -> np.ndarray:
    """What esrt.upscale makes of the image file data, whole (tile=None) unless told: a demo job's result."""
    return np.asarray(upscale(Image.open(io.BytesIO(data)), model=model, **{"tile": None, **options}))


@contextmanager
def demo_client(model: ESRT, tmp_path: Path, **config: object) -> Iterator[tuple[FlaskClient, JobRunner]]:
    """A test client of the demo app serving {4: model}, and its runner; checks the temp folder is deleted."""
    app = create_app({4: model}, DemoConfig(**config), workdir=tmp_path)  # type: ignore[arg-type]
    runner: JobRunner = app.extensions["esrt_demo"]
    try:
        yield app.test_client(), runner
    finally:
        runner.close()
    assert not runner.workdir.exists(), "the temporary folder must be deleted on close"


def post(
    client: FlaskClient, data: bytes, name: str, headers: dict[str, str] | None = None, **form: str
) -> tuple[int, dict[str, Any]]:
    """POSTs an upload to /api/jobs; returns (status code, JSON body)."""
    fields = {"image": (io.BytesIO(data), name), "scale": "4", "precision": "fp32", **form}
    response = client.post("/api/jobs", data=fields, content_type="multipart/form-data", headers=headers or {})
    return response.status_code, response.get_json()
