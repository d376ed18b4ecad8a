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
    return parser


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
