"""ONNX export of ESRT with dynamic batch, height and width, and an onnxruntime Upscaler for `esrt upscale`.

The Feature Split (docs/architecture.md) has a 5th chunk when N % 4 != 0, so the graph is traced on such an
input and keeps that branch (empty, and harmless, when N % 4 == 0); the fast mode's chunk count is computed in
the graph from N. onnx and onnxruntime are optional extras.
"""

from __future__ import annotations

import copy
import importlib
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from esrt.atomic import atomic_path

if TYPE_CHECKING:
    import argparse

    import torch

    from esrt.model import EMHA, ESRT

OPSET = 18
TRACE_SIZE = (7, 9)  # N = 63 tokens, N % 4 == 3: the trace records the remainder chunk of the Feature Split
INPUT, OUTPUT = "input", "output"
# Peak bytes per input pixel of a fast-mode graph in onnxruntime (it computes every chunk's attention scores at
# once): 74-77 KB measured with ru_maxrss at 64x64-160x128 px, x4, +20%; PyTorch's: esrt.tiling.BYTES_PER_PIXEL.
ONNX_BYTES_PER_PIXEL = 92_000


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


def _segment_attention(emha: EMHA, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """EMHA.attend with the chunk layout computed by tensor operations from N, so that a traced graph keeps it
    dynamic: the Feature Split, or blocked attention where its chunks would be longer than max_chunk."""
    import torch

    max_chunk, kernel = emha.settings.max_chunk, emha.settings.kernel
    assert max_chunk is not None
    B, heads, _, d = q.shape
    N = torch.as_tensor(q.shape[2])  # a traced size: the graph computes everything below from the input
    split = N // emha.splits
    chunks = (N + max_chunk - 1) // max_chunk
    size, longer = N // chunks, N % chunks  # blocked: `longer` chunks of size + 1, then chunks of size
    blocked = split > max_chunk
    cut = torch.where(blocked, longer * (size + 1), split * emha.splits)
    counts = (torch.where(blocked, longer, emha.splits), torch.where(blocked, chunks - longer, 1))
    outputs = []
    for start, stop, count in ((0, cut, counts[0]), (cut, N, counts[1])):
        count = torch.clamp(count, min=1)  # an empty segment (no longer chunks) is reshaped as one empty chunk
        shape: Any = (B, heads * count, (stop - start) // count, d)  # traced sizes: tensors, not ints
        qc, kc, vc = (t[:, :, start:stop].reshape(shape) for t in (q, k, v))  # (B, heads * count, L, d)
        outputs.append(kernel(qc, kc, vc).reshape(B, heads, -1, d))
    return torch.cat(outputs, dim=2)  # (B, heads, N, d)


@contextmanager
def _dynamic_chunks() -> Iterator[None]:
    """Temporarily routes EMHA.attend with a chunk cap through _segment_attention (tracing only)."""
    from esrt.model import EMHA

    original = EMHA.attend

    def attend(self: EMHA, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.settings.max_chunk is None:
            return original(self, q, k, v)
        return _segment_attention(self, q, k, v)

    EMHA.attend = attend  # type: ignore[method-assign]
    try:
        yield
    finally:
        EMHA.attend = original  # type: ignore[method-assign]


def export_onnx(model: ESRT, path: str | Path, opset: int = OPSET, exact: bool = False) -> Path:
    """Writes model as ONNX (input (B, 3, H, W) float32 in [0, 1], all three dynamic), atomically.

    exact: the reference attention; by default the fast mode (attention chunks of at most
    esrt.runtime.FAST_MAX_CHUNK tokens). Metadata records esrt's version, the scale, the opset and the chunk
    cap; the graph is checked by onnx.checker.
    """
    import torch

    import esrt
    from esrt.model import EMHA
    from esrt.runtime import prepare_for_inference

    onnx = require("onnx")
    net = copy.deepcopy(model).to("cpu", torch.float32)
    prepare_for_inference(net, "fp32", fast=not exact, malloc=False)  # the graph PyTorch runs for `esrt upscale`
    max_chunk = next(m.settings.max_chunk for m in net.modules() if isinstance(m, EMHA))
    meta = {"format": "esrt", "esrt_version": esrt.__version__, "scale": str(net.scale), "opset": str(opset)}
    meta["max_chunk"] = str(max_chunk or "none")
    with atomic_path(path) as tmp:
        _trace(net, tmp, opset)
        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"ESRT x{net.scale}: (B, 3, H, W) float32 RGB in [0, 1], H, W >= 2 -> (B, 3, sH, sW)"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return Path(path)


def _trace(net: ESRT, path: Path, opset: int) -> None:
    """Traces net into an ONNX file at path, with dynamic batch, height and width."""
    import torch

    from esrt.model import WIDTH

    sample = torch.rand(1, 3, *TRACE_SIZE, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), _fold_as_transposed_conv(WIDTH), _dynamic_chunks(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that hold for any size
        torch.onnx.export(
            net,
            (sample,),
            str(path),
            dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={
                INPUT: {0: "batch", 2: "height", 3: "width"},
                OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"},
            },
        )


class OnnxUpscaler:
    """An exported ESRT run by onnxruntime on the CPU; an esrt.upscale.Upscaler (scale and mode from its metadata)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.engine = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: not a readable ONNX model ({first})") from None
        meta = self.engine.get_modelmeta().custom_metadata_map
        if meta.get("format") != "esrt" or "scale" not in meta:
            raise ValueError(f"{path}: not an ONNX model made by `esrt export` (no esrt metadata)")
        self.scale = int(meta["scale"])
        self.opset = int(meta.get("opset", 0))
        self.fast = meta.get("max_chunk", "none") != "none"  # files from before the fast default hold no entry
        self.name = str(path)
        self.bytes_per_pixel = ONNX_BYTES_PER_PIXEL  # the auto tile size is planned from it

    def __call__(self, x: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(x, dtype=np.float32)[None]  # (1, 3, h, w)
        return self.engine.run([OUTPUT], {INPUT: batch})[0][0]  # (3, s*h, s*w)


def main_export(args: argparse.Namespace) -> int:
    """`esrt export --onnx OUT --scale S [--weights PATH]`."""
    from esrt.pretrained import load_model

    try:
        require("onnx")
    except ImportError as exc:
        print(f"esrt export: error: {exc}", file=sys.stderr)
        return 1
    model = load_model(args.weights, args.scale)
    path = export_onnx(model, args.onnx, opset=args.opset, exact=args.exact)
    mode = "exact" if args.exact else "fast"
    print(f"esrt export: wrote {path} (x{model.scale}, {mode} mode, opset {args.opset}, dynamic batch/height/width)")
    return 0
