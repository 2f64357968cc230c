"""`temalign` command line: one subcommand per module, each registering its own parser."""

from __future__ import annotations

import argparse
import importlib
import sys

from temalign.errors import TemalignError

# Modules with `register(subparsers)`; each sets `handler(args) -> int` on its parser.
COMMAND_MODULES = (
    "temalign.twin.cli",
    "temalign.config.cli",
    "temalign.wobble.cli",
    "temalign.demo",
    "temalign.service.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="temalign",
        description="Keeps the condenser aperture of a TEM aligned during long experiments.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TemalignError as error:
        print(f"temalign: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("temalign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
