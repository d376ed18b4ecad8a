"""Tests of esrt.demo: the HTTP API with Flask's test client, and the page end to end in headless Chromium."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

import esrt
import esrt.pretrained
from esrt.convert import CheckpointError, save_weights
from esrt.demo import STATIC, DemoConfig, JobRunner, create_app, load_models, serve
from esrt.model import ESRT
from tests.conftest import DATA, OFFICIAL

BABY = DATA / "Set5" / "LR_bicubic" / "X4" / "baby.png"


@pytest.fixture(scope="module")
def model4() -> ESRT:
    import torch

    torch.manual_seed(0)
    return ESRT(4).eval()  # random weights: the demo must reproduce esrt.upscale, not make a nice picture


def _png(size: tuple[int, int], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _client(model: ESRT, tmp_path: Path, **config: object) -> Iterator[tuple[FlaskClient, JobRunner]]:
    app = create_app({4: model}, DemoConfig(**config), workdir=tmp_path)  # type: ignore[arg-type]
    runner: JobRunner = app.extensions["esrt_demo"]
    try:
        yield app.test_client(), runner
    finally:
        runner.close()
    assert not runner.workdir.exists(), "the temporary folder must be deleted on close"


@pytest.fixture
def client(model4: ESRT, tmp_path: Path) -> Iterator[tuple[FlaskClient, JobRunner]]:
    yield from _client(model4, tmp_path, max_upload_mb=0.05, max_pixels=40 * 40, max_queue=1, keep_jobs=2)


def _post(client: FlaskClient, data: bytes, name: str, **form: str) -> tuple[int, dict]:
    fields = {"image": (io.BytesIO(data), name), "scale": "4", "precision": "fp32", **form}
    response = client.post("/api/jobs", data=fields, content_type="multipart/form-data")
    return response.status_code, response.get_json()


def test_page_config_and_no_external_assets(client: tuple[FlaskClient, JobRunner]) -> None:
    c, _ = client
    page = c.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("app.js", "style.css"):
        assert c.get(f"/static/{name}").status_code == 200
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, f"{path.name} refers to another server"
    config = c.get("/api/config").get_json()
    assert config["scales"] == [4] and config["precisions"] == ["fp32", "bf16"]
    assert config["max_upload_bytes"] == int(0.05 * 2**20) and config["max_pixels"] == 1600


def test_upscale_job_matches_esrt_upscale(client: tuple[FlaskClient, JobRunner], model4: ESRT) -> None:
    c, runner = client
    data = _png((20, 14))
    status, job = _post(c, data, "tiny photo.png")
    assert status == 202 and job["state"] in ("queued", "running", "done")
    assert c.get(job["result_url"]).status_code in (409, 200)
    runner.wait_idle()
    job = c.get(f"/api/jobs/{job['id']}").get_json()
    assert job["state"] == "done" and job["progress"] == 1.0, job
    assert job["input_size"] == [20, 14] and job["output_size"] == [80, 56]
    result = c.get(job["download_url"])
    assert result.headers["Content-Disposition"].startswith("attachment")
    assert "tiny photo_x4.png" in result.headers["Content-Disposition"]
    got = np.asarray(Image.open(io.BytesIO(result.data)))
    want = np.asarray(esrt.upscale(Image.open(io.BytesIO(data)), model=model4))
    assert got.shape == (56, 80, 3)
    np.testing.assert_array_equal(got, want)
    before = Image.open(io.BytesIO(c.get(job["input_url"]).data))
    np.testing.assert_array_equal(np.asarray(before), np.asarray(Image.open(io.BytesIO(data))))


def test_precision_and_tta_reach_esrt_upscale(client: tuple[FlaskClient, JobRunner], model4: ESRT) -> None:
    c, runner = client
    data = _png((10, 8), 5)
    status, job = _post(c, data, "small.png", precision="bf16", tta="true")
    assert status == 202 and job["precision"] == "bf16" and job["tta"] is True
    runner.wait_idle()
    got = np.asarray(Image.open(io.BytesIO(c.get(job["result_url"]).data)))
    want = esrt.upscale(Image.open(io.BytesIO(data)), model=model4, precision="bf16", tta=True)
    np.testing.assert_array_equal(got, np.asarray(want))
    plain = np.asarray(esrt.upscale(Image.open(io.BytesIO(data)), model=model4))
    assert np.any(got != plain), "bf16 + TTA must change the result"


@pytest.fixture
def wide_client(model4: ESRT, tmp_path: Path) -> Iterator[tuple[FlaskClient, JobRunner]]:
    yield from _client(model4, tmp_path, max_upload_mb=1, max_pixels=100 * 100)


def test_fast_mode_reaches_esrt_upscale(wide_client: tuple[FlaskClient, JobRunner], model4: ESRT) -> None:
    c, runner = wide_client
    data = _png((80, 64), 6)  # 5120 tokens: chunks of 1280 > the fast mode's 1024
    status, job = _post(c, data, "wide.png", fast="true")
    assert status == 202 and job["fast"] is True
    runner.wait_idle()
    got = np.asarray(Image.open(io.BytesIO(c.get(job["result_url"]).data)))
    want = esrt.upscale(Image.open(io.BytesIO(data)), model=model4, fast=True)
    np.testing.assert_array_equal(got, np.asarray(want))
    plain = np.asarray(esrt.upscale(Image.open(io.BytesIO(data)), model=model4))
    assert np.any(got != plain), "the fast mode must change the result on this size"


def test_refusals_have_messages(client: tuple[FlaskClient, JobRunner]) -> None:
    c, runner = client
    status, body = _post(c, b"just some notes\n", "notes.txt")
    assert status == 400 and "notes.txt: not an image" in body["error"]
    status, body = _post(c, _png((41, 40)), "big.png")
    assert status == 400 and "41x40 = 1640 pixels is above the limit of 1600" in body["error"]
    assert "--max-pixels" not in body["error"]  # a CLI hint means nothing on the page
    status, body = _post(c, b"\0" * 60_000, "huge.png")
    assert status == 413 and "larger than the limit of 0.05 MB" in body["error"]
    status, body = _post(c, _png((8, 8)), "a.png", scale="2")
    assert status == 400 and "x2 is not available" in body["error"] and "x4" in body["error"]
    status, body = _post(c, _png((8, 8)), "a.png", precision="fp16")
    assert status == 400 and "precision" in body["error"]
    response = c.post("/api/jobs", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and "no image" in response.get_json()["error"]
    response = c.get("/api/jobs/nope")
    assert response.status_code == 404 and "no such job" in response.get_json()["error"]
    assert list(runner.workdir.iterdir()) == [], "refused uploads leave no files behind"


def test_one_job_at_a_time_with_a_bounded_queue(client: tuple[FlaskClient, JobRunner]) -> None:
    c, runner = client
    release = threading.Event()
    running: list[str] = []
    real_run = runner._run

    def slow_run(job: object) -> None:
        running.append(job.id)  # type: ignore[attr-defined]
        assert release.wait(30)
        real_run(job)  # type: ignore[arg-type]

    runner._run = slow_run  # type: ignore[method-assign]
    first = _post(c, _png((8, 8), 1), "first.png")[1]
    while not running:
        time.sleep(0.01)
    second = _post(c, _png((8, 8), 2), "second.png")[1]
    assert second["state"] == "queued" and second["ahead"] == 1
    status, body = _post(c, _png((8, 8), 3), "third.png")
    assert status == 429 and "busy" in body["error"]
    assert c.get(f"/api/jobs/{first['id']}").get_json()["state"] == "running"
    release.set()
    runner.wait_idle()
    assert running == [first["id"], second["id"]]
    for job in (first, second):
        assert c.get(f"/api/jobs/{job['id']}").get_json()["state"] == "done"


def test_old_jobs_are_deleted(client: tuple[FlaskClient, JobRunner]) -> None:
    c, runner = client
    ids = []
    for seed in range(4):
        ids.append(_post(c, _png((6, 6), seed), f"{seed}.png")[1]["id"])
        runner.wait_idle()
    assert sorted(p.name for p in runner.workdir.iterdir()) == sorted(ids[-3:])  # keep_jobs=2 + the new one
    assert c.get(f"/api/jobs/{ids[0]}").status_code == 404


def test_load_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_weights(ESRT(2), tmp_path / "x2.safetensors")
    models = load_models([tmp_path / "x2.safetensors", OFFICIAL / "esrt_x4_random.pth"], device="cpu")
    assert sorted(models) == [2, 4] and not models[4].training
    with pytest.raises(CheckpointError, match="second checkpoint for x4"):
        load_models([OFFICIAL / "esrt_x4_random.pth"] * 2, device="cpu")
    monkeypatch.setattr(esrt.pretrained, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(CheckpointError, match=r"no weights are shipped.*--weights PATH"):
        load_models(None, device="cpu")


def test_cli_demo_without_weights_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from esrt.cli import main

    monkeypatch.setattr(esrt.pretrained, "WEIGHTS_DIR", tmp_path)
    assert main(["demo", "--port", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("esrt demo: error: no weights are shipped") and "--weights PATH" in err


def test_cli_parses_demo_without_importing_flask_or_torch() -> None:
    code = (
        "import sys; from esrt.cli import build_parser; "
        "a = build_parser().parse_args(['demo', '--weights', 'a.pth', '--weights', 'b.pth', '--port', '0']); "
        "print(a.weights, a.host, a.port, 'flask' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['a.pth',", "'b.pth']", "127.0.0.1", "0", "False", "False"]


# ------------------------------------------------------------------------------------------------------------
# End to end: the real page in headless Chromium, driven by Selenium through chromedriver


def _browser() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (see .ci/run)")
    return chromium, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    chromium, driver_path = _browser()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


def _wait(condition: object, what: str, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_end_to_end_in_chromium(browser: object, model4: ESRT, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    lr = tmp_path / "baby_crop.png"
    Image.open(BABY).convert("RGB").crop((40, 40, 88, 88)).save(lr)  # 48x48 of the Set5 x4 LR image
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    app = create_app({4: model4}, DemoConfig(), workdir=tmp_path)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.port}/"
    find = driver.find_element  # type: ignore[attr-defined]
    state = lambda: find(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
    try:
        driver.get(url)  # type: ignore[attr-defined]
        _wait(lambda: state() == "idle", "the page to load its config")
        Select(find(By.ID, "scale")).select_by_value("4")
        find(By.ID, "file").send_keys(str(lr))
        _wait(lambda: state() in ("done", "error"), "the upscale to finish")
        assert state() == "done", find(By.ID, "error").text
        natural = driver.execute_script("return [after.naturalWidth, after.naturalHeight]")  # type: ignore[attr-defined]
        assert natural == [192, 192]
        find(By.ID, "download").click()
        downloaded = driver.downloads / "baby_crop_x4.png"  # type: ignore[attr-defined]
        _wait(downloaded.is_file, "the download")
        got = np.asarray(Image.open(downloaded))
        assert got.shape == (192, 192, 3)  # 4x the 48x48 input
        np.testing.assert_array_equal(got, np.asarray(esrt.upscale(Image.open(lr), model=model4)))

        find(By.ID, "file").send_keys(str(text))
        _wait(lambda: state() == "error", "the error message")
        error = find(By.ID, "error")
        assert error.is_displayed() and "notes.txt: not an image" in error.text
        with urllib.request.urlopen(url + "api/config", timeout=10) as response:  # the server is still up
            assert json.load(response)["scales"] == [4]
        find(By.ID, "file").send_keys(str(lr))
        _wait(lambda: state() in ("done", "error"), "the second upscale")
        assert state() == "done" and not find(By.ID, "error").is_displayed()
    finally:
        server.shutdown()
        app.extensions["esrt_demo"].close()
