"""The `esrt` command: parses arguments and dispatches to the modules; torch is imported lazily.

One subcommand per module (upscale -> upscale_cli, eval -> evaluate, train -> train, export -> export,
demo -> demo, info -> info).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, MutableMapping, Sequence

from esrt import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esrt", description="ESRT single image super-resolution.")
    parser.add_argument("--version", action="version", version=f"esrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # --- subcommands: each helper function adds one parser (kept in this file, no imports of torch) ---
    _add_train(sub)
    _add_eval(sub)
    _add_upscale(sub)
    _add_export(sub)
    _add_demo(sub)
    _add_info(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dataclasses import MISSING, fields

    from esrt.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train ESRT (the paper's recipe by default)",
        description="Train ESRT. Every setting has a default (the paper's recipe); a --config TOML/YAML/JSON file "
        "sets any of them, and command-line options override the file. Run under `torchrun --nproc_per_node N` "
        "for several processes.",
    )
    p.add_argument("--config", help="TOML, YAML or JSON file of settings")
    p.add_argument("--resume", metavar="DIR", help="continue from the newest checkpoint in DIR")
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        if kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        elif kind.startswith("tuple"):
            item = float if "float" in kind else int if "int" in kind else str
            p.add_argument(flag, nargs="*", type=item, default=None, help=f"{f.metadata['help']} (default {default})")
        else:
            item = {"int": int, "float": float, "str": str}[kind]
            p.add_argument(flag, type=item, default=None, help=f"{f.metadata['help']} (default {default!r})")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json
    from dataclasses import fields

    from esrt.train.config import TrainConfig, load_config_file

    settings = load_config_file(args.config) if args.config else {}
    for f in fields(TrainConfig):
        value = getattr(args, f.name)
        if value is not None:
            settings[f.name] = tuple(value) if isinstance(value, list) else value
    config = TrainConfig(**settings)
    from esrt.train import train

    result = train(config, resume=args.resume)
    print(json.dumps(result.summary(), allow_nan=False))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    p = sub.add_parser(
        "eval",
        help="PSNR/SSIM tables on benchmark sets (the field's protocol)",
        description="Score a method on benchmark sets as the papers do: modcrop, MATLAB bicubic LR, uint8 SR, "
        "Y of rgb2ycbcr, crop SCALE pixels per border, PSNR and SSIM (ssim_index.m), averaged per set. "
        "The bicubic baseline follows the papers' recipe (Y of the HR, MATLAB bicubic down and up in double).",
    )
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=4, help="upscaling factor (default 4)")
    p.add_argument(
        "--sets",
        nargs="+",
        default=["Set5", "Set14", "BSD100"],
        metavar="SET",
        help="set names (folders under --data-root) or paths to folders of HR images (default Set5 Set14 BSD100)",
    )
    p.add_argument(
        "--data-root", type=Path, default=None, help="folder holding the sets (default: $ESRT_DATA, else ./datasets)"
    )
    p.add_argument("--method", choices=("bicubic", "esrt"), default="esrt", help="what to score (default esrt)")
    p.add_argument("--weights", default=None, help="esrt checkpoint, .safetensors or reference .pth (default: shipped)")
    p.add_argument("--chop", action="store_true", help="run the model with the reference forward_chop tiling")
    p.add_argument("--fast", action="store_true", help="blocked attention (fast mode, not the reference)")
    _add_running_options(p)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write {set: {psnr, ssim, images}} here")
    p.add_argument("--save-dir", type=Path, default=None, metavar="DIR", help="save the SR images (bicubic: Y) here")
    p.add_argument("--figures", type=Path, default=None, metavar="DIR", help="save side-by-side crops HR|bicubic|ESRT")
    p.set_defaults(run=_lazy("esrt.evaluate", "main"))


def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale image files (PNG out by default)",
        description="Upscale images with ESRT. Outputs are named <stem>_x<S>.<format> in the -o folder (default "
        "./results; files from a folder input keep their sub-folders), or -o names the output file when there is "
        "one input. Existing outputs are skipped unless --overwrite; an input is never overwritten. Tiled output "
        "differs slightly from whole-image output: every pixel attends to a band of its own tile.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", default=None, metavar="OUT", help="output folder (default ./results) or file")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="model scale (default 4 or the weights')")
    p.add_argument("--weights", default=None, help="reference .pth, esrt .safetensors, or .onnx with --backend onnx")
    p.add_argument("--tile", default="auto", help="LR tile side in px, 'auto' (from free memory) or 0 (whole image)")
    p.add_argument("--tile-overlap", type=int, default=16, metavar="PX", help="overlap of tiles, blended (default 16)")
    _add_running_options(p)
    p.add_argument("--exact", action="store_true", help="the reference attention (default: fast mode, see README)")
    p.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)  # the default; kept as a no-op
    p.add_argument("--outscale", type=float, default=None, metavar="F", help="final factor (Lanczos resize of result)")
    p.add_argument("--alpha", choices=("bicubic", "model"), default="bicubic", help="how alpha is upscaled")
    p.add_argument("--format", choices=("png", "jpg", "webp", "bmp", "tiff"), default=None, help="output format (png)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--png-level", type=int, default=3, metavar="N", help="PNG zlib level, 0-9 (default 3; 9: smallest)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders (and ** in globs)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: all)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, metavar="N", help="refuse larger inputs (16777216)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="torch, or onnxruntime on an .onnx")
    p.set_defaults(run=_lazy("esrt.upscale_cli", "main_upscale"))


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export ESRT to ONNX (dynamic batch, height, width)",
        description="Export ESRT to ONNX with dynamic batch, height and width (any size, H, W >= 2); needs "
        "pip install 'esrt[onnx]'. Run it with `esrt upscale --backend onnx --weights OUT.onnx`.",
    )
    p.add_argument("--onnx", required=True, metavar="OUT", help="path of the .onnx file to write")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="model scale (default 4 or the weights')")
    p.add_argument("--weights", default=None, help="reference .pth or esrt .safetensors (default: shipped weights)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18, the lowest with the needed ops)")
    p.add_argument("--exact", action="store_true", help="the reference attention (default: fast mode, see README)")
    p.set_defaults(run=_lazy("esrt.export", "main_export"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a local web page to upscale images (pip install esrt[demo])",
        description="Serve a page on this computer to drop an image, pick scale and precision, compare before and "
        "after, and download the result. One image runs at a time, the others wait in a queue; files stay in a "
        "temporary folder that is deleted on exit. Only this computer can reach the page unless --host says otherwise.",
    )
    p.add_argument(
        "--weights",
        action="append",
        metavar="PATH",
        help="checkpoint, .safetensors or reference .pth, scale detected; repeat for several scales (default: shipped)",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 opens it to the network")
    p.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="a host name the page may be reached under besides its address (repeatable); other names get 403",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    p.add_argument("--tile", default="auto", help="LR tile side in pixels, auto (from free memory) or none")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest upload in MB (default 25)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest input, width x height (default 2097152)")
    p.add_argument("--queue", type=int, default=None, help="images that may wait behind the running one (default 8)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(run=_lazy("esrt.demo", "main"))


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="what a weights file holds: scale, parameters, training facts, sha256",
        description="Describe ESRT weights without running them: our .safetensors (with the training facts they "
        "record), reference .pth state dicts, and ONNX files made by `esrt export`.",
    )
    p.add_argument("file", metavar="FILE", help=".safetensors, .pth or .onnx file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(run=_lazy("esrt.info", "main_info"))


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """The subcommand's runner, imported only when that subcommand runs (so `esrt --help` needs no torch)."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return run


