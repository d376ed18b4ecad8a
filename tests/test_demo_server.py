"""Tests of esrt.demo.server and the served demo: model loading, the CLI, a burst of uploads on loopback, and
the real page end to end in headless Chromium (Selenium through chromedriver)."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from PIL import Image

import esrt.pretrained
from esrt.convert import CheckpointError, save_weights
from esrt.demo import DemoConfig, Job, JobRunner, create_app, load_models_by_scale, serve
from esrt.model import ESRT
from tests.conftest import data_path, fixture_path, missing
from tests.demo_support import png, random_model, upscaled


@pytest.fixture(scope="module")
def model4() -> ESRT:
    return random_model(4)


def test_load_models_by_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_weights(ESRT(2), tmp_path / "x2.safetensors")
    models = load_models_by_scale([tmp_path / "x2.safetensors", fixture_path("esrt_x4_random.pth")], device="cpu")
    assert sorted(models) == [2, 4] and not models[4].training
    with pytest.raises(CheckpointError, match="second checkpoint for x4"):
        load_models_by_scale([fixture_path("esrt_x4_random.pth")] * 2, device="cpu")
    monkeypatch.setattr(esrt.pretrained, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(CheckpointError, match=r"no weights are shipped.*--weights PATH"):
        load_models_by_scale(None, device="cpu")


def test_cli_demo_without_weights_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from esrt.cli import main

    monkeypatch.setattr(esrt.pretrained, "WEIGHTS_DIR", tmp_path)
    assert main(["demo", "--port", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("esrt demo: error: no weights are shipped") and "--weights PATH" in err
    assert main(["demo", "--port", "0", "--tile", "20"]) == 1
    assert capsys.readouterr().err.startswith("esrt demo: error: tile overlap must be between 0 and half the tile")


def test_cli_parses_demo_without_importing_flask_or_torch() -> None:
    code = (
        "import sys; from esrt.cli import build_parser; "
        "a = build_parser().parse_args(['demo', '--weights', 'a.pth', '--weights', 'b.pth', '--port', '0', "
        "'--allow-host', 'box.lan']); "
        "print(a.weights, a.host, a.port, a.allow_host, 'flask' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['a.pth',", "'b.pth']", "127.0.0.1", "0", "['box.lan']", "False", "False"]


@pytest.fixture
def served(model4: ESRT, tmp_path: Path) -> Iterator[tuple[Flask, int]]:
    app = create_app({4: model4}, DemoConfig(max_queue=3), workdir=tmp_path)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, server.port
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["esrt_demo"].close()


def _upload(port: int, data: bytes, name: str) -> tuple[int, str]:
    """POSTs data as the page does, over a new loopback connection; returns (status, error text or job id)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="scale"\r\n\r\n4\r\n--{boundary}--\r\n'.encode()
    )
    origin = f"127.0.0.1:{port}"
    headers = {
        "Host": origin,
        "Origin": f"http://{origin}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/api/jobs", body=body, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        return response.status, answer.get("error") or answer["id"]
    finally:
        connection.close()


def _until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_burst_of_uploads_never_holds_more_than_the_queue(served: tuple[Flask, int]) -> None:
    app, port = served
    runner: JobRunner = app.extensions["esrt_demo"]
    release = threading.Event()

    def held_run(job: Job) -> None:  # the running job stays running until released; no model runs
        assert release.wait(60)

    runner._run = held_run  # type: ignore[method-assign]
    first = _upload(port, png((8, 8)), "first.png")
    assert first[0] == 202
    _until(lambda: runner.get(first[1]).state == "running", "the first job to run")

    data, count = png((512, 512), 1), 30  # 770 KB each: reading and decoding one takes a while
    start = threading.Barrier(count, timeout=30)
    answers: list[tuple[int, str]] = []
    peak = 0
    done = threading.Event()

    def client(i: int) -> None:
        start.wait()
        answers.append(_upload(port, data, f"{i}.png"))

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, runner.held())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(count)]
    began = time.monotonic()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(max(1.0, began + 60 - time.monotonic()))
    done.set()
    watcher.join(10)
    assert len(answers) == count, "every upload gets an answer within a minute"
    accepted = [text for status, text in answers if status == 202]
    refused = [text for status, text in answers if status != 202]
    assert len(accepted) == 3, f"{len(accepted)} uploads accepted behind the running one, the queue holds 3"
    assert peak <= 4 and runner.held() == 4  # queue + 1: three waiting, one running
    assert all(text.startswith("the server is busy: 3 images are waiting") for text in refused), set(refused)
    assert sorted(p.name for p in runner.workdir.iterdir()) == sorted([first[1], *accepted])  # no stray files
    release.set()
    runner.wait_idle()


# ------------------------------------------------------------------------------------------------------------
# End to end: the real page in headless Chromium, driven by Selenium through chromedriver


def _browser() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing("no headless browser (chromium and chromedriver)", "install Debian's chromium and chromium-driver")
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


@pytest.mark.slow
def test_page_end_to_end_in_chromium(browser: object, model4: ESRT, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    lr = tmp_path / "baby_crop.png"
    baby = data_path("Set5", "LR_bicubic", "X4", "baby.png")
    Image.open(baby).convert("RGB").crop((40, 40, 88, 88)).save(lr)  # 48x48 of the Set5 x4 LR image
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    app = create_app({4: model4}, DemoConfig(tile=None), workdir=tmp_path)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.port}/"
    find = driver.find_element  # type: ignore[attr-defined]
    state = lambda: find(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
    try:
        driver.get(url)  # type: ignore[attr-defined]
        _until(lambda: state() == "idle", "the page to load its config", 60)
        Select(find(By.ID, "scale")).select_by_value("4")
        find(By.ID, "file").send_keys(str(lr))
        _until(lambda: state() in ("done", "error"), "the upscale to finish", 60)
        assert state() == "done", find(By.ID, "error").text
        natural = driver.execute_script("return [after.naturalWidth, after.naturalHeight]")  # type: ignore[attr-defined]
        assert natural == [192, 192]
        find(By.ID, "download").click()
        downloaded = driver.downloads / "baby_crop_x4.png"  # type: ignore[attr-defined]
        _until(downloaded.is_file, "the download", 60)
        got = np.asarray(Image.open(downloaded))
        assert got.shape == (192, 192, 3)  # 4x the 48x48 input
        np.testing.assert_array_equal(got, upscaled(lr.read_bytes(), model4))

        find(By.ID, "file").send_keys(str(text))
        _until(lambda: state() == "error", "the error message", 60)
        error = find(By.ID, "error")
        assert error.is_displayed() and "notes.txt: not an image" in error.text
        with urllib.request.urlopen(url + "api/config", timeout=10) as response:  # the server is still up
            assert json.load(response)["scales"] == [4]
        find(By.ID, "exact").click()  # the reference attention, opted in
        find(By.ID, "file").send_keys(str(lr))
        _until(lambda: state() in ("done", "error"), "the second upscale", 60)
        assert state() == "done" and not find(By.ID, "error").is_displayed()
        assert " exact" in find(By.ID, "result-info").text
    finally:
        server.shutdown()
        app.extensions["esrt_demo"].close()
