"""`temalign wobble`: one wobble against the configured microscope, and what it shows.

For a person at the column: after aligning by hand, or to see what the daemon sees. It first
settles any wobble an earlier run left unfinished (C1Memory.recover), then wobbles once and
prints, per frame, C1 and the measured spot, and whether the discs are concentric."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from temalign.errors import ConfigError, TemalignError

if TYPE_CHECKING:
    from temalign.cli import Subparsers
    from temalign.config.schema import Settings
    from temalign.frames import WobbleStack


def register(subparsers: Subparsers) -> None:
    """Add the `wobble` subcommand."""
    parser = subparsers.add_parser(
        "wobble",
        help="wobble C1 once and show where the spot is in each frame",
        description="Wobble C1 once through 7 values against the configured microscope (C1 is put "
                    "back afterwards, whatever happens), measure the spot in each frame and say "
                    "whether the discs are concentric (aperture aligned) or walk.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="config file (default /etc/temalign/temalign.yaml, else the shipped one)")
    parser.add_argument("--microscope", metavar="HOST:PORT",
                        help="protocol server to use instead of the config's")
    parser.add_argument("--source", choices=("camera", "screen"),
                        help="where the frames come from (default: the config's source.kind)")
    parser.add_argument("--save", type=Path, metavar="STACK.npz",
                        help="write the 7 frames and their metadata")
    parser.set_defaults(handler=run)


def describe_protocol_error(error: Exception, address: str) -> str:
    """A protocol failure as one sentence that names the microscope's address."""
    from temalign.protocol.errors import ConnectFailed, DeadlineExceeded, RemoteError, TransportError

    if isinstance(error, ConnectFailed):
        cause = error.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else _reason(error)
        return f"cannot reach the microscope at {address}: {reason[:1].lower()}{reason[1:]}"
    if isinstance(error, DeadlineExceeded):
        return f"the microscope at {address} did not answer in time: {_reason(error)}"
    if isinstance(error, TransportError):
        return f"the connection to the microscope at {address} failed: {_reason(error)}"
    if isinstance(error, RemoteError):
        return f"the microscope at {address} refused: {error}"
    return f"microscope at {address}: {error}"


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


def save_stack(path: Path, stack: WobbleStack) -> None:
    """The stack as .npz: images (7, H, W) float32 and every piece of metadata as arrays."""
    import numpy as np

    try:
        with path.open("wb") as handle:
            np.savez_compressed(
                handle, images=stack.images, c1_values=np.asarray(stack.c1_values),
                times=np.asarray(stack.times), c1_before=np.float64(stack.c1_before),
                wobble_fraction=np.float64(stack.wobble_fraction), source=np.str_(stack.source),
                kind=np.str_(stack.kind))
    except OSError as error:
        raise TemalignError(f"cannot write {path}: {error.strerror or error}") from error


def _settings(args: argparse.Namespace) -> Settings:
    from temalign.config.loader import apply_overrides, default_config_path, load_config

    settings = load_config(args.config if args.config is not None else default_config_path())
    settings = apply_overrides(settings, microscope=args.microscope)
    kind = args.source or settings.source.kind
    if kind == "screen" and "region" not in settings.source.screen.model_fields_set:
        raise ConfigError("--source screen: source.screen.region is not set in the config; give the "
                          "screen pixels of the live view ({left, top, width, height}, docs/wobble.md)")
    return settings


def run(args: argparse.Namespace) -> int:
    from temalign.clock import RealClock
    from temalign.estimate.spots import measure_stack
    from temalign.estimate.walk import fit_walk
    from temalign.protocol.errors import ProtocolError
    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.wobble.c1_memory import C1Memory
    from temalign.wobble.report import describe_walk, spot_table
    from temalign.wobble.sources import source_from_settings
    from temalign.wobble.stack import wobble

    settings = _settings(args)
    state_dir = settings.paths.ensure_state_dir()
    ms = settings.microscope
    kind = args.source or settings.source.kind
    clock = RealClock()
    microscope = TcpMicroscope.from_settings(ms, "temalign-wobble")
    source = source_from_settings(settings.source, microscope, clock, kind=kind)
    try:
        memory = C1Memory(state_dir)
        print(f"recovery: {memory.recover(microscope)}", flush=True)
        w = settings.wobble
        print(f"wobble: {w.fraction:.1%} around the present C1, {kind} frames, settle {w.settle_s:g} s "
              f"(microscope {ms.address})", flush=True)
        stack = wobble(microscope, source, fraction=w.fraction, settle_s=w.settle_s, clock=clock,
                       memory=memory, restore_attempts=w.restore_attempts)
    except ProtocolError as error:
        raise TemalignError(describe_protocol_error(error, ms.address)) from error
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
        microscope.close()
    height, width = stack.images.shape[1:]
    spots = measure_stack(stack)
    print(f"{width}x{height} frames, C1 before {stack.c1_before:.6g} (put back):")
    for line in spot_table(stack, spots):
        print(line)
    print(describe_walk(fit_walk(stack, spots=spots), width, stack.wobble_fraction))
    if args.save is not None:
        save_stack(args.save, stack)
        print(f"saved {args.save}")
    return 0
