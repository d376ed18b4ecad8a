"""`esrt demo` itself: the models loaded by scale, the app served on a local port until Ctrl+C or SIGTERM.

The command line is parsed by esrt.cli; the page and its API are esrt.demo.app.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from esrt.demo.app import create_app, devices
from esrt.demo.guard import is_loopback
from esrt.demo.jobs import DemoConfig, JobRunner

if TYPE_CHECKING:
    import argparse

    from esrt.model import ESRT


def load_models_by_scale(weights: Sequence[str | Path] | None, device: str | None = None) -> dict[int, ESRT]:
    """{scale: model} from checkpoint paths (scale detected from each), or the shipped weights of every scale.

    Raises CheckpointError (with load_model's message) when no path is given and no weights are shipped.
    """
    import torch

    from esrt.convert import CheckpointError
    from esrt.model import SCALES
    from esrt.pretrained import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    models: dict[int, ESRT] = {}
    if weights:
        for path in weights:
            model = load_model(path, device=device)
            if model.scale in models:
                raise CheckpointError(f"{path}: a second checkpoint for x{model.scale}; give one per scale")
            models[model.scale] = model
        return models
    error: CheckpointError | None = None
    for scale in SCALES:
        try:
            models[scale] = load_model(None, scale=scale, device=device)
        except CheckpointError as exc:
            error = error or exc
    if not models:
        assert error is not None
        raise CheckpointError(f"{error}. Start the demo with --weights PATH (repeat it for several scales).")
    return models


def serve(app: Flask, host: str = "127.0.0.1", port: int = 7860) -> BaseWSGIServer:
    """A threaded WSGI server for app on (host, port), not yet serving; port 0 picks a free port."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request: the page polls
    return make_server(host, port, app, threaded=True)


def main(args: argparse.Namespace) -> int:
    """Runs `esrt demo` until interrupted; the temporary folder is removed on exit."""
    from esrt.tiling import DEFAULT_OVERLAP, parse_tile, resolve_tile

    defaults = DemoConfig()
    config = DemoConfig(
        max_upload_mb=defaults.max_upload_mb if args.max_upload_mb is None else args.max_upload_mb,
        max_pixels=defaults.max_pixels if args.max_pixels is None else args.max_pixels,
        max_queue=defaults.max_queue if args.queue is None else args.queue,
        tile=parse_tile(args.tile),
        allowed_hosts=tuple(args.allow_host or ()),
    )
    if config.tile != "auto":
        resolve_tile(config.tile, DEFAULT_OVERLAP, 4)  # a bad --tile is an error now, not in every job
    models = load_models_by_scale(args.weights, args.device)
    app = create_app(models, config)
    runner: JobRunner = app.extensions["esrt_demo"]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl+C
    try:
        server = serve(app, args.host, args.port)
        url = f"http://{_url_host(args.host)}:{server.port}/"
        print(f"esrt demo: {', '.join(f'x{s}' for s in models)} on {devices(models)}")
        if not is_loopback(args.host):
            print(f"esrt demo: listening on {args.host}: other machines can reach this page", file=sys.stderr)
        print(f"esrt demo: open {url} (Ctrl+C to stop)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)
        server.serve_forever()  # returns on Ctrl+C or SIGTERM
    finally:
        runner.close()
    print("esrt demo: stopped; temporary files deleted")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
