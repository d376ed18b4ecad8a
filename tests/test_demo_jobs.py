"""Tests of esrt.demo.jobs: jobs reproduce esrt.upscale, run one at a time, the queue is bounded, files are freed."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from esrt.demo import DemoConfig, DemoError, Job, JobRunner
from esrt.demo.jobs import expected_calls
from esrt.model import ESRT
from tests.demo_support import decode, png, random_model, upscaled


@pytest.fixture(scope="module")
def model4() -> ESRT:
    return random_model(4)


@pytest.fixture
def runner(model4: ESRT, tmp_path: Path) -> Iterator[JobRunner]:
    runner = JobRunner({4: model4}, DemoConfig(max_pixels=100 * 100, max_queue=1, keep_jobs=2, tile=None), tmp_path)
    try:
        yield runner
    finally:
        runner.close()
    assert not runner.workdir.exists(), "the temporary folder must be deleted on close"


def _submit(runner: JobRunner, data: bytes, name: str = "a.png", **options: object) -> Job:
    options = {"scale": 4, "precision": "fp32", **options}
    return runner.submit(io.BytesIO(data), name, **options)  # type: ignore[arg-type]


def _result(job: Job) -> np.ndarray:
    assert job.state == "done", job.message
    return decode((job.folder / "result.png").read_bytes())


def test_fast_mode_is_the_default_and_exact_is_asked_for(runner: JobRunner, model4: ESRT) -> None:
    data = png((80, 64), 6)  # 5120 tokens: the attention's chunks of 1280 are above the fast mode's cap of 1024
    fast = _submit(runner, data, "wide.png")
    runner.wait_idle()
    exact = _submit(runner, data, "wide.png", exact=True)
    runner.wait_idle()
    assert not fast.exact and exact.exact
    np.testing.assert_array_equal(_result(fast), upscaled(data, model4))
    np.testing.assert_array_equal(_result(exact), upscaled(data, model4, exact=True))
    assert np.any(_result(fast) != _result(exact)), "the two modes must differ on this size"


def test_precision_and_tta_reach_esrt_upscale(runner: JobRunner, model4: ESRT) -> None:
    data = png((10, 8), 5)
    job = _submit(runner, data, precision="bf16", tta=True)
    runner.wait_idle()
    status = runner.status(job)
    assert status["precision"] == "bf16" and status["tta"] is True and status["exact"] is False
    assert status["state"] == "done" and status["progress"] == 1.0
    np.testing.assert_array_equal(_result(job), upscaled(data, model4, precision="bf16", tta=True))
    assert np.any(_result(job) != upscaled(data, model4)), "bf16 + TTA must change the result"


def test_refused_uploads_leave_no_files(runner: JobRunner) -> None:
    with pytest.raises(DemoError, match=r"notes\.txt: not an image") as refused:
        _submit(runner, b"just some notes\n", "notes.txt")
    assert refused.value.status == 400
    with pytest.raises(DemoError, match=r"101x100 = 10100 pixels is above the limit of 10000$"):
        _submit(runner, png((101, 100)), "big.png")
    with pytest.raises(DemoError, match="x2 is not available; this server has weights for x4"):
        _submit(runner, png((8, 8)), scale=2)
    with pytest.raises(DemoError, match="precision must be fp32 or bf16, got 'fp16'"):
        _submit(runner, png((8, 8)), precision="fp16")
    assert list(runner.workdir.iterdir()) == []
    assert runner.held() == 0, "a refused upload gives its place in the queue back"


def _hold_the_worker(runner: JobRunner) -> tuple[threading.Event, list[str]]:
    """Makes each job wait for the returned event before it runs; the list gets the ids in the order run."""
    release = threading.Event()
    started: list[str] = []
    real_run = runner._run

    def held_run(job: Job) -> None:
        started.append(job.id)
        assert release.wait(30)
        real_run(job)

    runner._run = held_run  # type: ignore[method-assign]
    return release, started


def test_one_job_at_a_time_with_a_bounded_queue(runner: JobRunner) -> None:
    release, started = _hold_the_worker(runner)
    first = _submit(runner, png((8, 8), 1), "first.png")
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    second = _submit(runner, png((8, 8), 2), "second.png")
    assert first.state == "running" and runner.status(second)["ahead"] == 1
    with pytest.raises(DemoError, match="busy: 1 image is waiting") as refused:
        _submit(runner, png((8, 8), 3), "third.png")
    assert refused.value.status == 429 and runner.held() == 2
    release.set()
    runner.wait_idle()
    assert started == [first.id, second.id] and first.state == second.state == "done"


def test_old_jobs_are_deleted(runner: JobRunner) -> None:
    ids = []
    for seed in range(4):
        ids.append(_submit(runner, png((6, 6), seed), f"{seed}.png").id)
        runner.wait_idle()
    assert sorted(p.name for p in runner.workdir.iterdir()) == sorted(ids[-3:])  # keep_jobs=2 + the new one
    with pytest.raises(DemoError, match="no such job") as missing:
        runner.get(ids[0])
    assert missing.value.status == 404


def test_expected_calls_counts_the_calls_esrt_upscale_makes(model4: ESRT, tmp_path: Path) -> None:
    runner = JobRunner({4: model4}, DemoConfig(tile=32), tmp_path)
    progress: list[float] = []
    real_run = runner._run

    def watched_run(job: Job) -> None:
        real_run(job)
        progress.append(job.progress)

    runner._run = watched_run  # type: ignore[method-assign]
    calls = 0
    model_call = ESRT.__call__

    def counting(self: ESRT, *args: object) -> object:
        nonlocal calls
        calls += 1
        return model_call(self, *args)

    try:
        ESRT.__call__ = counting  # type: ignore[method-assign]
        _submit(runner, png((50, 40), 7), tta=True)
        runner.wait_idle()
    finally:
        ESRT.__call__ = model_call  # type: ignore[method-assign]
        runner.close()
    assert expected_calls((50, 40), 4, 32, True) == calls == 3 * 2 * 8  # tiles of 32 overlapping by 16, x8 TTA
    assert expected_calls((50, 40), 4, None, False) == 1 and progress == [1.0]
