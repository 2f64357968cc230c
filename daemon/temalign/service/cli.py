"""The service's commands: `temalign run` and the verbs a person uses on a running daemon
(status, pause, resume, once, dry-run, hold clear, reference set, history, calibrate).

Every verb takes `--config FILE` (default /etc/temalign/temalign.yaml, else the shipped file): the
config names the control socket and the state directory; `-s/--socket PATH` names the socket
instead (the config is then not read). The verbs talk to the daemon over the control socket;
`history` reads the journal itself, so it works with the daemon stopped. What they print is
worded in service.describe."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from temalign.errors import TemalignError
from temalign.record.summary import cycle_summary
from temalign.service.describe import describe_cycle, describe_status

if TYPE_CHECKING:
    from temalign.cli import Subparsers
    from temalign.config.schema import Settings
    from temalign.values import JsonObject


SOCKET_HELP = "the daemon's control socket (default: control.socket of the config)"


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="config file (default /etc/temalign/temalign.yaml, else the shipped one)")


def _socket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-s", "--socket", type=Path, metavar="PATH", help=SOCKET_HELP)


def _microscope_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--microscope", metavar="HOST:PORT", help="protocol server instead of the config's")


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _verb_parser(subparsers: Subparsers, name: str, summary: str, description: str
                 ) -> argparse.ArgumentParser:
    """A verb that talks to the running daemon: its help, --config and -s/--socket."""
    p = subparsers.add_parser(name, help=summary, description=description)
    _config_arg(p)
    _socket_arg(p)
    return p


def register(subparsers: Subparsers) -> None:
    """Add `run`, `status`, `pause`, `resume`, `once`, `dry-run`, `hold`, `reference`, `calibrate`,
    `history`."""
    p = subparsers.add_parser(
        "run", help="run the alignment service (systemd runs this)",
        description="Run the service: cycles when the adaptive schedule says (a two-frame check at most "
                    "schedule.check_interval_s apart while the column stays aligned, a full wobble at "
                    "most schedule.max_interval_s apart, sooner after a jump or a rollback), the control "
                    "socket, the metrics endpoint and, if configured, the HTTP control endpoint. SIGTERM "
                    "stops it cleanly, SIGHUP reloads the config.")
    _config_arg(p)
    _microscope_arg(p)
    p.set_defaults(handler=run)

    p = _verb_parser(subparsers, "status", "state, last cycle, misalignment now, next cycle, limits",
                     "Show the running daemon's state (the first line says when it is paused or in hold), "
                     "the last cycle's estimate and whether the aperture moved since, the next cycle, "
                     "uptime, pid, version and the model in use. Exit status as LSB says: 0 the daemon "
                     "runs (whatever its state: --json's `state` tells them apart), 3 it does not, 4 its "
                     "state cannot be told (no permission on the socket, an unreadable reply).")
    _json_arg(p)
    p.set_defaults(handler=status)

    p = _verb_parser(subparsers, "pause", "stop wobbling (for an exposure), until resumed or for a time",
                     "Pause the daemon: no wobble starts until `temalign resume`, or until --for has "
                     "passed (a cycle in flight stops before its next C1 step). A pause survives a "
                     "restart. A shorter pause does not replace a longer or open-ended one already in "
                     "place unless --replace.")
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help="how long, with its unit: 20s, 10m, 2h, 1d, 1h30m (default: until resume)")
    p.add_argument("--reason", help="shown by status and kept in the journal")
    p.add_argument("--replace", action="store_true",
                   help="replace a pause already in place even when this one is shorter")
    p.set_defaults(handler=pause)

    p = _verb_parser(subparsers, "resume", "resume after a pause (accepts the aperture and C1 as they are)",
                     "End a pause. The aperture and C1 are taken as they are now: resume after moving "
                     "the aperture or changing C1 by hand, and the daemon goes on from there. With no "
                     "pause in place it says so and changes nothing.")
    p.set_defaults(handler=lambda a: _command(a, "resume"))

    p = _verb_parser(subparsers, "once", "run one cycle now and print its outcome (exit 1 if it failed)",
                     "Run one cycle now, in hold too (measuring only: a hold never moves), each step "
                     "shown on stderr as it happens. A pause blocks it, as it blocks every wobble, "
                     "unless --force; nothing runs while the busy file exists. Exit status 1 when the "
                     "cycle ended in an error or in hold.")
    _json_arg(p)
    p.add_argument("--force", action="store_true", help="run even while paused (never during the busy file)")
    p.set_defaults(handler=once)

    p = _verb_parser(subparsers, "dry-run", "show the mode, or measure only (on) or move again (off)",
                     "In dry-run the daemon wobbles and estimates on schedule and reports what it would "
                     "do, but never moves the aperture. Without an argument, show which mode it is in. "
                     "The switch takes effect at once and survives a restart.")
    p.add_argument("switch", nargs="?", choices=("on", "off"),
                   help="on: measure and report only; off: live, corrections are made (none: show the mode)")
    p.set_defaults(handler=lambda a: _command(a, "dry-run",
                                              {} if a.switch is None else {"on": a.switch == "on"}))

    p = _verb_parser(subparsers, "hold", "clear a hold (after repeated failures) once the cause is fixed",
                     "A hold stops all moves after repeated failures, a drift past max_excursion, a C1 "
                     "that could not be put back or a disk that refused the record; status says which. "
                     "Only a person clears it: `temalign hold clear`, once the cause is fixed.")
    p.add_argument("action", choices=("clear",), help="clear: lift the hold")
    p.set_defaults(handler=lambda a: _command(a, "hold-clear"))

    p = _verb_parser(subparsers, "reference", "take the aperture's present position as the aligned one",
                     "Align by hand, then `temalign reference set`: the position now is the one the "
                     "session is held to; the safety envelope (window, excursion) is measured from it.")
    p.add_argument("action", choices=("set",), help="set: the aperture's present position")
    p.set_defaults(handler=lambda a: _command(a, "reference-set"))

    p = _verb_parser(subparsers, "calibrate", "measure how the spot walk follows the aperture (2 x 2)",
                     "Move the aperture by known steps both ways in x and in y, wobble at the start and "
                     "at each, and store the 2 x 2 calibrations both estimators use (the classical "
                     "estimator's and the model's own); each step is shown on stderr as it "
                     "happens. Goes through the running daemon when one runs (never during a cycle); "
                     "the aperture and C1 are put back in any case.")
    _microscope_arg(p)
    p.add_argument("--step", type=float, default=None, metavar="UNITS", help="step per axis (default 100)")
    _json_arg(p)
    p.set_defaults(handler=calibrate)

    p = subparsers.add_parser("history", help="the last cycles, from the journal (daemon not needed)",
                              description="The last cycles from the journal in the state directory, one "
                                          "line each (its time, how many of its wobbles the stack store "
                                          "kept, what it did; --json: their ids in `stacks`); works with "
                                          "the daemon stopped.")
    _config_arg(p)
    p.add_argument("-n", type=int, default=20, metavar="N", help="how many cycles (default 20)")
    _json_arg(p)
    p.set_defaults(handler=history)


FAILED_OUTCOMES = ("error", "hold")
"""The outcomes of a `temalign once` that exits 1: the cycle could not do its job."""
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4
"""LSB's exit statuses of `status` (0: running)."""


