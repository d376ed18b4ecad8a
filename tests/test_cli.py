"""Tests of esrt.cli: OpenMP's waiting set for the inference commands before torch starts."""

from __future__ import annotations

import os

import pytest

from esrt.cli import GOMP_SPINCOUNT, main, wait_gently


def test_wait_gently_keeps_the_users_choice() -> None:
    env: dict[str, str] = {}
    wait_gently(env)
    assert env == {"GOMP_SPINCOUNT": GOMP_SPINCOUNT}
    for mine in ({"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "ACTIVE"}):
        env = dict(mine)
        wait_gently(env)
        assert env == mine


@pytest.mark.parametrize(("argv", "gentle"), [(["upscale", "missing.png"], True), (["train"], False)])
def test_inference_commands_wait_gently_training_does_not(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], gentle: bool
) -> None:
    monkeypatch.setenv("GOMP_SPINCOUNT", "x")  # so that monkeypatch restores the variable afterwards
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main(argv)  # both fail at once (no such input / no data): only the environment is checked
    assert (os.environ.get("GOMP_SPINCOUNT") == GOMP_SPINCOUNT) is gentle
