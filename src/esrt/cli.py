"""The `esrt` command: parses arguments and dispatches to the modules; torch is imported lazily.

One subcommand per module (upscale -> infer, eval -> evaluate, train -> train, export -> export, demo -> demo).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from esrt import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esrt", description="ESRT single image super-resolution.")
    parser.add_argument("--version", action="version", version=f"esrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # --- subcommands: each helper function adds one parser (kept in this file, no imports of torch) ---
    _add_train(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dataclasses import MISSING, fields

    from esrt.config import TrainConfig

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

    from esrt.config import TrainConfig, load_config_file

    settings = load_config_file(args.config) if args.config else {}
    for f in fields(TrainConfig):
        value = getattr(args, f.name)
        if value is not None:
            settings[f.name] = tuple(value) if isinstance(value, list) else value
    config = TrainConfig(**settings)
    from esrt.train import train

    result = train(config, resume=args.resume)
    print(json.dumps(result.summary()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("esrt: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # user errors: one line, no traceback
        print(f"esrt {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