def _add_running_options(p: argparse.ArgumentParser) -> None:
    """How the network runs: the options `esrt eval` and `esrt upscale` share."""
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32 or bf16 autocast (default fp32)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (CUDA if any), cpu, cuda[:N] or mps")
    p.add_argument("--tta", action="store_true", help="x8 self-ensemble, 'ESRT+' in papers' tables (8x slower)")


# GNU OpenMP spins this many times before sleeping when a thread waits (default 300,000): beside another busy
# process, spinning threads fight it for the CPUs, and an x4 upscale on 2 cores took 4.1 s instead of 1.8 s
# with one core busy; 1,000 kept the idle speed (1.03 s against 1.02 s) and gave 1.8 s (bench/threads.py).
GOMP_SPINCOUNT = "1000"
_INFERENCE_COMMANDS = ("upscale", "eval", "demo", "export")


def wait_gently(environ: MutableMapping[str, str]) -> None:
    """Sets GOMP_SPINCOUNT in environ unless the user set it or OMP_WAIT_POLICY. Effective only before torch
    (and with it OpenMP) is first imported, which the inference commands do after this."""
    if "GOMP_SPINCOUNT" not in environ and "OMP_WAIT_POLICY" not in environ:
        environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in _INFERENCE_COMMANDS:  # training runs alone on its machine: it keeps OpenMP's default
        wait_gently(os.environ)
    formatter = warnings.formatwarning  # warnings as one line each, like the errors, while the command runs
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"esrt {args.command}: warning: {message}\n"
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("esrt: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # user errors: one line, no traceback
        print(f"esrt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatter


if __name__ == "__main__":
    sys.exit(main())
