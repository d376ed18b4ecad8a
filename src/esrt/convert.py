"""Checkpoints: reference (luissen/ESRT) state dicts -> ours through one key table; our safetensors files.

Follows the reference state-dict names (docs/architecture.md, "Reading reference checkpoints"); scale is
detected from tensor shapes, never from file names.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from esrt.atomic import atomic_path
from esrt.model import ESRT


class CheckpointError(ValueError):
    """A file that is not an ESRT checkpoint, or one whose keys or shapes do not fit the network."""


# One table, read top-down: reference name -> our name, per building block. None marks the one
# reference parameter that exists but is never used in the forward pass (ARFB `weight1`).
RU_KEYS: dict[str, str] = {
    "conv": "reduction",
    "relu": "act",
    "conv1": "expansion",
    "weight1.scale": "a",
    "weight2.scale": "b",
}
ARFB_KEYS: dict[str, str | None] = {
    "layer1": "ru1",
    "layer2": "ru2",
    "alise.conv": "fusion",
    "atten.conv_du.0": "ca.squeeze",
    "atten.conv_du.2": "ca.excite",
    "layer4.conv": "conv",
    "weight1.scale": None,  # created by the reference, never used: dropped
    "weight2.scale": "c",
    "weight3.scale": "d",
    "weight4.scale": "e",
    "weight5.scale": "f",
}
HPB_ARFBS: dict[str, str] = {
    "encoder": "arfb_in",
    "decoder_low": "arfb_low",
    "decoder_high": "arfb_high",
    "alise": "arfb_out",
}
HPB_KEYS: dict[str, str] = {
    "alise2.conv": "fusion",
    "att.conv_du.0": "ca.squeeze",
    "att.conv_du.2": "ca.excite",
}
TOP_KEYS: dict[str, str] = {
    "head.0": "head",
    "body.0.reduce": "lcb.fusion",
    "body.0.attention.atten.reduce": "ltb.et.emha.reduction",
    "body.0.attention.atten.qkv": "ltb.et.emha.qkv",
    "body.0.attention.atten.proj": "ltb.et.emha.expansion",
    "body.0.attention.norm1": "ltb.et.norm1",
    "body.0.attention.norm2": "ltb.et.norm2",
    "body.0.attention.mlp.fc1": "ltb.et.mlp.0",
    "body.0.attention.mlp.fc2": "ltb.et.mlp.2",
    "body.0.alise": "ltb.conv",
    "body.0.weight1.scale": "ltb.g",
    "body.0.weight2.scale": "ltb.h",
    "reduce": "body_conv",
    "tail.0.0": "tail.0.0",
    "tail.0.2": "tail.0.2",  # x4 only: second conv of the upsampler
    "tail.1": "tail.1",
    "up.0.0": "skip.0.0",
    "up.0.2": "skip.0.2",  # x4 only
    "up.1.conv": "skip.1",
}
HPB_PREFIXES: dict[str, str] = {f"body.0.encoder{k + 1}": f"lcb.hpbs.{k}" for k in range(3)}
LEAVES = ("weight", "bias")


def _arfb_prefixes() -> dict[str, str | None]:
    table: dict[str, str | None] = {}
    for ref_arfb, our_arfb in HPB_ARFBS.items():
        for ref, ours in ARFB_KEYS.items():
            if ours is not None and ours.startswith("ru"):
                for ref_ru, our_ru in RU_KEYS.items():
                    table[f"{ref_arfb}.{ref}.{ref_ru}"] = f"{our_arfb}.{ours}.{our_ru}"
            else:
                table[f"{ref_arfb}.{ref}"] = None if ours is None else f"{our_arfb}.{ours}"
    return table


def reference_key_table() -> dict[str, str | None]:
    """Every reference module/parameter prefix mapped to ours (None: known unused), fully expanded."""
    table: dict[str, str | None] = dict(TOP_KEYS)
    for ref_hpb, our_hpb in HPB_PREFIXES.items():
        for ref, ours in {**_arfb_prefixes(), **HPB_KEYS}.items():
            table[f"{ref_hpb}.{ref}"] = None if ours is None else f"{our_hpb}.{ours}"
    return table


def _map_key(key: str, table: Mapping[str, str | None]) -> tuple[bool, str | None]:
    """(known, our_key): a scalar prefix maps as a whole; a layer prefix maps with .weight/.bias."""
    if key in table:
        return True, table[key]
    prefix, _, leaf = key.rpartition(".")
    if leaf in LEAVES and prefix in table:
        ours = table[prefix]
        return True, None if ours is None else f"{ours}.{leaf}"
    return False, None


def _as_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwraps {'state_dict': ...}-style containers and checks that obj is a flat name -> tensor dict."""
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = [obj[k] for k in ("state_dict", "model", "params_ema", "params") if k in obj]
            if inner:
                obj = inner[0]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: not a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: not a state dict of tensors (entry {bad[0]!r})")
    return dict(obj)


