"""The command line: discovers the command modules and turns UserError into one line."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import imageselector.commands as commands_pkg
from pipeline.core.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imageselector",
        description="Operations console and pipeline for the Etsy furniture image search.")
    parser.add_argument("--root", default=None,
                        help="runtime root (default: $IMAGESELECTOR_ROOT, else the current directory)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands_pkg.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"imageselector: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("imageselector: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    """Let ``--root`` also follow the subcommand (``imageselector status --root R``)."""
    parser.add_argument("--root", default=argparse.SUPPRESS,
                        help="runtime root (default: $IMAGESELECTOR_ROOT, else the current directory)")
