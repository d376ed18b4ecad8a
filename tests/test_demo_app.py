"""Tests of esrt.demo.app: the page, its assets and the JSON API through Flask's test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from esrt.demo import STATIC, JobRunner
from esrt.model import ESRT
from tests.demo_support import decode, demo_client, png, post, random_model, upscaled


@pytest.fixture(scope="module")
def model4() -> ESRT:
    return random_model(4)


@pytest.fixture
def client(model4: ESRT, tmp_path: Path) -> Iterator[tuple[FlaskClient, JobRunner]]:
    with demo_client(model4, tmp_path, max_upload_mb=0.05, max_pixels=40 * 40, max_queue=1, keep_jobs=2) as client:
        yield client


def test_page_config_and_no_external_assets(client: tuple[FlaskClient, JobRunner]) -> None:
    c, _ = client
    page = c.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.data
    assert b'id="exact"' in page.data and b"Exact (reference, slower)" in page.data and b'id="fast"' not in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("app.js", "style.css"):
        assert c.get(f"/static/{name}").status_code == 200
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, f"{path.name} refers to another server"
    config = c.get("/api/config").get_json()
    assert config["scales"] == [4] and config["precisions"] == ["fp32", "bf16"] and config["device"] == "cpu"
    assert config["max_upload_bytes"] == int(0.05 * 2**20) and config["max_pixels"] == 1600


def test_upload_poll_and_download(model4: ESRT, tmp_path: Path) -> None:
    with demo_client(model4, tmp_path, max_upload_mb=1, max_pixels=100 * 100, tile=None) as (c, runner):
        data = png((80, 64), 6)
        status, job = post(c, data, "tiny photo.png")
        assert status == 202 and job["state"] in ("queued", "running", "done") and job["exact"] is False
        assert c.get(job["result_url"]).status_code in (409, 200)
        runner.wait_idle()
        job = c.get(f"/api/jobs/{job['id']}").get_json()
        assert job["state"] == "done" and job["progress"] == 1.0, job
        assert job["input_size"] == [80, 64] and job["output_size"] == [320, 256]
        assert c.get(f"/api/jobs/{job['id']}").headers["Cache-Control"] == "no-store"
        result = c.get(job["download_url"])
        assert result.headers["Content-Disposition"].startswith("attachment")
        assert "tiny photo_x4.png" in result.headers["Content-Disposition"]
        np.testing.assert_array_equal(decode(result.data), upscaled(data, model4))  # the fast mode by default
        np.testing.assert_array_equal(decode(c.get(job["input_url"]).data), decode(data))
        status, exact = post(c, data, "tiny photo.png", exact="true")
        assert status == 202 and exact["exact"] is True
        runner.wait_idle()
        got = decode(c.get(exact["result_url"]).data)
        np.testing.assert_array_equal(got, upscaled(data, model4, exact=True))
        assert np.any(got != decode(result.data)), "exact and fast differ on this size"


def test_refusals_have_messages(client: tuple[FlaskClient, JobRunner]) -> None:
    c, runner = client
    status, body = post(c, b"just some notes\n", "notes.txt")
    assert status == 400 and "notes.txt: not an image" in body["error"]
    status, body = post(c, png((41, 40)), "big.png")
    assert status == 400 and "41x40 = 1640 pixels is above the limit of 1600" in body["error"]
    assert "--max-pixels" not in body["error"]  # a CLI hint means nothing on the page
    status, body = post(c, b"\0" * 60_000, "huge.png")
    assert status == 413 and "larger than the limit of 0.05 MB" in body["error"]
    status, body = post(c, png((8, 8)), "a.png", scale="2")
    assert status == 400 and "x2 is not available" in body["error"] and "x4" in body["error"]
    status, body = post(c, png((8, 8)), "a.png", scale="four")
    assert status == 400 and "scale must be an integer" in body["error"]
    status, body = post(c, png((8, 8)), "a.png", precision="fp16")
    assert status == 400 and "precision" in body["error"]
    response = c.post("/api/jobs", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and "no image" in response.get_json()["error"]
    response = c.get("/api/jobs/nope")
    assert response.status_code == 404 and "no such job" in response.get_json()["error"]
    assert c.get("/api/nothing").status_code == 404 and c.delete("/api/jobs").status_code == 405
    assert list(runner.workdir.iterdir()) == [], "refused uploads leave no files behind"


def test_a_full_queue_answers_429_with_the_count(model4: ESRT, tmp_path: Path) -> None:
    with demo_client(model4, tmp_path, max_queue=0) as (c, runner):  # nothing may wait
        status, body = post(c, png((8, 8)), "a.png")
        assert status == 429 and body["error"].startswith("the server is busy: 0 images are waiting")
        assert runner.held() == 0 and list(runner.workdir.iterdir()) == []
