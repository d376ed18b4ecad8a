"""`esrt demo`: a local web page that upscales one image at a time with `esrt.upscale` (Flask, no CDN).

Follows issue 8: uploads are checked (size, pixels, image or not), queued, run one at a time by a worker thread.
"""

from __future__ import annotations

import logging
import math
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from flask import Flask, Response, jsonify, request, send_file
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, make_server

from esrt import __version__

if TYPE_CHECKING:
    import argparse

    from esrt.infer import Precision
    from esrt.model import ESRT

STATIC = Path(__file__).parent / "demo_static"
PRECISIONS = ("fp32", "bf16")
JobState = Literal["queued", "running", "done", "error"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Limits and settings of one demo server; every field has a default."""

    max_upload_mb: float = 25.0  # request bodies above this are refused (HTTP 413)
    max_pixels: int = 2048 * 1024  # input width * height above this is refused (covers 1920x1080)
    max_queue: int = 8  # jobs waiting behind the running one; more are refused (HTTP 429)
    keep_jobs: int = 16  # finished jobs whose files are kept; older ones are deleted
    tile: int | Literal["auto"] | None = "auto"  # esrt.upscale's tile argument (LR pixels per tile side)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class Job:
    """One upload: its state, its progress (0..1) and the folder (inside the server's temp dir) of its files."""

    id: str
    name: str
    scale: int
    precision: Precision
    tta: bool
    folder: Path
    size: tuple[int, int]  # input (width, height)
    pixels: np.ndarray | None = None  # the decoded input until the worker has written its files
    icc: bytes | None = None
    fast: bool = False  # blocked attention (esrt.upscale's fast mode)
    state: JobState = "queued"
    progress: float = 0.0
    message: str = ""
    seconds: float | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def download_name(self) -> str:
        return f"{Path(self.name).stem or 'image'}_x{self.scale}.png"


class _StoppedError(Exception):
    """Raised inside a running job when the server shuts down."""


class _CountingUpscaler:
    """An esrt.infer Upscaler that calls on_call before each network call (one per tile, eight with TTA)."""

    def __init__(self, net: Any, on_call: Any) -> None:
        self.net = net
        self.scale = int(net.scale)
        self.on_call = on_call

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.on_call()
        return self.net(x)


def _expected_calls(size: tuple[int, int], scale: int, tile: int | Literal["auto"] | None, tta: bool) -> int:
    """Network calls esrt.upscale will make for an image of size (w, h): tiles x (8 with TTA)."""
    from esrt.infer import DEFAULT_OVERLAP, auto_tile_size

    w, h = size
    side = auto_tile_size(scale) if tile == "auto" else tile
    tiles = 1
    if side:
        for length in (w, h):
            t = min(side, length)
            tiles *= 1 if length <= t else math.ceil((length - t) / (t - DEFAULT_OVERLAP)) + 1
    return tiles * (8 if tta else 1)


class DemoError(ValueError):
    """A request the demo refuses, with the message shown on the page and its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class JobRunner:
    """A queue of jobs run one at a time by a worker thread; all files live in one temporary folder."""

    def __init__(self, models: Mapping[int, ESRT], config: DemoConfig, workdir: str | Path | None = None) -> None:
        if not models:
            raise ValueError("the demo needs at least one model")
        self.models = dict(sorted(models.items()))
        self.config = config
        self._tmp = tempfile.TemporaryDirectory(prefix="esrt-demo-", dir=workdir)
        self.workdir = Path(self._tmp.name)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="esrt-demo-worker", daemon=True)
        self._worker.start()

    # -- requests ------------------------------------------------------------------------------------------

    def submit(self, upload: Any, name: str, scale: int, precision: str, tta: bool, fast: bool = False) -> Job:
        """Checks and decodes an upload (a file-like object) and queues it; raises DemoError when refused."""
        from esrt.infer import ImageError, read_image

        if scale not in self.models:
            raise DemoError(f"x{scale} is not available; this server has weights for {self._scales_text()}")
        if precision not in PRECISIONS:
            raise DemoError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        with self._lock:
            waiting = sum(job.state == "queued" for job in self._jobs.values())
        if waiting >= self.config.max_queue:
            raise DemoError(f"the server is busy ({waiting} images are waiting); try again in a while", 429)
        job_id = uuid.uuid4().hex
        folder = self.workdir / job_id
        folder.mkdir()
        try:
            path = folder / "upload"
            with open(path, "wb") as f:
                shutil.copyfileobj(upload, f)
            try:
                picture = read_image(path, self.config.max_pixels)
            except ImageError as exc:
                raise DemoError(f"{name}: {str(exc).replace(' (raise --max-pixels)', '')}") from None
            finally:
                path.unlink(missing_ok=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        h, w = picture.pixels.shape[:2]
        precision_ = cast("Precision", precision)
        job = Job(job_id, name, scale, precision_, tta, folder, (w, h), picture.pixels, picture.icc, fast)
        with self._lock:
            self._jobs[job_id] = job
        self._queue.put(job)
        self._forget_old()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise DemoError("no such job (finished jobs are deleted after a while)", 404)
        return job

    def status(self, job: Job) -> dict[str, Any]:
        """The job as the page sees it (JSON)."""
        with self._lock:
            ahead = sum(
                j.state == "running" or (j.state == "queued" and j.created < job.created) for j in self._jobs.values()
            )
        w, h = job.size
        return {
            "id": job.id,
            "name": job.name,
            "state": job.state,
            "progress": round(job.progress, 3),
            "ahead": ahead if job.state == "queued" else 0,
            "message": job.message,
            "scale": job.scale,
            "precision": job.precision,
            "tta": job.tta,
            "fast": job.fast,
            "input_size": [w, h],
            "output_size": [w * job.scale, h * job.scale],
            "seconds": None if job.seconds is None else round(job.seconds, 2),
            "input_url": f"/api/jobs/{job.id}/input",
            "result_url": f"/api/jobs/{job.id}/result",
            "download_url": f"/api/jobs/{job.id}/result?download=1",
            "download_name": job.download_name,
        }

    def scales(self) -> list[int]:
        return list(self.models)

    def _scales_text(self) -> str:
        return ", ".join(f"x{s}" for s in self.models)

    # -- worker --------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            job.state = "running"
            start = time.perf_counter()
            try:
                self._run(job)
                job.state = "done"
            except MemoryError:
                job.message = "out of memory: try a smaller image, or start the demo with a smaller --tile"
                job.state = "error"
            except Exception as exc:  # the page shows one line; the server keeps serving
                lines = str(exc).strip().splitlines()
                job.message = lines[0] if lines else type(exc).__name__
                job.state = "error"
            finally:
                job.pixels = None
                job.seconds = time.perf_counter() - start

    def _run(self, job: Job) -> None:
        import esrt
        from esrt.infer import TorchUpscaler, write_image

        assert job.pixels is not None
        write_image(job.folder / "input.png", job.pixels, job.icc)
        total = _expected_calls(job.size, job.scale, self.config.tile, job.tta)
        calls = 0

        def on_call() -> None:  # before each tile: progress, and the chance to stop
            nonlocal calls
            if self._stopping.is_set():
                raise _StoppedError("the server is shutting down")
            job.progress = min(calls / total, 0.99)
            calls += 1

        net = _CountingUpscaler(TorchUpscaler(self.models[job.scale], job.precision, job.fast), on_call)
        result = esrt.upscale(job.pixels, model=net, tile=self.config.tile, tta=job.tta)
        job.message = "saving"
        write_image(job.folder / "result.png", result, job.icc)
        job.message = ""
        job.progress = 1.0

    def _forget_old(self) -> None:
        """Deletes the files of finished jobs beyond the newest keep_jobs."""
        with self._lock:
            finished = [j for j in self._jobs.values() if j.state in ("done", "error")]
            finished.sort(key=lambda j: j.created)
            old = finished[: max(0, len(finished) - self.config.keep_jobs)]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Blocks until no job is queued or running (for tests and clean shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(j.state in ("done", "error") for j in self._jobs.values()):
                    return
            time.sleep(0.02)
        raise TimeoutError("jobs still running")

    def close(self, wait: float = 30.0) -> None:
        """Stops the worker (a running job stops at its next tile) and deletes the temporary folder."""
        self._stopping.set()
        self._queue.put(None)
        self._worker.join(timeout=wait)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._tmp.cleanup()


def create_app(
    models: Mapping[int, ESRT], config: DemoConfig | None = None, workdir: str | Path | None = None
) -> Flask:
    """The Flask app of the demo: the page (/), its assets (/static/...) and the JSON API (/api/...).

    models: {scale: eval-mode ESRT}. The app's JobRunner is app.extensions["esrt_demo"]; call its close().
    """
    config = config or DemoConfig()
    runner = JobRunner(models, config, workdir)
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.extensions["esrt_demo"] = runner

    @app.after_request
    def _headers(response: Response) -> Response:
        # Everything comes from this server: the page works offline and loads nothing from elsewhere.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(DemoError)
    def _refused(exc: DemoError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return jsonify(error=f"the file is larger than the limit of {config.max_upload_mb:g} MB"), 413

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description or exc.name), exc.code or 500

    @app.get("/")
    def index() -> Response:
        return app.send_static_file("index.html")

    @app.get("/api/config")
    def api_config() -> Response:
        return jsonify(
            version=__version__,
            scales=runner.scales(),
            precisions=list(PRECISIONS),
            max_upload_bytes=config.max_upload_bytes,
            max_pixels=config.max_pixels,
            device=_devices(models),
        )

    @app.post("/api/jobs")
    def api_submit() -> tuple[Response, int]:
        upload = request.files.get("image")
        if upload is None or not upload.filename:
            raise DemoError("no image in the request (form field 'image')")
        try:
            scale = int(request.form.get("scale", runner.scales()[-1]))
        except ValueError:
            raise DemoError("scale must be an integer") from None
        precision = request.form.get("precision", "fp32")
        tta, fast = (request.form.get(k, "false").lower() in ("1", "true", "on", "yes") for k in ("tta", "fast"))
        job = runner.submit(upload.stream, Path(upload.filename).name, scale, precision, tta, fast)
        return jsonify(runner.status(job)), 202

    @app.get("/api/jobs/<job_id>")
    def api_status(job_id: str) -> Response:
        return jsonify(runner.status(runner.get(job_id)))

    @app.get("/api/jobs/<job_id>/input")
    def api_input(job_id: str) -> Response:
        job = runner.get(job_id)
        if job.state not in ("running", "done") or not (job.folder / "input.png").is_file():
            raise DemoError("the input preview is not ready yet", 409)
        return send_file(job.folder / "input.png", mimetype="image/png")

    @app.get("/api/jobs/<job_id>/result")
    def api_result(job_id: str) -> Response:
        job = runner.get(job_id)
        if job.state != "done":
            raise DemoError(f"the result is not ready (job is {job.state})", 409)
        download = request.args.get("download") == "1"
        return send_file(
            job.folder / "result.png", mimetype="image/png", as_attachment=download, download_name=job.download_name
        )

    return app


def load_models(weights: Sequence[str | Path] | None, device: str | None = None) -> dict[int, ESRT]:
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


def parse_tile(value: str | int | None) -> int | Literal["auto"] | None:
    """The --tile option: "auto", 0 or "none" (whole image), or a tile side in LR pixels."""
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, int):
        return value or None
    if value.lower() in ("0", "none"):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--tile must be auto, none or an integer, got {value!r}") from None


def serve(app: Flask, host: str = "127.0.0.1", port: int = 7860) -> BaseWSGIServer:
    """A threaded WSGI server for app on (host, port), not yet serving; port 0 picks a free port."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request: the page polls
    return make_server(host, port, app, threaded=True)


def main(args: argparse.Namespace) -> int:
    """Runs `esrt demo` until interrupted; the temporary folder is removed on exit."""
    defaults = DemoConfig()
    config = DemoConfig(
        max_upload_mb=defaults.max_upload_mb if args.max_upload_mb is None else args.max_upload_mb,
        max_pixels=defaults.max_pixels if args.max_pixels is None else args.max_pixels,
        max_queue=defaults.max_queue if args.queue is None else args.queue,
        tile=parse_tile(args.tile),
    )
    models = load_models(args.weights, args.device)
    app = create_app(models, config)
    runner: JobRunner = app.extensions["esrt_demo"]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl+C
    try:
        server = serve(app, args.host, args.port)
        url = f"http://{_url_host(args.host)}:{server.port}/"
        scales = ", ".join(f"x{s}" for s in models)
        print(f"esrt demo: {scales} on {_devices(models)}")
        if args.host not in ("127.0.0.1", "localhost", "::1"):
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


def _devices(models: Mapping[int, ESRT]) -> str:
    return ", ".join(sorted({str(next(m.parameters()).device) for m in models.values()}))


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
