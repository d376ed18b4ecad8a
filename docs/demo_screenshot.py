"""Takes docs/demo.png: the `esrt demo` page in headless Chromium after one upscale, slider in the middle.

Run: python docs/demo_screenshot.py --weights W.safetensors --image IMG.png [--out docs/demo.png]; needs
chromium, chromium-driver and selenium (the dev extra), like tests/test_demo_server.py.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from esrt.demo import DemoConfig, create_app, load_models_by_scale, serve

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot of the esrt demo page after one upscale.")
    parser.add_argument("--weights", required=True, action="append", help="checkpoint(s) for the demo")
    parser.add_argument("--image", type=Path, required=True, help="the image to upscale")
    parser.add_argument("--scale", type=int, default=None, help="scale to pick on the page (default: largest)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "demo.png")
    parser.add_argument("--size", default="1000,800", help="browser window width,height")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    models = load_models_by_scale(args.weights, device="cpu")
    app = create_app(models, DemoConfig())
    server = serve(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome") or "chromium"
    profile = tempfile.TemporaryDirectory(prefix="esrt-chromium-")
    for flag in (*FLAGS, f"--window-size={args.size}", f"--user-data-dir={profile.name}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(f"http://127.0.0.1:{server.port}/")
        state = lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
        while state() != "idle":
            time.sleep(0.05)
        Select(driver.find_element(By.ID, "scale")).select_by_value(str(args.scale or max(models)))
        driver.find_element(By.ID, "file").send_keys(str(args.image.resolve()))
        while state() not in ("done", "error"):
            time.sleep(0.1)
        width, height = (int(v) for v in args.size.split(","))
        height = max(height, driver.execute_script("return document.documentElement.scrollHeight"))
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the whole page, no scrolling
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        server.shutdown()
        app.extensions["esrt_demo"].close()
        profile.cleanup()
    # an adaptive palette keeps the README's picture small; the page is mostly flat colour
    shot = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    shot.save(args.out, optimize=True)
    print(f"{args.out}: {shot.size[0]}x{shot.size[1]}, {args.out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
