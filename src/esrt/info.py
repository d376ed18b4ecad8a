"""`esrt info FILE`: what a weights file holds (architecture, scale, parameters, training facts, sha256).

Reads the metadata our .safetensors files carry (esrt.convert.save_weights), reference .pth state dicts (checked
and counted through esrt.convert) and the metadata of `esrt export` ONNX files (esrt.export).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

# Metadata keys shown first, in this order; any other key follows in alphabetical order (a safetensors
# header keeps no order of its own).
KNOWN = ("iterations", "data", "set5_psnr", "set5_ssim", "precision")


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _value(text: str) -> Any:
    """A metadata value: JSON where it parses (numbers, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _torch_info(path: Path) -> dict[str, Any]:
    """A .safetensors or .pth file: loaded and checked as ESRT weights; our metadata when the file has some."""
    from esrt.convert import load_checkpoint, read_metadata

    model = load_checkpoint(path)  # CheckpointError (a ValueError) on anything that is not ESRT weights
    info: dict[str, Any] = {"format": "PyTorch state dict (.pth)", "architecture": "ESRT", "scale": model.scale}
    info["parameters"] = sum(p.numel() for p in model.parameters())
    with path.open("rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        info["format"] = "safetensors"
        meta = read_metadata(path)
        if meta.get("format") == "esrt":
            info["format"] = "esrt safetensors"
        info.update({k: _value(v) for k, v in meta.items() if k not in ("format", "scale")})
    return info


def _onnx_info(path: Path) -> dict[str, Any]:
    """An ONNX file written by `esrt export`: its esrt metadata and the size of its weights."""
    import numpy as np

    try:
        import onnx
    except ImportError:
        raise ValueError("reading ONNX files needs the ONNX extras: pip install 'esrt[onnx]'") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise ValueError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("format") != "esrt" or "scale" not in meta:
        raise ValueError(f"{path}: an ONNX model, but not one made by `esrt export` (no esrt metadata)")
    info: dict[str, Any] = {"format": "ONNX", "architecture": "ESRT", "scale": int(meta["scale"])}
    # Not the network's parameter count: the export adds constants (the fold's one-hot kernels, shapes).
    info["stored_values"] = int(sum(np.prod(t.dims) for t in proto.graph.initializer))
    info.update({k: _value(v) for k, v in meta.items() if k not in ("format", "scale")})
    return info


def describe(path: str | Path) -> dict[str, Any]:
    """Everything `esrt info` reports about one file, as a JSON-ready dict; ValueError/OSError for other files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    info = _onnx_info(path) if path.suffix.lower() == ".onnx" else _torch_info(path)
    known = {k: info.pop(k) for k in KNOWN if k in info}
    head = {k: info.pop(k) for k in ("format", "architecture", "scale", "parameters", "stored_values") if k in info}
    rest = dict(sorted(info.items()))
    return {"file": str(path), **head, **known, **rest, "bytes": path.stat().st_size, "sha256": sha256(path)}


def _text(key: str, value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if key in ("parameters", "stored_values", "bytes"):
        return f"{value:,}"
    return str(value)


def format_info(info: dict[str, Any]) -> str:
    """The report as aligned `name  value` lines."""
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {_text(k, v)}" for k, v in info.items())


def main_info(args: argparse.Namespace) -> int:
    """`esrt info FILE [--json]`."""
    info = describe(args.file)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
