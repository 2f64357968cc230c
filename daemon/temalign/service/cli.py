"""The service's commands: `temalign run` and the verbs a person uses on a running daemon
(status, pause, resume, once, dry-run, hold clear, reference set, history, calibrate).

Every verb takes `--config FILE` (default /etc/temalign/temalign.yaml, else the shipped file): the
config names the control socket and the state directory. The verbs talk to the daemon over the
control socket; `history` reads the journal itself, so it works with the daemon stopped."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from temalign.errors import TemalignError

if TYPE_CHECKING:
    from temalign.cli import Subparsers
    from temalign.config.schema import Settings
    from temalign.values import JsonObject


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="config file (default /etc/temalign/temalign.yaml, else the shipped one)")


def _microscope_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--microscope", metavar="HOST:PORT", help="protocol server instead of the config's")


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def register(subparsers: Subparsers) -> None:
    """Add `run`, `status`, `pause`, `resume`, `once`, `dry-run`, `hold`, `reference`, `history`."""
    p = subparsers.add_parser("run", help="run the alignment service (systemd runs this)",
                              description="Run the service: a cycle every schedule.interval_s, the control "
                                          "socket, the metrics endpoint. SIGTERM stops it cleanly.")
    _config_arg(p)
    _microscope_arg(p)
    p.set_defaults(handler=run)

    p = subparsers.add_parser("status", help="state, last cycles, misalignment, limits")
    _config_arg(p)
    _json_arg(p)
    p.set_defaults(handler=lambda a: _verb(a, "status"))

    p = subparsers.add_parser("pause", help="stop wobbling (for an exposure), until resumed or for a time")
    _config_arg(p)
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help="e.g. 90s, 15m, 2h (default: until resume)")
    p.add_argument("--reason", help="shown by status and kept in the journal")
    p.set_defaults(handler=pause)

    p = subparsers.add_parser("resume", help="resume after pause (accepts the aperture and C1 as they are)")
    _config_arg(p)
    p.set_defaults(handler=lambda a: _verb(a, "resume"))

    p = subparsers.add_parser("once", help="run one cycle now and print its outcome (exit 1 if it failed)",
                              description="Run one cycle now, in hold too (measuring only: a hold never "
                                          "moves). A pause blocks it, as it blocks every wobble, unless "
                                          "--force; nothing runs while the busy file exists. Exit status "
                                          "1 when the cycle ended in an error or in hold.")
    _config_arg(p)
    _json_arg(p)
    p.add_argument("--force", action="store_true", help="run even while paused (never during the busy file)")
    p.set_defaults(handler=lambda a: _verb(a, "once", {"force": a.force}))

    p = subparsers.add_parser("dry-run", help="measure and report only (on), or move again (off)")
    _config_arg(p)
    p.add_argument("switch", choices=("on", "off"))
    p.set_defaults(handler=lambda a: _verb(a, "dry-run", {"on": a.switch == "on"}))

    p = subparsers.add_parser("hold", help="clear a hold (after repeated failures) once the cause is fixed")
    _config_arg(p)
    p.add_argument("action", choices=("clear",))
    p.set_defaults(handler=lambda a: _verb(a, "hold-clear"))

    p = subparsers.add_parser("reference", help="take the aperture's present position as the aligned one")
    _config_arg(p)
    p.add_argument("action", choices=("set",))
    p.set_defaults(handler=lambda a: _verb(a, "reference-set"))

    p = subparsers.add_parser("calibrate", help="measure how the spot walk follows the aperture (2 x 2)",
                              description="Move the aperture by known steps in x and y, wobble at each, "
                                          "and store the 2 x 2 calibration the classical estimator uses. "
                                          "Goes through the running daemon when one runs (never during a "
                                          "cycle); the aperture and C1 are put back in any case.")
    _config_arg(p)
    _microscope_arg(p)
    p.add_argument("--step", type=float, default=60.0, metavar="UNITS", help="step per axis (default 60)")
    _json_arg(p)
    p.set_defaults(handler=calibrate)

    p = subparsers.add_parser("history", help="the last cycles, from the journal (daemon not needed)")
    _config_arg(p)
    p.add_argument("-n", type=int, default=20, metavar="N", help="how many cycles (default 20)")
    _json_arg(p)
    p.set_defaults(handler=history)


FAILED_OUTCOMES = ("error", "hold")
"""The outcomes of a `temalign once` that exits 1: the cycle could not do its job."""


def _settings(args: argparse.Namespace) -> Settings:
    from temalign.config.loader import apply_overrides, default_config_path, load_config

    settings = load_config(args.config if args.config is not None else default_config_path())
    return apply_overrides(settings, microscope=getattr(args, "microscope", None))


def _verb(args: argparse.Namespace, verb: str, extra: JsonObject | None = None) -> int:
    from temalign.service.control import request

    settings = _settings(args)
    result = request(settings.control.socket, verb, extra or {})
    if getattr(args, "json", False):
        print(json.dumps(result, indent=1, default=str))
    elif verb == "once":
        print(describe_cycle(result))
    else:
        print(describe_status(result))
    if verb == "once" and result.get("outcome") in FAILED_OUTCOMES:
        return 1
    return 0


def parse_duration(text: str) -> float:
    """"90s", "15m", "2h", "1h30m" or plain seconds -> seconds; ValueError names the text."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    total, number = 0.0, ""
    try:
        total = float(text)
    except ValueError:
        pass
    else:
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f"not a duration: {text!r} (a positive time, e.g. 90s, 15m, 2h, 1h30m)")
        return total
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 2h, 1h30m)")
    if number or total <= 0:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 2h, 1h30m)")
    return total


