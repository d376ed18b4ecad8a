"""Tests of esrt.train.config: defaults, validation with one-line messages, config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from esrt.train import TrainConfig, load_config_file


def test_defaults_are_the_papers_recipe() -> None:
    c = TrainConfig()
    assert (c.batch, c.patch, c.lr, c.precision) == (16, 48, 2e-4, "auto")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"save_every": 0}, "save_every must be at least 1, got 0"),
        ({"log_every": 0}, "log_every must be at least 1, got 0"),
        ({"val_every": -1}, "val_every must be at least 1, got -1"),
        ({"workers": -1}, "workers must be at least 0, got -1"),
        ({"lr": 0.0}, "lr must be a positive number, got 0.0"),
        ({"lr": float("nan")}, "lr must be a positive number, got nan"),
        ({"save_minutes": float("inf")}, "save_minutes must be a positive number, got inf"),
        ({"ema": 1.0}, r"ema must be in \[0, 1\)"),
        ({"precision": "fp16"}, "precision must be fp32, bf16 or auto"),
        ({"scale": 5}, "scale must be 2, 3 or 4"),
        ({"patch": 1}, "patch must be at least 2, got 1"),
        ({"hr_scales": (1.0, 1.5)}, r"hr_scales must be one or more factors in \(0, 1\], got \[1.0, 1.5\]"),
        ({"hr_scales": ()}, "hr_scales must be one or more factors"),
    ],
)
def test_bad_settings_are_one_line_errors(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)  # type: ignore[arg-type]


def test_config_file_and_unknown_key(tmp_path: Path) -> None:
    good = tmp_path / "x4.toml"
    good.write_text('scale = 4\nlr_milestones = [5, 10]\ndata = ["a", "b"]\n')
    config = TrainConfig(**load_config_file(good))
    assert config.lr_milestones == (5, 10) and config.data == ("a", "b")
    bad = tmp_path / "bad.toml"
    bad.write_text("scael = 4\n")
    with pytest.raises(ValueError, match="unknown setting 'scael'"):
        load_config_file(bad)
    retired = tmp_path / "old.toml"
    retired.write_text("keep = 1\n")
    with pytest.raises(ValueError, match="'keep' is no longer a setting"):
        load_config_file(retired)
