"""Tests of `esrt upscale` (esrt.upscale_cli): inputs, outputs, defaults, and one-line errors before any work."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from esrt import upscale_cli
from esrt.cli import main
from esrt.convert import save_weights
from esrt.images import read_image, write_image
from esrt.model import ESRT

from .pictures import Nearest, smooth


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "esrt_x2.safetensors"
    save_weights(ESRT(2).eval(), path)
    return path


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> Nearest:
    """Stands in for the model: records every call (so a test can show that no work was done)."""
    fake = Nearest()
    monkeypatch.setattr(upscale_cli, "load_upscaler", lambda *args, **kwargs: fake)
    return fake


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    Image.fromarray(smooth(6, 7)).save(tmp_path / "a.png")
    return tmp_path / "a.png"


def _error_line(capsys: pytest.CaptureFixture[str], needle: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert needle in lines[0], lines[0]
    return lines[0]


def test_collect_inputs(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ["x.png", "y.JPG", ".hidden.png", "notes.txt", "deep/z.webp"]:
        (tmp_path / "a" / name).write_bytes(b"")
    found, errors = upscale_cli.collect_inputs([str(tmp_path / "a")], recursive=False)
    assert [str(stem) for _, stem in found] == ["x", "y"] and not errors
    found, _ = upscale_cli.collect_inputs([str(tmp_path / "a")], recursive=True)
    assert sorted(str(stem) for _, stem in found) == ["deep/z", "x", "y"]
    pattern = str(tmp_path / "a" / ".." / "a" / "*.png")
    found, errors = upscale_cli.collect_inputs([pattern, str(tmp_path / "nope.png")], False)
    assert [p.name for p, _ in found] == ["x.png"] and len(errors) == 1 and "nope.png" in errors[0]


def test_glob_of_only_non_images_is_one_error(tmp_path: Path, net: Nearest, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("notes.txt", "data.csv"):
        (tmp_path / name).write_text("x")
    assert main(["upscale", str(tmp_path / "*"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "matches" in line] == [
        f"esrt upscale: {tmp_path / '*'}: only files without an image suffix (2) matches"
    ]
    assert net.calls == [] and not (tmp_path / "out").exists()


def test_cli_folder_with_bad_files(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(smooth(6, 7)).save(src / "good.png")
    Image.fromarray(smooth(5, 6, 1)[..., 0]).save(src / "sub" / "deep.jpg")
    (src / "bad.png").write_bytes(b"not an image at all")
    (src / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out), "--weights", str(weights), "--recursive", "--tile", "0"])
    err = capsys.readouterr()
    assert rc == 1
    with Image.open(out / "good_x2.png") as im:
        assert im.size == (14, 12) and im.mode == "RGB"
    with Image.open(out / "sub" / "deep_x2.png") as im:
        assert im.size == (12, 10) and im.mode == "L"
    lines = [line for line in err.err.splitlines() if "bad.png" in line or "empty.jpg" in line]
    assert len(lines) == 2 and "Traceback" not in err.err
    assert "2 written" in err.out and "2 failed" in err.out
    assert not list(out.rglob(".*"))  # no temporary files left


def test_cli_never_overwrites_inputs(
    tmp_path: Path, photo: Path, net: Nearest, capsys: pytest.CaptureFixture[str]
) -> None:
    before = photo.read_bytes()
    for extra in ([], ["--overwrite"]):
        rc = main(["upscale", str(photo), "-o", str(photo), *extra])
        assert rc == 1 and photo.read_bytes() == before
    assert "refusing to overwrite" in capsys.readouterr().err
    # an existing output is skipped, then replaced with --overwrite
    target = tmp_path / "res" / "a_x2.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert main(["upscale", str(photo), "-o", str(tmp_path / "res")]) == 0
    assert target.read_bytes() == b"old"
    assert main(["upscale", str(photo), "-o", str(target.parent), "--overwrite"]) == 0
    with Image.open(target) as im:
        assert im.size == (14, 12)


def test_cli_keeps_icc_16bit_and_alpha(tmp_path: Path, weights: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(np.dstack([smooth(6, 7), smooth(6, 7, 1)])).save(tmp_path / "a.png", icc_profile=icc)
    write_image(tmp_path / "deep.tif", smooth(6, 7, 3, np.uint16))
    args = ["upscale", str(tmp_path / "a.png"), str(tmp_path / "deep.tif"), "-o", str(tmp_path / "o")]
    rc = main([*args, "--weights", str(weights), "--outscale", "3"])
    assert rc == 0
    with Image.open(tmp_path / "o" / "a_x3.png") as im:
        assert im.mode == "RGBA" and im.size == (21, 18) and im.info.get("icc_profile") == icc
    deep = read_image(tmp_path / "o" / "deep_x3.png").pixels
    assert deep.dtype == np.uint16 and deep.shape == (18, 21, 3)


def test_cli_user_errors_are_one_line(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("esrt.pretrained.WEIGHTS_DIR", tmp_path / "none")  # a version that ships no weights
    assert main(["upscale", str(photo), "-o", str(tmp_path), "--scale", "2"]) == 1
    assert main(["upscale", str(photo), "--backend", "onnx"]) == 1
    assert main(["upscale", str(photo), "--tile", "big"]) == 1
    err = capsys.readouterr().err
    assert "no weights are shipped" in err and "--backend onnx needs --weights" in err and "--tile" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--outscale", "inf"], "--outscale"),
        (["--outscale", "nan"], "--outscale"),
        (["--outscale", "-2"], "--outscale"),
        (["--outscale", "0"], "--outscale"),
        (["--threads", "-1"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--quality", "1000"], "quality"),
        (["--quality", "0"], "quality"),
        (["--png-level", "10"], "PNG compression level"),
        (["--fast", "--exact"], "contradict"),
    ],
)
def test_bad_options_fail_before_any_work(
    tmp_path: Path, photo: Path, net: Nearest, capsys: pytest.CaptureFixture[str], option: list[str], needle: str
) -> None:
    assert main(["upscale", str(photo), "-o", str(tmp_path / "out"), *option]) == 1
    assert _error_line(capsys, needle).startswith("esrt upscale: error:")
    assert net.calls == [] and not (tmp_path / "out").exists()


def test_tiny_outscale_fails_before_the_network_runs(
    tmp_path: Path, photo: Path, net: Nearest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["upscale", str(photo), "-o", str(tmp_path / "out"), "--outscale", "1e-9"]) == 1
    assert "outscale" in capsys.readouterr().err
    assert net.calls == [] and not list((tmp_path / "out").glob("*"))


def test_nan_weights_are_an_error_naming_them(tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ESRT(2)
    with torch.no_grad():
        model.head.weight[0, 0, 0, 0] = float("nan")
    save_weights(model, tmp_path / "nan.safetensors")
    assert (
        main(["upscale", str(photo), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "nan.safetensors")]) == 1
    )
    assert "NaN" in _error_line(capsys, "nan.safetensors")
    assert not (tmp_path / "out").exists()


def test_raw_pickle_weights_one_line_without_torch_hints(
    tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle

    (tmp_path / "w.pth").write_bytes(pickle.dumps(print))  # a pickled object, not tensors
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["upscale", str(photo), "--weights", str(tmp_path / "w.pth")]) == 1
    line = _error_line(capsys, "w.pth")
    assert "weights_only" not in line and "will likely succeed" not in line
    assert caught == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed(tmp_path: Path, photo: Path, net: Nearest) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".a_x2.png.{_dead_pid()}.tmp"  # left by a run killed while writing
    stale.write_bytes(b"half")
    assert main(["upscale", str(photo), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png"]


def test_unusable_output_folder_is_named_before_the_work(
    tmp_path: Path, photo: Path, net: Nearest, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert main(["upscale", str(photo), "-o", str(blocker / "out")]) == 1
    line = _error_line(capsys, str(blocker / "out"))
    assert "not a folder" in line and "a.png" not in line
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(upscale_cli.os, "access", lambda path, mode: Path(path) != locked)  # as if read-only
    assert main(["upscale", str(photo), "-o", str(locked / "sub")]) == 1
    assert "permission" in _error_line(capsys, str(locked / "sub"))
    assert net.calls == []


def test_several_inputs_to_one_file_name_is_an_error(
    tmp_path: Path, photo: Path, net: Nearest, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "b.png"
    Image.fromarray(smooth(5, 6)).save(other)
    assert main(["upscale", str(photo), str(other), "-o", str(tmp_path / "x" / "result.png")]) == 1
    _error_line(capsys, "result.png")
    assert not (tmp_path / "x").exists() and net.calls == []
    assert main(["upscale", str(photo), "-o", str(tmp_path / "x" / "result.png")]) == 0  # one input: a file
    assert (tmp_path / "x" / "result.png").is_file()


def test_animated_gif_warns_once(tmp_path: Path, net: Nearest, capsys: pytest.CaptureFixture[str]) -> None:
    frames = [Image.fromarray(smooth(6, 7)), Image.fromarray(255 - smooth(6, 7))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert main(["upscale", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    assert [line for line in (out.out + out.err).splitlines() if "frame" in line] == [
        f"esrt upscale: {tmp_path / 'anim.gif'}: 2 frames; only the first is upscaled"
    ]


def test_fast_is_the_default_and_exact_is_an_option(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def spy(model: object, scale: object, weights: object, precision: object, exact: bool, **_: object) -> Nearest:
        seen.append(exact)
        return Nearest()

    monkeypatch.setattr(upscale_cli, "load_upscaler", spy)
    for extra in ([], ["--exact"], ["--fast"]):
        assert main(["upscale", str(photo), "-o", str(tmp_path / "o"), "--overwrite", *extra]) == 0
    assert seen == [False, True, False]