def _settings(args: argparse.Namespace) -> Settings:
    from temalign.config.loader import apply_overrides, default_config_path, load_config

    settings = load_config(args.config if args.config is not None else default_config_path())
    return apply_overrides(settings, microscope=getattr(args, "microscope", None))


def _socket(args: argparse.Namespace) -> Path:
    """-s/--socket, else the config's control.socket (the config is not read with -s)."""
    given: Path | None = getattr(args, "socket", None)
    return given if given is not None else _settings(args).control.socket


def _say(text: str) -> None:
    """A progress line from the daemon, on stderr (stdout keeps the result alone, --json too)."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _verb(args: argparse.Namespace, verb: str, extra: JsonObject | None = None,
          progress: Callable[[str], None] | None = None) -> JsonObject:
    """Send `verb`, print its reply (its message, or the status), return it."""
    from temalign.service.control import request

    result = request(_socket(args), verb, extra or {}, progress=progress)
    if getattr(args, "json", False):
        print(json.dumps(result, indent=1, default=str))
    elif verb == "once":
        print(describe_cycle(result))
    elif "message" in result:
        print(result["message"])
    else:
        print(describe_status(result))
    return result


def _command(args: argparse.Namespace, verb: str, extra: JsonObject | None = None) -> int:
    """A verb whose reply is a message or the status: exit 0 when the daemon took it."""
    _verb(args, verb, extra)
    return 0


def status(args: argparse.Namespace) -> int:
    """LSB: 0 the daemon runs, 3 it does not, 4 its state is unknown."""
    return lsb_status(lambda: _verb(args, "status"))


def lsb_status(ask: Callable[[], object]) -> int:
    """A status verb's exit status (LSB): 0 the daemon answered `ask`, 3 it does not run, 4 its
    state cannot be told."""
    from temalign.service.control import ControlError, NotRunning

    try:
        ask()
    except NotRunning as error:
        print(f"temalign: not running: {error}", file=sys.stderr)
        return STATUS_NOT_RUNNING
    except ControlError as error:
        print(f"temalign: error: {error}", file=sys.stderr)
        return STATUS_UNKNOWN
    return 0


def once(args: argparse.Namespace) -> int:
    result = _verb(args, "once", {"force": args.force}, progress=_say)
    return 1 if result.get("outcome") in FAILED_OUTCOMES else 0


def pause(args: argparse.Namespace) -> int:
    from temalign.timetext import parse_duration

    extra: JsonObject = {"reason": args.reason, "replace": args.replace}
    if args.duration:
        try:
            extra["for_s"] = parse_duration(args.duration)
        except ValueError as error:
            raise UsageError(f"pause --for: {error}") from None
    return _command(args, "pause", extra)


class UsageError(TemalignError):
    """A command-line mistake: exit status 2, as argparse's own."""

    exit_status = 2


