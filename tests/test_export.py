"""Tests of esrt.export: the ONNX graph is dynamic in batch, height and width and matches PyTorch within 1e-4.

One x2 random-weight export per module (a few seconds); sizes with N % 4 = 0, 1, 2 and 3 tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from esrt.cli import main
from esrt.convert import save_weights
from esrt.model import EMHA, ESRT
from esrt.upscale import TorchUpscaler, plan_tile, upscale

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from esrt.export import OPSET, OnnxUpscaler, export_onnx, require  # noqa: E402


@pytest.fixture(scope="module")
def model() -> ESRT:
    torch.manual_seed(0)
    return ESRT(2).eval()


@pytest.fixture(scope="module")
def exported(model: ESRT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "esrt_x2.onnx")


@pytest.mark.parametrize(("batch", "h", "w"), [(1, 6, 8), (2, 5, 7), (1, 5, 5), (1, 3, 2), (1, 14, 9)])
def test_onnx_matches_torch(model: ESRT, exported: Path, batch: int, h: int, w: int) -> None:
    """N = H*W tokens: 48 (N % 4 = 0), 35 (3), 25 (1), 6 (2), 126 (2); batch 2 included."""
    import onnxruntime as ort

    engine = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.inference_mode():
        expected = model(x).numpy()
    got = np.asarray(engine.run(None, {"input": x.numpy()})[0])
    assert got.shape == expected.shape == (batch, 3, 2 * h, 2 * w)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(66, 64), (65, 64)])
def test_fast_mode_is_the_default_and_exact_is_an_option(
    model: ESRT, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], h: int, w: int
) -> None:
    """N = 4224 (5 chunks, 4 of them one token longer) and 4160 (5 equal chunks): above 4 x 1024 tokens the
    fast graph computes blocked attention, the exact one the Feature Split, each as PyTorch does."""
    weights = tmp_path / "w.safetensors"
    save_weights(model, weights)
    assert main(["export", "--onnx", str(tmp_path / "exact.onnx"), "--weights", str(weights), "--exact"]) == 0
    assert "exact mode" in capsys.readouterr().out
    x = np.random.default_rng(h).random((3, h, w), dtype=np.float32)
    fast_onnx, exact_onnx = OnnxUpscaler(exported), OnnxUpscaler(tmp_path / "exact.onnx")
    assert fast_onnx.fast and not exact_onnx.fast
    fast_torch, exact_torch = TorchUpscaler(model, fast=True)(x), TorchUpscaler(model)(x)
    assert np.abs(fast_torch - exact_torch).max() > 1e-3  # the two modes differ at this size
    np.testing.assert_allclose(fast_onnx(x), fast_torch, atol=1e-4, rtol=0)
    np.testing.assert_allclose(exact_onnx(x), exact_torch, atol=1e-4, rtol=0)
    assert EMHA.attend.__module__ == "esrt.model"  # the export-time replacement was undone


def test_graph_is_dynamic_and_records_opset(exported: Path) -> None:
    proto = onnx.load(str(exported))
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["scale"] == "2" and meta["opset"] == str(OPSET) and meta["format"] == "esrt"
    assert meta["max_chunk"] == "1024"  # the fast mode, the default
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    assert F.fold.__module__ == "torch.nn.functional"  # the export-time replacement was undone


def test_onnx_backend_in_upscale_and_cli(
    model: ESRT, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    onnx_net = OnnxUpscaler(exported)
    via_onnx = upscale(image, model=onnx_net)
    via_torch = upscale(image, model=model)
    # onnxruntime holds every attention chunk's scores at once: its auto tiles are planned smaller
    onnx_tile, torch_tile = plan_tile("auto", 16, onnx_net), plan_tile("auto", 16, TorchUpscaler(model))
    assert onnx_tile is not None and torch_tile is not None and onnx_tile < torch_tile
    assert np.abs(via_onnx.astype(int) - via_torch).max() <= 1  # rounding of values within 1e-4
    Image.fromarray(image).save(tmp_path / "a.png")
    args = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--backend", "onnx"]
    rc = main([*args, "--weights", str(exported)])
    assert rc == 0
    with Image.open(tmp_path / "o" / "a_x2.png") as im:
        assert np.abs(np.asarray(im).astype(int) - via_torch).max() <= 1
    assert main(["upscale", str(tmp_path / "a.png"), "--backend", "onnx", "--weights", str(tmp_path / "a.png")]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert main([*args, "--weights", str(exported), "--exact"]) == 1  # the file holds the fast graph
    assert "esrt export --exact" in capsys.readouterr().err


def test_export_cli(
    model: ESRT, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("esrt.pretrained.WEIGHTS_DIR", tmp_path / "none")  # a version that ships no weights
    assert main(["export", "--onnx", str(tmp_path / "m.onnx"), "--scale", "2"]) == 1
    assert "no weights are shipped for x2" in capsys.readouterr().err
    weights = tmp_path / "w.safetensors"
    save_weights(model, weights)
    assert main(["export", "--onnx", str(tmp_path / "m.onnx"), "--scale", "3", "--weights", str(weights)]) == 1
    assert "x2" in capsys.readouterr().err  # the weights are x2, x3 was asked for


def test_missing_extra_is_explained() -> None:
    with pytest.raises(ImportError, match=r"esrt\[onnx\]"):
        require("esrt_no_such_module")