def detect_scale(state_dict: Mapping[str, torch.Tensor], prefix: str = "tail.0") -> int:
    """Scale from shapes: a 288-channel first upsampler conv means x3, a second conv x4, otherwise x2."""
    first = state_dict.get(f"{prefix}.0.weight")
    if first is None:
        raise CheckpointError(f"not an ESRT checkpoint: no upsampler weight {prefix}.0.weight")
    if first.shape[0] == 32 * 9:
        return 3
    return 4 if f"{prefix}.2.weight" in state_dict else 2


def _check_against(model: ESRT, converted: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = [k for k in converted if k not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r}")
    for key, tensor in converted.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )


def convert_reference(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> ESRT:
    """Builds an ESRT from a reference state dict (with or without a `module.` prefix on its keys).

    Every reference key must be mapped or listed as known unused; any other key, a missing key or a
    wrong shape raises CheckpointError naming the key.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    table = reference_key_table()
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        known, ours = _map_key(key, table)
        if not known:
            raise CheckpointError(f"{source}: unexpected key {key!r} (not an ESRT reference checkpoint?)")
        if ours is not None:
            converted[ours] = tensor
    model = ESRT(detect_scale(sd, prefix="tail.0"))
    ref_expected = {k for k in _reference_keys(model)}
    missing = sorted(ref_expected - sd.keys())
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    _check_against(model, converted, source)
    _check_finite(converted, source)
    model.load_state_dict(converted)
    return model


def _reference_keys(model: ESRT) -> set[str]:
    """The reference keys a checkpoint of model's scale must contain (our keys mapped back, plus unused)."""
    table = reference_key_table()
    ours_to_ref: dict[str, str] = {}
    unused: set[str] = set()
    for ref, ours in table.items():
        if ours is None:
            unused.add(ref)
        else:
            ours_to_ref[ours] = ref
    keys: set[str] = set(unused)
    for key in model.state_dict():
        if key in ours_to_ref:
            keys.add(ours_to_ref[key])
        else:
            prefix, _, leaf = key.rpartition(".")
            keys.add(f"{ours_to_ref[prefix]}.{leaf}")
    return keys


def to_reference(model: ESRT) -> dict[str, torch.Tensor]:
    """Our weights in the reference layout (unused scalars set to 1, as the reference initialises them)."""
    table = reference_key_table()
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ref in _reference_keys(model):
        known, ours = _map_key(ref, table)
        assert known
        out[ref] = torch.ones(1) if ours is None else sd[ours].clone()
    return out


def save_weights(model: ESRT, path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Writes model's weights as safetensors, atomically (esrt.atomic)."""
    from safetensors.torch import save_file

    meta = {"format": "esrt", "scale": str(model.scale)}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata record of one of our safetensors files."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_checkpoint(path: str | Path) -> ESRT:
    """An ESRT (train mode, fp32, CPU) from our .safetensors or a reference .pth state dict.

    Only tensors are read from a .pth (torch.load with weights_only): other pickled objects are refused, never
    run. Weights holding NaN or infinity are refused.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CheckpointError(f"{source}: no such file")
    with path.open("rb") as f:
        magic = f.read(8)
    if path.suffix == ".safetensors" or (len(magic) == 8 and magic[:2] != b"PK" and magic[0] != 0x80):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{source}: not a readable safetensors file ({exc})") from None
        return _build(sd, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it all
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError, KeyError):
        raise CheckpointError(
            f"{source}: not a plain state dict; refusing to unpickle arbitrary objects "
            "(esrt reads .safetensors, or .pth files that hold only tensors)"
        ) from None
    sd = _as_state_dict(obj, source)
    if any(k.removeprefix("module.").startswith("body.0.") for k in sd):
        return convert_reference(sd, source)
    return _build(sd, source)  # our own layout saved with torch.save


def _build(sd: Mapping[str, torch.Tensor], source: str) -> ESRT:
    """An ESRT holding sd (our own layout, `module.` prefixes of DataParallel dropped), checked: keys, shapes,
    finite values."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    model = ESRT(detect_scale(sd))
    _check_against(model, sd, source)
    _check_finite(sd, source)
    model.load_state_dict(sd)
    return model


def _check_finite(sd: Mapping[str, torch.Tensor], source: str) -> None:
    broken = next((k for k, v in sd.items() if not torch.isfinite(v).all()), None)
    if broken is not None:
        raise CheckpointError(f"{source}: weight {broken!r} holds NaN or infinity (a diverged training run?)")
