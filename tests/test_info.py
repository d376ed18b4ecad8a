"""esrt.info and `esrt info`: the facts a weights file carries, for our .safetensors, .pth and ONNX files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from esrt.cli import main
from esrt.convert import read_metadata
from esrt.info import describe, format_info
from esrt.pretrained import load_model, shipped_weights

from .conftest import fixture_path


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_shipped_weights_report_their_training_facts() -> None:
    path = shipped_weights(4)
    info = describe(path)
    meta = read_metadata(path)
    assert (info["format"], info["architecture"], info["scale"]) == ("esrt safetensors", "ESRT", 4)
    assert info["parameters"] == _parameters(load_model(scale=4))
    assert info["iterations"] == int(meta["iterations"])
    assert info["set5_psnr"] == float(meta["set5_psnr"])
    assert info["data"] == json.loads(meta["data"])
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(info)[:5] == ["file", "format", "architecture", "scale", "parameters"]
    keys = list(info)
    others = keys[keys.index("precision") + 1 : keys.index("bytes")]
    assert others and others == sorted(others)  # the same order on every run


def test_reference_checkpoint() -> None:
    info = describe(fixture_path("esrt_x3_random.pth"))
    assert (info["format"], info["scale"]) == ("PyTorch state dict (.pth)", 3)
    assert info["parameters"] == _parameters(load_model(scale=3))
    assert "iterations" not in info


def test_our_layout_saved_with_torch_save(tmp_path: Path) -> None:
    path = tmp_path / "mine.pth"
    torch.save(load_model(scale=2).state_dict(), path)
    assert describe(path)["scale"] == 2


def _onnx_file(path: Path, metadata: dict[str, str]) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(torch.ones(2, 3).numpy(), name="w")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [weight],
    )
    proto = helper.make_model(graph)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def test_onnx_metadata(tmp_path: Path) -> None:
    path = _onnx_file(tmp_path / "m.onnx", {"format": "esrt", "scale": "3", "opset": "18", "max_chunk": "1024"})
    info = describe(path)
    assert (info["format"], info["scale"], info["stored_values"]) == ("ONNX", 3, 6)
    assert "parameters" not in info  # an exported graph also stores constants
    assert (info["opset"], info["max_chunk"]) == (18, 1024)


def test_onnx_without_esrt_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="esrt export"):
        describe(_onnx_file(tmp_path / "other.onnx", {}))


def test_text_report_is_aligned() -> None:
    text = format_info({"file": "a", "parameters": 751755, "data": ["T91", "BSD200"]})
    assert text.splitlines() == ["file        a", "parameters  751,755", "data        T91, BSD200"]


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(shipped_weights(2)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scale"] == 2


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x89PNG\r\n\x1a\n" + bytes(64)])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".onnx", ".png"])
def test_cli_one_line_error_on_other_files(
    content: bytes, suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"file{suffix}"
    path.write_bytes(content)
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("esrt info: error: ") and err.count("\n") == 1


def test_cli_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "no/such/file.safetensors"]) == 1
    assert "no such file" in capsys.readouterr().err
