"""`temalign` command line: one subcommand per module, each registering its own parser.

The service's own commands are listed here. Other installed packages add theirs through the
`temalign.commands` entry points (the digital twin's `twin` and `demo`, in `temalign_twin`), which
are loaded only when the command asked for is not one of the service's: `temalign run` never
imports a simulator."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeAlias

from temalign import __version__
from temalign.errors import TemalignError

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    """What `register(subparsers)` gets: `add_parser` makes one command's parser."""

COMMAND_MODULES = (
    "temalign.config.cli",
    "temalign.wobble.cli",
    "temalign.service.cli",
    "temalign.service.model_cli",
)
"""Modules with `register(subparsers)`; each sets `handler(args) -> int` on its parser."""
PLUGIN_GROUP = "temalign.commands"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: the service's commands, and the plug-ins' unless `argv` names one of
    the service's commands."""
    parser = argparse.ArgumentParser(
        prog="temalign",
        description="Keeps the condenser aperture of a TEM aligned during long experiments.",
    )
    parser.add_argument("--version", action="version", version=f"temalign {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    command = next((a for a in argv or () if not a.startswith("-")), None)
    if command not in subparsers.choices:
        for plugin in entry_points(group=PLUGIN_GROUP):
            plugin.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TemalignError as error:
        print(f"temalign: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("temalign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`temalign status | head -1`): as the shell's own tools, stop
        # quietly; stdout goes to /dev/null so the interpreter's own flush at exit cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
