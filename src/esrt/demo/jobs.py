"""The demo's job queue: uploads checked and decoded, queued, and run one at a time by a worker thread.

Each job is one `esrt.upscale` call; its progress is counted in network calls (tiles, eight per tile with TTA).
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from esrt.images import ImageError, read_image, write_image
from esrt.runtime import Precision, check_precision
from esrt.tiling import DEFAULT_OVERLAP, Tile, resolve_tile, tile_layout

if TYPE_CHECKING:
    from esrt.model import ESRT
    from esrt.upscale import Upscaler

JobState = Literal["queued", "running", "done", "error"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Limits and settings of one demo server; every field has a default."""

    max_upload_mb: float = 25.0  # request bodies above this are refused (HTTP 413)
    max_pixels: int = 2048 * 1024  # input width * height above this is refused (covers 1920x1080)
    max_queue: int = 8  # jobs waiting behind the running one; more are refused (HTTP 429)
    keep_jobs: int = 16  # finished jobs whose files are kept; older ones are deleted
    tile: Tile = "auto"  # esrt.upscale's tile argument (LR pixels per tile side)
    allowed_hosts: tuple[str, ...] = ()  # names the page may be reached under besides its address (demo.guard)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class DemoError(ValueError):
    """A request the demo refuses, with the message shown on the page and its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
    exact: bool = False  # the reference attention instead of esrt.upscale's default (fast) mode
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


class JobRunner:
    """A queue of jobs run one at a time by a worker thread; all files live in one temporary folder.

    At most config.max_queue jobs wait behind the running one: an upload takes its place in the queue
    (under the lock that counts the queue) before it is decoded, so no more than max_queue + 1 decoded
    images are ever held, however many uploads arrive at once.
    """

    def __init__(self, models: Mapping[int, ESRT], config: DemoConfig, workdir: str | Path | None = None) -> None:
        if not models:
            raise ValueError("the demo needs at least one model")
        self.models = dict(sorted(models.items()))
        self.config = config
        self._tmp = tempfile.TemporaryDirectory(prefix="esrt-demo-", dir=workdir)
        self.workdir = Path(self._tmp.name)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()  # guards _jobs, _reserved and every job's state
        self._reserved = 0  # uploads holding a place in the queue while they are decoded
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="esrt-demo-worker", daemon=True)
        self._worker.start()

    # -- requests ------------------------------------------------------------------------------------------

    def submit(
        self, upload: IO[bytes], name: str, scale: int, precision: str, tta: bool = False, exact: bool = False
    ) -> Job:
        """Checks, decodes and queues an upload (a binary file object); raises DemoError when refused."""
        if scale not in self.models:
            raise DemoError(f"x{scale} is not available; this server has weights for {self._scales_text()}")
        try:
            checked = check_precision(precision)
        except ValueError as exc:
            raise DemoError(str(exc)) from None
        self._reserve()
        try:
            job = self._decode(upload, name, scale, checked, tta, exact)
        except BaseException:
            with self._lock:
                self._reserved -= 1
            raise
        with self._lock:  # the reservation becomes the job in one step: the count never drops in between
            self._reserved -= 1
            self._jobs[job.id] = job
            self._queue.put(job)
        self._forget_old()
        return job

    def _reserve(self) -> None:
        """Takes a place in the queue, or raises DemoError (429) saying how many images are waiting."""
        with self._lock:
            waiting = self._reserved + sum(job.state == "queued" for job in self._jobs.values())
            if waiting >= self.config.max_queue:
                images = "1 image is" if waiting == 1 else f"{waiting} images are"
                raise DemoError(f"the server is busy: {images} waiting, the most it queues; try again later", 429)
            self._reserved += 1

    def _decode(self, upload: IO[bytes], name: str, scale: int, precision: Precision, tta: bool, exact: bool) -> Job:
        """The upload as a queued Job with its pixels, in a new folder (removed again when it is refused)."""
        job_id = uuid.uuid4().hex
        folder = self.workdir / job_id
        folder.mkdir()
        path = folder / "upload"
        try:
            with open(path, "wb") as f:
                shutil.copyfileobj(upload, f)
            picture = read_image(path, self.config.max_pixels)
        except ImageError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise DemoError(f"{name}: {str(exc).replace(' (raise --max-pixels)', '')}") from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        path.unlink()
        h, w = picture.pixels.shape[:2]
        return Job(job_id, name, scale, precision, tta, folder, (w, h), picture.pixels, picture.icc, exact)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise DemoError("no such job (finished jobs are deleted after a while)", 404)
        return job

    def held(self) -> int:
        """Jobs queued or running, and uploads holding a place in the queue while they are decoded."""
        with self._lock:
            return self._reserved + sum(job.state in ("queued", "running") for job in self._jobs.values())

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
            "exact": job.exact,
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
            with self._lock:
                job.state = "running"
            start = time.perf_counter()
            state: JobState = "error"
            try:
                self._run(job)
                state = "done"
            except MemoryError:
                job.message = "out of memory: try a smaller image, or start the demo with a smaller --tile"
            except Exception as exc:  # the page shows one line; the server keeps serving
                lines = str(exc).strip().splitlines()
                job.message = lines[0] if lines else type(exc).__name__
            finally:
                job.pixels = None
                job.seconds = time.perf_counter() - start
                with self._lock:
                    job.state = state

    def _run(self, job: Job) -> None:
        from esrt.upscale import load_upscaler, upscale_pixels

        assert job.pixels is not None
        write_image(job.folder / "input.png", job.pixels, job.icc)
        total = expected_calls(job.size, job.scale, self.config.tile, job.tta)
        calls = 0

        def on_call() -> None:  # before each tile: progress, and the chance to stop
            nonlocal calls
            if self._stopping.is_set():
                raise _StoppedError("the server is shutting down")
            job.progress = min(calls / total, 0.99)
            calls += 1

        net = load_upscaler(self.models[job.scale], precision=job.precision, exact=job.exact)
        result = upscale_pixels(job.pixels, _CountingUpscaler(net, on_call), tile=self.config.tile, tta=job.tta)
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
            if self.held() == 0:
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


class _CountingUpscaler:
    """An Upscaler that calls on_call before each network call of the one it wraps."""

    def __init__(self, net: Upscaler, on_call: Callable[[], None]) -> None:
        self.net = net
        self.scale = net.scale
        self.name = getattr(net, "name", "the model")  # errors about the network's output name its weights
        self.on_call = on_call

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.on_call()
        return self.net(x)


def expected_calls(size: tuple[int, int], scale: int, tile: Tile, tta: bool) -> int:
    """Network calls esrt.upscale makes for an image of size (w, h): its tiles, times 8 with TTA."""
    side = resolve_tile(tile, DEFAULT_OVERLAP, scale)
    tiles = 1
    if side:
        for length in size:
            tiles *= len(tile_layout(length, side, DEFAULT_OVERLAP)[1])
    return tiles * (8 if tta else 1)