def pause(args: argparse.Namespace) -> int:
    extra: JsonObject = {"reason": args.reason}
    if args.duration:
        try:
            extra["for_s"] = parse_duration(args.duration)
        except ValueError as error:
            raise TemalignError(str(error)) from None
    return _verb(args, "pause", extra)


def describe_status(s: JsonObject) -> str:
    """The status as a few lines a person reads at the column."""
    lines = [f"state: {s['state']}" + (f" ({s['hold']})" if s.get("hold") else "")
             + (f", mode {s['mode']}" if s["state"] not in ("dry_run",) else "")]
    if s.get("paused"):
        until = s.get("paused_until")
        when = ("until resumed" if until is None
                else "until " + time.strftime("%H:%M:%S", time.localtime(until)))
        lines.append(f"paused {when}: {s.get('pause_reason')}")
    lines.append(f"reference: {s.get('reference')} ({s.get('reference_set_by') or 'not set yet'}); "
                 f"aperture last at {s.get('last_position')}")
    est = s.get("misalignment")
    if est:
        m = est.get("misalignment")
        lines.append(f"misalignment: {m if m is not None else 'unknown'} units (model {est.get('model')}, "
                     f"classical {est.get('classical')}, {est.get('reason')})")
    if s.get("calibration_note"):
        lines.append(s["calibration_note"])
    lim = s.get("limits", {})
    lines.append(f"limits: window ±{lim.get('window_units')}, excursion {lim.get('max_excursion_units')}, "
                 f"step {lim.get('max_step_units')}, deadband {lim.get('deadband_units')}, "
                 f"gain {lim.get('gain')}; moved {s.get('moved_last_hour_units')} of "
                 f"{lim.get('rate_limit_units_per_hour')} units this hour")
    for c in s.get("last_cycles", [])[:5]:
        lines.append("  " + describe_cycle(c))
    return "\n".join(lines)


def describe_cycle(c: JsonObject) -> str:
    """One cycle in one line: outcome, estimate, decision, positions."""
    before = c.get("before") or {}
    m = before.get("misalignment")
    est = f"|m| {m:.1f}" if isinstance(m, int | float) and math.isfinite(m) else "no estimate"
    if c.get("outcome") == "checked":
        return f"checked: {c.get('detail')} [{c.get('position_before')}]"
    return (f"{c.get('outcome')}: {c.get('detail')} [{est}; model {before.get('model')}, classical "
            f"{before.get('classical')}; {c.get('position_before')} -> {c.get('position_after')}]")


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
            print(f"{c.get('time', '')}  {describe_cycle(c)}")
    return 0


def run(args: argparse.Namespace) -> int:
    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.record.logs import configure_logging
    from temalign.service.daemon import Daemon

    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)
    ms = settings.microscope
    microscope = TcpMicroscope.from_settings(ms, "temalign-daemon")
    daemon = Daemon(settings, microscope)
    try:
        daemon.install_signal_handlers()
        daemon.start()
        return daemon.run_forever(lambda: _settings(args))
    finally:
        daemon.stop()
        microscope.close()


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

    settings = _settings(args)
    if is_running(settings.control.socket):
        cal = request(settings.control.socket, "calibrate", {"step_units": args.step})
    else:
        cal = _calibrate_directly(settings, args.step)
    print(json.dumps(cal, indent=1) if args.json else describe_calibration(cal))
    return 0


def _calibrate_directly(settings: Settings, step: float) -> JsonObject:
    from temalign.clock import RealClock
    from temalign.estimate.calibration import save_calibration
    from temalign.protocol.errors import ProtocolError
    from temalign.protocol.tcp_microscope import TcpMicroscope
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
                      clock=clock, memory=memory, step_units=step,
                      progress=lambda text: print(text, flush=True))
    except ProtocolError as error:
        raise TemalignError(describe_protocol_error(error, ms.address)) from None
    finally:
        microscope.close()
    save_calibration(state_dir, cal)
    return cal.to_json()
