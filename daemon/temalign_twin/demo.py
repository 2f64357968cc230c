"""`temalign demo`: a whole session of the daemon keeping a drifting column aligned, in a minute.

A digital twin with the default drift (linear, random walk, rare jumps) runs in accelerated time,
by default on the traced optics of the reference column with a holography scene in the beam (a
specimen edge, the biased biprism wire and its fringes; --optics, --column and --scene choose
others), and serves
protocol v1 on a loopback port; the aperture starts well off the optic axis, as after a cold
start. The demo calibrates the classical estimator as a person would, then starts the real daemon
(scheduler, envelope, journal, metrics, control socket) against the twin over TCP. The demo is
only the harness: it reads the twin's truth in-process to show what a microscopist would want to
know (how far off the aperture really is, and how far off it would be had nobody touched it),
which the daemon never sees. It ends with a summary, summary.json and session.png."""

from __future__ import annotations

import argparse
import errno
import json
import math
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from temalign.errors import ConfigError, TemalignError
from temalign_twin.cli import add_optics_arguments, optics_overrides

if TYPE_CHECKING:
    from temalign.cli import Subparsers
    from temalign.clock import Clock
    from temalign.service.daemon import Daemon
    from temalign.values import JsonObject
    from temalign_twin.model import Twin

WITHIN_UNITS = 20.0
"""What a person accepts as aligned: 2 % of the 1000-unit range (twin.md)."""
CONVERGE_S = 900.0
"""Figures leave out the first 15 twin minutes: the cold start is the daemon's to fix, not drift."""
SAMPLE_S = 30.0
START_DIRECTION = (-0.6, 0.8)
JITTER_S = 10.0
EXPOSURE_S = 0.1
WOBBLING_OUTCOMES = frozenset({"corrected", "rolled_back", "within_deadband", "refused_low_confidence",
                               "refused_doubtful_stack", "refused_limit", "dry_run", "hold"})
TWO_WOBBLES = frozenset({"corrected", "rolled_back"})
QUIET_OUTCOMES = frozenset({"within_deadband", "checked"})
"""Cycles that left the column as it was: on a terminal they show in the status line only."""


def register(subparsers: Subparsers) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="watch the daemon keep a drifting digital twin aligned for a session, in about a minute",
        description="Start a digital twin with drift in accelerated time, the aperture off axis; calibrate; "
                    "run the daemon against it over TCP; show live progress, serve the metrics, and end "
                    "with a summary and a plot of the misalignment with and without correction.",
    )
    parser.add_argument("--hours", type=float, default=6.0, metavar="H",
                        help="session length in twin hours (default %(default)g)")
    parser.add_argument("--scale", type=float, default=600.0, metavar="S",
                        help="twin seconds per wall second (default %(default)g: 6 h in about 36 s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="twin seed: the drift it meets (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), metavar="DIR",
                        help="where session.png and summary.json go (default ./%(default)s)")
    parser.add_argument("--metrics-port", type=int, default=9641, metavar="P",
                        help="Prometheus metrics port on 127.0.0.1 (default %(default)s; 0: any free port)")
    parser.add_argument("--start-offset", type=float, default=180.0, metavar="UNITS",
                        help="how far off the aligned position the aperture starts (default %(default)g)")
    add_optics_arguments(parser, optics="traced", column="reference", scene="holography")
    parser.set_defaults(handler=run)


def _check(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.hours) and 0 < args.hours <= 48):
        raise ConfigError(f"--hours must be more than 0 and at most 48, got {args.hours:g}")
    if not (math.isfinite(args.scale) and 1 <= args.scale <= 20000):
        raise ConfigError(f"--scale must be between 1 and 20000, got {args.scale:g}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be 0 to 65535, got {args.metrics_port}")
    if not (math.isfinite(args.start_offset) and 0 <= args.start_offset <= 300):
        raise ConfigError(f"--start-offset must be 0 to 300 units (the safety window is 400), "
                          f"got {args.start_offset:g}")