def history(args: argparse.Namespace) -> int:
    from temalign.record.journal import read_journal

    settings = _settings(args)
    try:
        entries = read_journal(settings.paths.state_dir)
    except FileNotFoundError:
        raise TemalignError(f"no journal in {settings.paths.state_dir} yet") from None
    cycles = [e for e in entries if e.get("kind") == "cycle"][-max(args.n, 0):]
    if args.json:
        print(json.dumps(cycles, indent=1, default=str))
    else:
        for c in cycles:
            print(f"{_local(c.get('time'))}  {_stored(c):9}  {cycle_summary(c)}")
    return 0


def _stored(cycle: JsonObject) -> str:
    """History's column of the stack store: how many of the cycle's wobbles it kept (record.stacks)."""
    kept = cycle.get("stacks")
    count = len(kept) if isinstance(kept, list) else 0
    return "no stack" if count == 0 else f"{count} stack{'s' if count > 1 else ''}"


def _local(stamp: object) -> str:
    """A journal time (UTC, ISO 8601) in the local zone, without the date when it is today."""
    from temalign.service.describe import when

    text = str(stamp or "")
    return when(text.replace("Z", "+00:00")) or text


def run(args: argparse.Namespace) -> int:
    import structlog

    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.record.logs import configure_logging
    from temalign.record.native_output import native_output_logged
    from temalign.service.daemon import Daemon

    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)
    ms = settings.microscope
    microscope = TcpMicroscope.from_settings(ms, "temalign-daemon")
    # Opening the model makes LiteRT print to fd 2 itself: caught, and logged as an event.
    with native_output_logged(structlog.get_logger("temalign"), "litert"):
        daemon = Daemon(settings, microscope, config_path=_config_path(args))
    try:
        daemon.install_signal_handlers()
        daemon.start()
        return daemon.run_forever(lambda: _settings(args))
    finally:
        daemon.stop()
        microscope.close()


def _config_path(args: argparse.Namespace) -> Path:
    from temalign.config.loader import default_config_path

    return Path(args.config if args.config is not None else default_config_path()).resolve()


def describe_calibration(cal: JsonObject) -> str:
    """The matrix and what it says about the camera: rotation, scale, mirroring, against twin.md's."""
    import numpy as np

    from temalign.estimate.calibration import Calibration, nominal_calibration

    measured = Calibration.from_json(cal).array
    nominal = nominal_calibration(wobble_fraction=float(cal["wobble_fraction"])).array
    relative = np.linalg.solve(nominal, measured)
    scale = math.sqrt(abs(np.linalg.det(relative)))
    angle = math.degrees(math.atan2(relative[1, 0] - relative[0, 1], relative[0, 0] + relative[1, 1]))
    mirrored = np.linalg.det(relative) < 0
    rows = ", ".join("[" + ", ".join(f"{v:.4g}" for v in row) + "]" for row in cal["matrix"])
    return (f"calibration stored: M = [{rows}] (FOV per unit of C1 change per motor unit)\n"
            f"against the twin's geometry: scale {scale:.3f}, rotation {angle:+.1f} deg"
            f"{', mirrored' if mirrored else ''}; fit residual {cal.get('residual_fov', 0) * 256:.2f} px")


def calibrate(args: argparse.Namespace) -> int:
    from temalign.service.control import is_running, request

    sock = _socket(args)
    if is_running(sock):
        asked = {} if args.step is None else {"step_units": args.step}
        cal = request(sock, "calibrate", asked, progress=_say)
    else:
        cal = _calibrate_directly(_settings(args), args.step)
    print(json.dumps(cal, indent=1) if args.json else describe_calibration(cal))
    return 0


def _calibrate_directly(settings: Settings, step: float | None) -> JsonObject:
    from temalign.clock import RealClock
    from temalign.estimate.calibration import save_calibration
    from temalign.estimate.model_estimator import open_model
    from temalign.protocol.errors import ProtocolError
    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.service.calibrate import DEFAULT_STEP_UNITS
    from temalign.service.calibrate import calibrate as measure
    from temalign.wobble.c1_memory import C1Memory
    from temalign.wobble.cli import describe_protocol_error
    from temalign.wobble.sources import source_from_settings

    state_dir = settings.paths.ensure_state_dir()
    ms = settings.microscope
    clock = RealClock()
    microscope = TcpMicroscope.from_settings(ms, "temalign-calibrate")
    try:
        memory = C1Memory(state_dir)
        memory.recover(microscope)
        source = source_from_settings(settings.source, microscope, clock)
        cal = measure(microscope, source, wobble_settings=settings.wobble, quality_settings=settings.quality,
                      clock=clock, memory=memory, step_units=DEFAULT_STEP_UNITS if step is None else step,
                      progress=_say, model=open_model(settings, source.kind))
    except ProtocolError as error:
        raise TemalignError(describe_protocol_error(error, ms.address)) from None
    finally:
        microscope.close()
    save_calibration(state_dir, cal)
    return cal.to_json()
