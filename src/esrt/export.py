"""ONNX export of ESRT with dynamic batch, height and width, and an onnxruntime Upscaler for `esrt upscale`.

Follows ESRT_SPEC.md (EMHA Feature Split: a 5th chunk exists when N % 4 != 0, so the graph is traced on such an
input and keeps that branch; it is empty, and harmless, when N % 4 == 0); onnx/onnxruntime are optional extras.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import argparse

    import torch

    from esrt.model import ESRT

OPSET = 18
TRACE_SIZE = (7, 9)  # N = 63 tokens, N % 4 == 3: the trace records the remainder chunk of the Feature Split
INPUT, OUTPUT = "input", "output"


def require(name: str) -> ModuleType:
    """Imports an optional dependency, or raises ImportError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"{name} is not installed; install the ONNX extras: pip install 'esrt[onnx]'") from None


@contextmanager
def _fold_as_transposed_conv(channels: int) -> Iterator[None]:
    """Temporarily computes F.fold(3x3, padding 1) as a grouped transposed conv with one-hot kernels.

    The same sum of the 9 overlapping contributions, but exportable with dynamic H, W (the ONNX exporter's
    Col2Im needs a constant output size). Only used while tracing; model.py is unchanged.
    """
    import torch
    import torch.nn.functional as F

    original = F.fold
    # in-channel c*9 + k (unfold's order: channel, then the 3x3 offset k) has a one-hot kernel at offset k
    weight = torch.eye(9).reshape(9, 1, 3, 3).repeat(channels, 1, 1, 1)  # (C*9, 1, 3, 3)

    def fold(
        x: torch.Tensor,
        output_size: Any,
        kernel_size: Any,
        dilation: Any = 1,
        padding: Any = 0,
        stride: Any = 1,
    ) -> torch.Tensor:
        if (kernel_size, dilation, padding, stride) != (3, 1, 1, 1) or int(x.shape[1]) != 9 * channels:
            return original(x, output_size, kernel_size, dilation, padding, stride)
        H, W = output_size
        cols = x.reshape(x.shape[0], 9 * channels, H, W)  # (B, C*9, H, W)
        return F.conv_transpose2d(cols, weight.to(x.dtype), padding=1, groups=channels)  # (B, C, H, W)

    F.fold = fold
    try:
        yield
    finally:
        F.fold = original


def export_onnx(model: ESRT, path: str | Path, opset: int = OPSET) -> Path:
    """Writes model as ONNX (input (B, 3, H, W) float32 in [0, 1], all three dynamic), atomically.

    Metadata records esrt's version, the scale and the opset; the graph is checked by onnx.checker.
    """
    import torch

    import esrt
    from esrt.model import WIDTH

    onnx = require("onnx")
    path = Path(path)
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    sample = torch.rand(1, 3, *TRACE_SIZE, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), _fold_as_transposed_conv(WIDTH), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks that hold for any size
            torch.onnx.export(
                net,
                (sample,),
                str(tmp),
                dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
                opset_version=opset,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={
                    INPUT: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"},
                },
            )
        proto = onnx.load(str(tmp))
        meta = {"format": "esrt", "esrt_version": esrt.__version__, "scale": str(net.scale), "opset": str(opset)}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"ESRT x{net.scale}: (B, 3, H, W) float32 RGB in [0, 1], H, W >= 2 -> (B, 3, sH, sW)"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OnnxUpscaler:
    """An exported ESRT run by onnxruntime on the CPU; an infer.Upscaler (scale from the file's metadata)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: not a readable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != "esrt" or "scale" not in meta:
            raise ValueError(f"{path}: not an ONNX model made by `esrt export` (no esrt metadata)")
        self.scale = int(meta["scale"])
        self.opset = int(meta.get("opset", 0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(x, dtype=np.float32)[None]  # (1, 3, h, w)
        return self.session.run([OUTPUT], {INPUT: batch})[0][0]  # (3, s*h, s*w)


def main_export(args: argparse.Namespace) -> int:
    """`esrt export --onnx OUT --scale S [--weights PATH]`."""
    from esrt.pretrained import load_model

    try:
        require("onnx")
    except ImportError as exc:
        print(f"esrt export: error: {exc}", file=sys.stderr)
        return 1
    model = load_model(args.weights, args.scale)
    path = export_onnx(model, args.onnx, opset=args.opset)
    print(f"esrt export: wrote {path} (x{model.scale}, opset {args.opset}, dynamic batch/height/width)")
    return 0