@dataclass(frozen=True)
class Sample:
    """The twin's truth at one moment of the session (t in twin seconds from the daemon's start)."""

    t: float
    corrected: float
    uncorrected: float
    hand_aligned: float
    """|m| had a person aligned the aperture by hand when the session began and then left it."""
    aligned: tuple[float, float]


@dataclass
class Session:
    """What the demo saw; everything the summary, the plot and summary.json are made of."""

    hours: float
    scale: float
    seed: int
    start_offset: tuple[int, int]
    t0: float = 0.0
    start_aperture: tuple[float, float] = (0.0, 0.0)
    samples: list[Sample] = field(default_factory=list)
    cycles: list[JsonObject] = field(default_factory=list)
    settle_s: float = 2.0
    calibration: str = ""
    metrics_url: str = ""
    interrupted: str | None = None
    wall_s: float = 0.0


class Live:
    """Progress on the terminal: a redrawn status line on a TTY (events printed above it), a line
    per cycle otherwise (a log file or CI keeps every cycle)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._drawn = False

    def line(self, text: str) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self.stream.flush()
            self._drawn = True

    def done(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _hhmm(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _free_metrics_port(port: int) -> tuple[int, str | None]:
    """The port to serve on, and a note when the one asked for is taken (0: any free port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return int(probe.getsockname()[1]), None
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise ConfigError(f"--metrics-port {port}: {error.strerror or error}") from error
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    return free, f"port {port} is in use (another daemon or demo?); serving the metrics on {free} instead"


def run(args: argparse.Namespace) -> int:
    """Run the session; 0 when it ran to the end, 130 when interrupted (after the summary)."""
    _check(args)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {args.out}: cannot create it: {error.strerror or error}") from error
    from temalign.protocol.errors import ProtocolError

    offset = (round(args.start_offset * START_DIRECTION[0]), round(args.start_offset * START_DIRECTION[1]))
    session = Session(hours=args.hours, scale=args.scale, seed=args.seed, start_offset=offset)
    started = time.monotonic()
    try:
        _session(args, session)
    except ProtocolError as error:
        raise TemalignError(f"the demo lost the twin: {error}") from error
    finally:
        session.wall_s = time.monotonic() - started
    report = summarise(session)
    print_summary(report, session)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    png = args.out / "session.png"
    if session.samples and write_plot(png, session):
        print(f"plot: {png}")
    elif session.samples:
        print("(no plot: matplotlib is not installed; pip install 'temalign[demo]')")
    log = args.out / "daemon.log"
    print(f"figures: {args.out / 'summary.json'}" + (f"; the daemon's log: {log}" if log.exists() else ""))
    return 130 if session.interrupted else 0


def _session(args: argparse.Namespace, session: Session) -> None:
    from temalign.clock import ScaledClock
    from temalign.config.schema import Settings
    from temalign.estimate.calibration import save_calibration
    from temalign.estimate.model_estimator import open_model
    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.service.calibrate import calibrate
    from temalign.wobble.c1_memory import C1Memory
    from temalign.wobble.sources import CameraSource
    from temalign_twin.model import Twin
    from temalign_twin.service import TwinServer
    from temalign_twin.settings import TwinSettings

    live = Live()
    clock = ScaledClock(args.scale)
    dx, dy = session.start_offset
    chosen = TwinSettings().updated(optics_overrides(args.optics, args.column, args.scene))
    twin = Twin(chosen.updated({"motor": {"start_offset": [dx, dy]}}), clock, seed=args.seed)
    start = twin.truth()
    session.start_aperture = (float(start["aperture"][0]), float(start["aperture"][1]))
    scratch = Path(tempfile.mkdtemp(prefix="ta-"))
    server = TwinServer(twin, host="127.0.0.1", port=0).start()
    microscope = None
    daemon = None
    logging_to: tuple[TextIO, int] | None = None
    try:
        host, port = server.address[:2]
        print(f"digital twin (seed {args.seed}) on {host}:{port}, {args.scale:g}x real time: "
              f"{args.hours:g} twin hours take about {args.hours * 3600 / args.scale:.0f} s plus computing")
        optics = (f"traced optics of the {args.column} column" if twin.settings.optics.model == "traced"
                  else "twin.md's first-order optics")
        print(f"{optics}, scene {args.scene or 'specimen'}")
        print(f"drift of the optic axis: linear {tuple(twin.settings.drift.linear_per_hour)} units/h, random "
              f"walk {twin.settings.drift.random_walk_per_sqrt_hour:g} units/sqrt(h), jumps (gun flash) "
              f"{twin.settings.drift.jump_rate_per_hour:g}/h")
        print(f"cold start: the aperture is {math.hypot(dx, dy):.0f} units off the optic axis "
              f"(({dx:+d}, {dy:+d})); a person accepts {WITHIN_UNITS:g} "
              "(2 % of the 1000-unit range)")
        microscope = TcpMicroscope((host, port), client_name="temalign-demo")
        state_dir = scratch / "state"
        port_to_use, note = _free_metrics_port(args.metrics_port)
        if note:
            print(note)
        settings = Settings.model_validate({
            "microscope": {"address": f"{host}:{port}"},
            "paths": {"state_dir": str(state_dir)},
            "control": {"socket": str(scratch / "control.sock")},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": port_to_use},
            "schedule": {"mode": "live", "jitter_s": JITTER_S},
        })
        state_dir = settings.paths.ensure_state_dir()
        session.settle_s = settings.wobble.settle_s

        print("calibrating both estimators (temalign calibrate: five wobbles, four known moves)...",
              flush=True)
        source = CameraSource(microscope, EXPOSURE_S, clock)
        cal = calibrate(microscope, source, wobble_settings=settings.wobble,
                        quality_settings=settings.quality, clock=clock, memory=C1Memory(state_dir),
                        model=open_model(settings, "raw"),
                        progress=lambda text: print(f"  {text}", flush=True))
        save_calibration(state_dir, cal)
        session.calibration = "done"

        logging_to = _log_to(args.out / "daemon.log")
        from temalign.service.daemon import Daemon

        daemon = Daemon(settings, microscope, clock=clock)
        daemon.start()
        session.t0 = clock.now()
        address = daemon.metrics.address
        session.metrics_url = f"http://{address[0]}:{address[1]}/metrics" if address else ""
        schedule = settings.schedule
        print(f"daemon started: live; a two-frame check at least every {schedule.check_interval_s / 60:g} "
              f"twin minutes, the full wobble when it sees a misalignment; metrics at {session.metrics_url}")
        _watch(session, twin, daemon, clock, live)
    except KeyboardInterrupt:
        live.done()
        session.interrupted = "interrupted (Ctrl-C)"
        print("interrupted: stopping the daemon and the twin...", flush=True)
    finally:
        live.done()
        if daemon is not None:
            daemon.stop()
            session.cycles = _journal_cycles(daemon.settings.paths.state_dir, session.t0)
        if microscope is not None:
            microscope.close()
        server.close()
        _log_off(logging_to)
        shutil.rmtree(scratch, ignore_errors=True)


def _watch(session: Session, twin: Twin, daemon: Daemon, clock: Clock, live: Live) -> None:
    """Sample the truth every SAMPLE_S twin seconds until the session ends; report each new cycle."""
    end = session.t0 + session.hours * 3600.0
    seen: set[float] = set()
    counts = {"cycles": 0, "corrected": 0, "rolled_back": 0, "refused": 0}
    ax, ay = session.start_aperture
    next_sample = session.t0
    origin = session.start_aperture
    while True:
        now = clock.now()
        if now >= next_sample or now >= end:
            truth = twin.truth()
            t = float(truth["time"]) - session.t0
            aligned = (float(truth["aligned"][0]), float(truth["aligned"][1]))
            if not session.samples:
                origin = aligned
            sample = Sample(t=t, corrected=math.hypot(*truth["misalignment"]),
                            uncorrected=math.hypot(ax - aligned[0], ay - aligned[1]),
                            hand_aligned=math.hypot(origin[0] - aligned[0], origin[1] - aligned[1]),
                            aligned=aligned)
            session.samples.append(sample)
            next_sample += SAMPLE_S
            for cycle in reversed(daemon.last):
                if cycle["started"] in seen:
                    continue
                seen.add(cycle["started"])
                _count(counts, cycle["outcome"])
                text = _cycle_text(cycle, session.t0, counts["cycles"])
                if not live.tty or cycle["outcome"] not in QUIET_OUTCOMES:
                    live.line(text)
            c = counts
            live.status(f"{_hhmm(t)}  misalignment {sample.corrected:5.1f} units (left alone "
                        f"{sample.uncorrected:5.1f})  {daemon.state_name()}  cycles {c['cycles']}: "
                        f"{c['corrected']} corrected, {c['rolled_back']} rolled back, "
                        f"{c['refused']} refused  {session.metrics_url}")
        if now >= end:
            return
        clock.sleep(min(SAMPLE_S, max(next_sample - clock.now(), 0.0)) / 3)


def _count(counts: dict[str, int], outcome: str) -> None:
    counts["cycles"] += 1
    if outcome in ("corrected", "rolled_back"):
        counts[outcome] += 1
    elif outcome.startswith("refused"):
        counts["refused"] += 1


def _cycle_text(cycle: JsonObject, t0: float, number: int) -> str:
    before = (cycle.get("before") or {}).get("misalignment")
    after = (cycle.get("after") or {}).get("misalignment")
    estimate = f"estimated {before:.1f} units" if before is not None else ""
    if cycle["outcome"] == "corrected" and after is not None:
        what = f"corrected: estimated {before:.1f} -> {after:.1f} units, moved {_applied(cycle)}"
    elif cycle["outcome"] == "within_deadband":
        what = f"left alone ({estimate}, within the deadband)"
    elif cycle["outcome"] == "checked":
        seen = (cycle.get("check") or {}).get("misalignment")
        what = f"checked: about {_units(seen)} units, left alone"
    elif cycle["outcome"] == "rolled_back":
        what = f"ROLLED BACK: {cycle['detail']}"
    else:
        what = f"{cycle['outcome'].replace('_', ' ')}: {cycle['reason']}"
        what += f" ({estimate})" if estimate else ""
    return f"  {_hhmm(float(cycle['started']) - t0)}  cycle {number:3d}  {what}"


def _applied(cycle: JsonObject) -> str:
    applied = cycle.get("applied")
    return "?" if not applied else f"({applied[0]:+.0f}, {applied[1]:+.0f})"


def _journal_cycles(state_dir: Path, t0: float) -> list[JsonObject]:
    """Every cycle of the session from the daemon's own journal (daemon.last keeps only the newest)."""
    from temalign.record.journal import read_journal

    try:
        entries = read_journal(state_dir)
    except FileNotFoundError:
        return []
    return [{"t": float(e["started"]) - t0, "outcome": e["outcome"], "reason": e["reason"],
             "duration_s": e.get("duration_s"), "applied": e.get("applied"),
             "estimate_before": (e.get("before") or {}).get("misalignment"),
             "estimate_after": (e.get("after") or {}).get("misalignment"), "check": e.get("check")}
            for e in entries if e.get("kind") == "cycle"]


def _log_to(path: Path) -> tuple[TextIO, int]:
    """The daemon's JSON log lines go to a file: the terminal is the demo's."""
    import logging

    from temalign.record.logs import configure_logging

    level = logging.getLogger().level
    stream = open(path, "w", encoding="utf-8")  # noqa: SIM115
    configure_logging("info", "json", stream=stream)
    return stream, level


def _log_off(logging_to: tuple[TextIO, int] | None) -> None:
    import logging

    if logging_to is None:
        return
    stream, level = logging_to
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
            root.removeHandler(handler)
    root.setLevel(level)
    stream.close()


# ---- the figures ------------------------------------------------------------------------------


def _figures(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"within_20_fraction": None, "rms_units": None, "worst_units": None}
    return {"within_20_fraction": round(sum(v <= WITHIN_UNITS for v in values) / len(values), 4),
            "rms_units": round(math.sqrt(sum(v * v for v in values) / len(values)), 2),
            "worst_units": round(max(values), 2)}


def summarise(session: Session) -> JsonObject:
    """The session in numbers (summary.json): each figure with and without the daemon."""
    settled = [s for s in session.samples if s.t >= CONVERGE_S]
    outcomes: dict[str, int] = {}
    for cycle in session.cycles:
        outcomes[cycle["outcome"]] = outcomes.get(cycle["outcome"], 0) + 1
    wobble_s = 7 * (session.settle_s + EXPOSURE_S)
    check_s = session.settle_s + 2 * EXPOSURE_S
    wobbles = sum((2 if c["outcome"] in TWO_WOBBLES else 1) for c in session.cycles
                  if c["outcome"] in WOBBLING_OUTCOMES)
    checks = sum(1 for c in session.cycles if c.get("check") is not None)
    moved = sum(math.hypot(*c["applied"]) for c in session.cycles if c.get("applied"))
    moves = sum(1 for c in session.cycles if c.get("applied")) + outcomes.get("rolled_back", 0)
    motor_s = moved / 200.0 + 0.3 * moves
    twin_s = session.samples[-1].t if session.samples else 0.0
    busy = wobbles * wobble_s + checks * check_s + motor_s
    first = next((s.t for s in session.samples if s.corrected <= WITHIN_UNITS), None)
    measured = [c["duration_s"] for c in session.cycles if c.get("duration_s")]
    return {
        "twin_hours": round(twin_s / 3600.0, 3), "scale": session.scale, "seed": session.seed,
        "wall_s": round(session.wall_s, 1), "interrupted": session.interrupted,
        "start_offset_units": list(session.start_offset), "within_units": WITHIN_UNITS,
        "figures_after_s": CONVERGE_S,
        "cycles": len(session.cycles), "cycles_by_outcome": dict(sorted(outcomes.items())),
        "corrections": outcomes.get("corrected", 0), "rollbacks": outcomes.get("rolled_back", 0),
        "first_within_20_s": first,
        "corrected": _figures([s.corrected for s in settled]),
        "uncorrected": _figures([s.uncorrected for s in settled]),
        "hand_aligned_once": _figures([s.hand_aligned for s in settled]),
        "start_misalignment_units": round(session.samples[0].corrected, 2) if session.samples else None,
        "end_misalignment_units": round(session.samples[-1].corrected, 2) if session.samples else None,
        "end_uncorrected_units": round(session.samples[-1].uncorrected, 2) if session.samples else None,
        "drift_of_axis_units": _drift(session),
        "wobbles": wobbles, "wobble_column_s": round(wobble_s, 2), "checks": checks,
        "check_column_s": round(check_s, 2), "motor_s": round(motor_s, 1),
        "column_busy_fraction": round(busy / twin_s, 4) if twin_s else None,
        "mean_cycle_twin_s_with_compute": round(sum(measured) / len(measured), 1) if measured else None,
        "metrics_url": session.metrics_url,
    }


def _drift(session: Session) -> float | None:
    if len(session.samples) < 2:
        return None
    (x0, y0), (x1, y1) = session.samples[0].aligned, session.samples[-1].aligned
    return round(math.hypot(x1 - x0, y1 - y0), 1)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _units(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_summary(report: JsonObject, session: Session) -> None:
    """The few lines a microscopist reads: time within tolerance, with the daemon and without."""
    print()
    head = f"session: {report['twin_hours']:.2f} twin hours in {report['wall_s']:.0f} s"
    print(head + (f" ({session.interrupted})" if session.interrupted else ""))
    if not session.cycles:
        print("  the daemon ran no cycle" if session.calibration else "  stopped before the daemon started")
        return
    by = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report["cycles_by_outcome"].items())
    print(f"  cycles: {report['cycles']} ({by})")
    print(f"  the optic axis drifted {_units(report['drift_of_axis_units'])} units over the session")
    first = report["first_within_20_s"]
    print(f"  cold start {_units(report['start_misalignment_units'])} units off; within {WITHIN_UNITS:g} "
          f"units after {'-' if first is None else _hhmm(first)} (hh:mm)")
    columns = (report["corrected"], report["uncorrected"], report["hand_aligned_once"])
    heads = ("with temalign", "left alone", "aligned once*")
    caption = f"  after the first {CONVERGE_S / 60:.0f} twin minutes:"
    print(f"{caption:<37}" + "".join(f"{h:>16}" for h in heads))
    rows = ((f"time within {WITHIN_UNITS:g} units", "within_20_fraction", _pct),
            ("RMS misalignment, units", "rms_units", _units),
            ("worst misalignment, units", "worst_units", _units))
    for label, key, show in rows:
        print(f"    {label:<33}" + "".join(f"{show(c[key]):>16}" for c in columns))
    print("    * aligned by hand when the session began, then left to drift")
    print(f"  beam busy for the daemon: {report['wobbles']} wobbles x {report['wobble_column_s']:g} s + "
          f"{report['checks']} checks x {report['check_column_s']:g} s + "
          f"{report['motor_s']:g} s of motor = {_pct(report['column_busy_fraction'])} of the session "
          f"(the rest is yours)")


def write_plot(path: Path, session: Session) -> bool:
    """Misalignment over the session with and without the daemon, and the drift behind it; False
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    hours = [s.t / 3600.0 for s in session.samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.8), sharex=True, constrained_layout=True,
                                      gridspec_kw={"height_ratios": [2.2, 1]})
    top.axhspan(0, WITHIN_UNITS, color="tab:green", alpha=0.12, lw=0,
                label=f"within {WITHIN_UNITS:g} units (what a person accepts)")
    top.plot(hours, [s.uncorrected for s in session.samples], color="tab:red", lw=1.6,
             label="left alone (aperture where it started)")
    top.plot(hours, [s.hand_aligned for s in session.samples], color="tab:red", lw=1.2, ls=":",
             label="aligned by hand at the start, then left (drift alone)")
    top.plot(hours, [s.corrected for s in session.samples], color="tab:blue", lw=1.6,
             label="with temalign")
    top.axvline(CONVERGE_S / 3600.0, color="grey", lw=0.8, ls="--")
    top.annotate(f" figures from {CONVERGE_S / 60:.0f} min", (CONVERGE_S / 3600.0, 0.98),
                 xycoords=("data", "axes fraction"), va="top", fontsize=7, color="grey")
    for outcome, marker, colour, label in (("corrected", "v", "tab:blue", "correction"),
                                           ("rolled_back", "x", "black", "rollback")):
        times = [c["t"] / 3600.0 for c in session.cycles if c["outcome"] == outcome]
        if times:
            heights = [_at(session.samples, c["t"]) for c in session.cycles if c["outcome"] == outcome]
            top.scatter(times, heights, marker=marker, color=colour, s=28, zorder=3,
                        label=f"{label} ({len(times)})")
    top.set_ylabel("misalignment |m| (motor units)")
    top.set_ylim(bottom=0)
    top.set_yscale("symlog", linthresh=40, linscale=1.5)
    ticks = [t for t in (0, 10, 20, 30, 40, 100, 200, 300, 500) if t <= 1.3 * max(s.uncorrected for s in
                                                                                   session.samples)]
    top.set_yticks(ticks, [str(t) for t in ticks])
    top.grid(alpha=0.3)
    top.legend(loc="center right", fontsize=8)
    title = (f"temalign on a drifting digital twin (seed {session.seed}): {hours[-1]:.1f} h, "
             f"cold start {math.hypot(*session.start_offset):.0f} units off")
    top.set_title(title + (f" ({session.interrupted})" if session.interrupted else ""), fontsize=11)
    x0, y0 = session.samples[0].aligned
    bottom.plot(hours, [s.aligned[0] - x0 for s in session.samples], color="tab:purple", lw=1.4, label="x")
    bottom.plot(hours, [s.aligned[1] - y0 for s in session.samples], color="tab:orange", lw=1.4, label="y")
    bottom.set_ylabel("drift of the optic axis\n(units since start)")
    bottom.set_xlabel("twin time (hours)")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _at(samples: list[Sample], t: float) -> float:
    """|m| just before `t` (where the correction started from)."""
    before = [s.corrected for s in samples if s.t <= t]
    return before[-1] if before else samples[0].corrected

