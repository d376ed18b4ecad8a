"""Tests of esrt.convert: the reference key table, container unwrapping, every error message, our safetensors files.

Reference checkpoints are the random-weight luissen/ESRT fixtures (keys and outputs of the reference code).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from esrt.convert import (
    CheckpointError,
    convert_reference,
    detect_scale,
    load_checkpoint,
    read_metadata,
    reference_key_table,
    save_weights,
    to_reference,
)
from esrt.model import ESRT

from .conftest import fixture_path

# Reference name -> our name, written out by hand from docs/architecture.md (not derived from the table).
SPOT_CHECKS = {
    "head.0.weight": "head.weight",
    "reduce.bias": "body_conv.bias",
    "body.0.reduce.weight": "lcb.fusion.weight",
    "body.0.weight1.scale": "ltb.g",
    "body.0.weight2.scale": "ltb.h",
    "body.0.attention.atten.qkv.weight": "ltb.et.emha.qkv.weight",
    "body.0.attention.mlp.fc2.bias": "ltb.et.mlp.2.bias",
    "body.0.encoder1.encoder.layer1.weight1.scale": "lcb.hpbs.0.arfb_in.ru1.a",
    "body.0.encoder1.encoder.layer1.weight2.scale": "lcb.hpbs.0.arfb_in.ru1.b",
    "body.0.encoder2.decoder_low.layer2.conv.weight": "lcb.hpbs.1.arfb_low.ru2.reduction.weight",
    "body.0.encoder2.decoder_high.layer2.conv1.bias": "lcb.hpbs.1.arfb_high.ru2.expansion.bias",
    "body.0.encoder3.alise.weight2.scale": "lcb.hpbs.2.arfb_out.c",
    "body.0.encoder3.alise.weight5.scale": "lcb.hpbs.2.arfb_out.f",
    "body.0.encoder3.alise2.conv.weight": "lcb.hpbs.2.fusion.weight",
    "body.0.encoder1.att.conv_du.2.weight": "lcb.hpbs.0.ca.excite.weight",
    "tail.0.0.weight": "tail.0.0.weight",
    "tail.1.bias": "tail.1.bias",
    "up.0.0.weight": "skip.0.0.weight",
    "up.1.conv.weight": "skip.1.weight",
}
UNUSED = [
    f"body.0.encoder{h}.{a}.weight1.scale"
    for h in (1, 2, 3)
    for a in ("encoder", "decoder_low", "decoder_high", "alise")
]


def reference(scale: int) -> dict[str, torch.Tensor]:
    """The reference state dict of the random-weight fixture for scale."""
    return dict(torch.load(fixture_path(f"esrt_x{scale}_random.pth"), map_location="cpu", weights_only=True))


def msg(text: str) -> str:
    """A pytest.raises match pattern for exactly this message."""
    return "^" + re.escape(text) + "$"


# --- the reference key table -------------------------------------------------------------------------------


def test_table_covers_every_reference_key_once_with_equal_shapes() -> None:
    listing = fixture_path("keys_x4.txt").read_text().splitlines()
    shapes = {k: s for k, s, _ in (line.split("\t") for line in listing if not line.startswith("#"))}
    assert len(shapes) == 348
    model = convert_reference(reference(4))
    ours = model.state_dict()
    table = reference_key_table()
    targets: list[str] = []
    for key, shape in shapes.items():
        prefix, _, leaf = key.rpartition(".")
        mapped = table[key] if key in table else table[prefix]
        if mapped is None:
            assert key in UNUSED
            continue
        target = mapped if key in table else f"{mapped}.{leaf}"
        targets.append(target)
        assert str(tuple(ours[target].shape)) == shape, key
    assert sorted(targets) == sorted(ours)  # every one of our keys is hit, and hit once
    assert len(targets) == 348 - len(UNUSED)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_converted_tensors_are_the_reference_tensors(scale: int) -> None:
    ref = reference(scale)
    ours = convert_reference(ref).state_dict()
    for ref_key, our_key in SPOT_CHECKS.items():
        if ref_key in ref:
            assert torch.equal(ours[our_key], ref[ref_key]), ref_key
    assert len(ours) == len(ref) - len(UNUSED)


def test_converted_model_reproduces_the_reference_output() -> None:
    io = np.load(fixture_path("esrt_x2_io.npz"))
    model = convert_reference(reference(2)).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(io["in_48x48"]))
    assert (out - torch.from_numpy(io["out_48x48"])).abs().max().item() <= 1e-5


def test_module_prefix_is_removed() -> None:
    ref = reference(2)
    plain = convert_reference(ref).state_dict()
    prefixed = convert_reference({f"module.{k}": v for k, v in ref.items()}).state_dict()
    assert plain.keys() == prefixed.keys()
    assert all(torch.equal(plain[k], prefixed[k]) for k in plain)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_to_reference_round_trip_is_bit_exact(scale: int) -> None:
    ref = reference(scale)
    back = to_reference(convert_reference(ref))
    assert back.keys() == ref.keys()
    for key, tensor in ref.items():
        expected = torch.ones(1) if key in UNUSED else tensor  # the unused scalars come back as initialised
        assert back[key].shape == tensor.shape and torch.equal(back[key], expected), key
    again = convert_reference(back).state_dict()
    first = convert_reference(ref).state_dict()
    assert all(torch.equal(again[k], first[k]) for k in first)


# --- convert_reference errors ------------------------------------------------------------------------------


def test_unknown_reference_key_is_an_error() -> None:
    ref = reference(2) | {"body.0.extra.weight": torch.zeros(1)}
    with pytest.raises(
        CheckpointError, match=msg("r.pth: unexpected key 'body.0.extra.weight' (not an ESRT reference checkpoint?)")
    ):
        convert_reference(ref, "r.pth")


@pytest.mark.parametrize("key", ["reduce.bias", UNUSED[0]])
def test_missing_reference_key_is_an_error(key: str) -> None:
    ref = reference(2)
    del ref[key]
    with pytest.raises(CheckpointError, match=msg(f"checkpoint: missing key {key!r} (1 missing in all)")):
        convert_reference(ref)


def test_missing_reference_keys_are_counted() -> None:
    ref = reference(2)
    gone = sorted(k for k in ref if k.startswith("body.0.encoder3."))  # one whole HPB
    assert len(gone) == 105
    with pytest.raises(CheckpointError, match=msg(f"checkpoint: missing key {gone[0]!r} (105 missing in all)")):
        convert_reference({k: v for k, v in ref.items() if k not in gone})


def test_mis_shaped_reference_key_is_an_error() -> None:
    ref = reference(2)
    ref["head.0.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(
        CheckpointError, match=msg("checkpoint: key 'head.weight' has shape (32, 3, 5, 5), expected (32, 3, 3, 3)")
    ):
        convert_reference(ref)


# --- detect_scale ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_detect_scale_from_shapes(scale: int) -> None:
    assert detect_scale(ESRT(scale).state_dict()) == scale
    assert detect_scale(reference(scale), prefix="tail.0") == scale
    assert detect_scale(reference(scale), prefix="up.0") == scale  # the reference's skip upsampler


def test_detect_scale_needs_the_upsampler() -> None:
    sd = ESRT(2).state_dict()
    del sd["tail.0.0.weight"]
    with pytest.raises(CheckpointError, match=msg("not an ESRT checkpoint: no upsampler weight tail.0.0.weight")):
        detect_scale(sd)


# --- our safetensors files ---------------------------------------------------------------------------------


def test_save_weights_and_read_metadata_round_trip(tmp_path: Path) -> None:
    model = ESRT(3)
    path = tmp_path / "w.safetensors"
    save_weights(model, path, {"iterations": 12, "data": ["T91"], "note": "text", "set5_psnr": 33.5})
    assert read_metadata(path) == {
        "format": "esrt",
        "scale": "3",
        "iterations": "12",
        "data": '["T91"]',
        "note": "text",
        "set5_psnr": "33.5",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left
    loaded = load_checkpoint(path)
    assert loaded.scale == 3
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(loaded.state_dict()[k], expected[k]) for k in expected)


def test_save_weights_writes_fp32_from_bf16(tmp_path: Path) -> None:
    model = ESRT(2)
    save_weights(model.to(torch.bfloat16), tmp_path / "w.safetensors")
    loaded = load_checkpoint(tmp_path / "w.safetensors").state_dict()
    assert {t.dtype for t in loaded.values()} == {torch.float32}
    assert all(torch.equal(loaded[k], v.float()) for k, v in model.state_dict().items())


def test_load_checkpoint_reads_reference_pth() -> None:
    model = load_checkpoint(fixture_path("esrt_x3_random.pth"))
    assert model.scale == 3 and model.training
    assert torch.equal(model.state_dict()["head.weight"], reference(3)["head.0.weight"])


def test_load_checkpoint_reads_our_layout_saved_by_torch(tmp_path: Path) -> None:
    sd = ESRT(4).state_dict()
    torch.save(sd, tmp_path / "ours.pth")
    loaded = load_checkpoint(tmp_path / "ours.pth").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def save(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "c.pth"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrap", ["state_dict", "model", "params_ema", "params"])
def test_containers_are_unwrapped(tmp_path: Path, wrap: str) -> None:
    ref = reference(2)
    model = load_checkpoint(save(tmp_path, {wrap: {f"module.{k}": v for k, v in ref.items()}, "epoch": 7}))
    assert torch.equal(model.state_dict()["tail.1.weight"], ref["tail.1.weight"])


def test_nested_containers_and_ema_first(tmp_path: Path) -> None:
    ema, raw = ESRT(2).state_dict(), ESRT(2).state_dict()
    model = load_checkpoint(save(tmp_path, {"model": {"params": raw, "params_ema": ema}}))
    assert torch.equal(model.state_dict()["head.weight"], ema["head.weight"])
    assert not torch.equal(model.state_dict()["head.weight"], raw["head.weight"])


# --- load_checkpoint errors --------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.safetensors"
    with pytest.raises(CheckpointError, match=msg(f"{path}: no such file")):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=msg(f"{tmp_path}: no such file")):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint


@pytest.mark.parametrize("name", ["bad.safetensors", "bad.pth"])
def test_unreadable_safetensors(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"not a checkpoint at all")  # neither a zip nor a pickle: read as safetensors
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{path}: not a readable safetensors file (")):
        load_checkpoint(path)


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path, argparse.Namespace(weights=torch.zeros(1)))
    refused = msg(
        f"{path}: not a plain state dict; refusing to unpickle arbitrary objects "
        "(esrt reads .safetensors, or .pth files that hold only tensors)"
    )
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 a broken zip")
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(path)


def test_weights_that_are_not_finite_are_refused(tmp_path: Path) -> None:
    ref = reference(2)
    ref["tail.1.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    path = save(tmp_path, ref)
    with pytest.raises(
        CheckpointError, match=msg(f"{path}: weight 'tail.1.bias' holds NaN or infinity (a diverged training run?)")
    ):
        load_checkpoint(path)
    sd = ESRT(2).state_dict()
    sd["head.weight"][0, 0, 0, 0] = float("inf")
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        CheckpointError, match=msg(f"{path}: weight 'head.weight' holds NaN or infinity (a diverged training run?)")
    ):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("obj", "found"),
    [({}, "not a state dict (found dict)"), ([torch.zeros(1)], "not a state dict (found list)"),
     ({"state_dict": {"w": torch.zeros(1), "step": 3}}, "not a state dict of tensors (entry 'step')"),
     ({"w": torch.zeros(1), 1: torch.zeros(1)}, "not a state dict of tensors (entry 1)")],
)  # fmt: skip
def test_not_a_state_dict(tmp_path: Path, obj: object, found: str) -> None:
    path = save(tmp_path, obj)
    with pytest.raises(CheckpointError, match=msg(f"{path}: {found}")):
        load_checkpoint(path)


def test_our_layout_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    sd = ESRT(2).state_dict()
    save_file({k: v for k, v in sd.items() if k != "head.bias"}, str(path))
    with pytest.raises(CheckpointError, match=msg(f"{path}: missing key 'head.bias' (1 missing in all)")):
        load_checkpoint(path)
    save_file(sd | {"extra": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match=msg(f"{path}: unexpected key 'extra'")):
        load_checkpoint(path)
    save_file(sd | {"tail.1.bias": torch.zeros(4)}, str(path))
    with pytest.raises(CheckpointError, match=msg(f"{path}: key 'tail.1.bias' has shape (4,), expected (3,)")):
        load_checkpoint(path)
    save_file({"head.weight": sd["head.weight"]}, str(path))
    with pytest.raises(CheckpointError, match=msg("not an ESRT checkpoint: no upsampler weight tail.0.0.weight")):
        load_checkpoint(path)


def test_our_layout_with_module_prefix_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ESRT(2)
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_text_file_as_pth_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("hi\n")
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        load_checkpoint(path)
