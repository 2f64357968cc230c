#!/usr/bin/env python3
"""Acquire a training dataset: the paper's spiral of aperture offsets around the aligned position,
one wobble at each point, over the protocol against any server (a column's bridge or a twin).

    .venv/bin/python tools/acquire.py --twin n13 --seed 0 --out data/n13.npz
    .venv/bin/python tools/acquire.py --microscope 10.0.0.5:7801 --radius 240 --samples 127 --out col.npz
    .venv/bin/python tools/acquire.py --merge data/n10.npz data/n13.npz --out data/n10-13.npz

The aperture must be aligned (by a person) before the start: that position is a_start and every
label is a_start - a (docs/datasets.md). Ctrl-C or SIGTERM stops after putting the aperture back;
rerunning the same command resumes from FILE.npz.partial/ without losing or repeating a sample.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from temalign.durable import atomic_write
from temalign.errors import TemalignError
from temalign_twin.cli import add_optics_arguments

RUN_FILE = "run.json"
PAPER_SETTLE_S = 2.0
DEFAULT_MAX_RADIUS = 400.0
RESUME_SLACK = 10.0
"""On resume the aperture may be up to max radius + this from a_start (where a killed run left
it) and is moved back; further away, somebody else moved it and the run refuses."""
RESTORE_ATTEMPTS = 5
RETURN_TOLERANCE = 6.0
"""Units the aperture may read from a_start once put back: backlash and position noise of a motor
(the twin's 2 + 0.5) with margin; further off and the tool says so."""


class AcquireError(TemalignError):
    """An expected failure, reported as one sentence without a traceback."""


@dataclass
class Run:
    """What defines an acquisition: a resumed run must match it exactly."""

    identity: dict[str, Any]
    a_start: tuple[int, int] | None = None
    c0: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "a_start": self.a_start, "c0": self.c0, **self.extra}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="acquire.py", description=__doc__.split("\n\n")[0],
        epilog="docs/datasets.md: the spiral, the file format, the paper's sets on the twin, resume, merge.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--microscope", metavar="HOST:PORT",
                       help="a protocol server: a column's bridge or a twin")
    where.add_argument("--twin", metavar="PRESET",
                       help="a twin in this process with this preset (n14, n13, n10, n6, far, low-dose, "
                       "large-aperture, default), on a stepped clock: waits cost nothing")
    parser.add_argument("--seed", type=int, default=0,
                        help="--twin: seed (the preset's offset is added; default 0)")
    parser.add_argument("--twin-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="--twin: override one twin knob, e.g. camera.width=64 (repeatable)")
    add_optics_arguments(parser)
    parser.add_argument("--token-file", type=Path, help="--microscope: file holding the server's token")
    parser.add_argument("--out", type=Path, metavar="FILE.npz", help="the dataset to write (required)")
    parser.add_argument("--radius", type=float, help="outermost spiral offset, motor units (default: the "
                        "preset's, else 240)")
    parser.add_argument("--samples", type=int, help="number of spiral points, the aligned one included "
                        "(default: the preset's, else 127)")
    parser.add_argument("--revolutions", type=float, help="turns of the spiral (default sqrt(samples/pi), "
                        "rounded to a quarter)")
    parser.add_argument("--fraction", type=float, help="wobble fraction (default: the preset's, else 0.03)")
    parser.add_argument("--settle-s", type=float, default=PAPER_SETTLE_S,
                        help=f"wait after each C1 change, clock seconds (default {PAPER_SETTLE_S:g}, "
                        "the paper's)")
    parser.add_argument("--exposure-s", type=float, help="camera exposure (default: the server's)")
    parser.add_argument("--source", choices=("camera", "screen"), default="camera",
                        help="raw frames from the camera, or 8-bit frames from a screen region")
    parser.add_argument("--region", metavar="LEFT,TOP,WIDTH,HEIGHT",
                        help="--source screen: the live view's pixels")
    parser.add_argument("--display", help="--source screen: X display (default $DISPLAY)")
    parser.add_argument("--max-radius", type=float, default=DEFAULT_MAX_RADIUS,
                        help="safety cap: refuse spirals beyond this, motor units "
                        f"(default {DEFAULT_MAX_RADIUS:g})")
    parser.add_argument("--state-dir", type=Path, help="where the C1 record lives (share the daemon's to let "
                        "either recover the other's wobble; default /var/lib/temalign if writable, "
                        "else ~/.local/state/temalign; --twin: a temporary folder)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="--microscope: clock seconds per wall second, for a twin served faster than "
                        "real time (default 1: a real column)")
    parser.add_argument("--daemon-config", type=Path, metavar="FILE",
                        help="--microscope: the config of a temalign daemon on this PC, whose control "
                        "socket tells whether it runs (default /etc/temalign/temalign.yaml, else the shipped "
                        "one); acquisition refuses to start while it runs and is not paused")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="DATASET.npz",
                        help="instead of acquiring: merge these datasets into --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.command = ["acquire.py", *(sys.argv[1:] if argv is None else argv)]
    if args.out is None:
        parser.error("--out FILE.npz is required")
    if args.merge is None and args.microscope is None and args.twin is None:
        parser.error("say where to acquire: --microscope HOST:PORT or --twin PRESET (or --merge)")
    if args.twin is None and (args.optics, args.column, args.scene) != (None, None, None):
        parser.error("--optics, --column and --scene choose the twin's optics and scene: use with --twin")
    return args


# ---- the sidecar folder: one atomic file per sample ----------------------------------------------

def sample_path(partial: Path, index: int) -> Path:
    return partial / f"sample-{index:05d}.npz"


def done_indices(partial: Path, n: int) -> set[int]:
    """Indices whose sample file is complete (a torn or foreign file is redone)."""
    done = set()
    for index in range(n):
        path = sample_path(partial, index)
        if not path.exists():
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["index"]) == index and data["stack"].ndim == 3:
                    done.add(index)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
    return done


def open_partial(partial: Path, run: Run) -> Run:
    """Start the sidecar folder, or check it belongs to this very run and take its a_start and c0."""
    run_file = partial / RUN_FILE
    if run_file.exists():
        try:
            stored = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise AcquireError(f"{run_file} cannot be read ({error}); "
                               f"remove {partial} to start afresh") from None
        theirs = stored.get("identity", {})
        diff = sorted(k for k in set(theirs) | set(run.identity) if theirs.get(k) != run.identity.get(k))
        if diff:
            shown = "; ".join(f"{k}: was {theirs.get(k)!r}, now {run.identity.get(k)!r}" for k in diff)
            raise AcquireError(f"{partial} holds an interrupted acquisition with other settings ({shown}). "
                               f"Rerun it with its own settings to finish it, or remove {partial}")
        a = stored.get("a_start")
        return Run(run.identity, tuple(a) if a else None, stored.get("c0"), run.extra)
    partial.mkdir(parents=True, exist_ok=True)
    return run


def save_run(partial: Path, run: Run) -> None:
    text = json.dumps(run.to_json(), indent=1, sort_keys=True).encode("utf-8")
    atomic_write(partial / RUN_FILE, lambda handle: handle.write(text))


# ---- acquisition ---------------------------------------------------------------------------------

def as_stored(images: np.ndarray, kind: str) -> np.ndarray:
    """Frames as acquired: raw counts as uint16, display levels as uint8."""
    if kind == "raw":
        return np.clip(np.rint(images), 0, 65535).astype(np.uint16)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the same cleanup runs."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def put_back(microscope: Any, a_start: tuple[int, int], clock: Any) -> str | None:
    """Move the aperture to a_start and read it back; None when it is there, else what failed."""
    from temalign.microscope import Position

    problem = "not tried"
    for attempt in range(1, RESTORE_ATTEMPTS + 1):
        try:
            microscope.move_aperture(Position(*a_start))
            back = microscope.aperture()
            if math.hypot(back.x - a_start[0], back.y - a_start[1]) <= RETURN_TOLERANCE:
                return None
            problem = f"it reads ({back.x}, {back.y})"
        except KeyboardInterrupt:
            problem = "interrupted"
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
        with contextlib.suppress(KeyboardInterrupt):
            clock.sleep(0.5 * attempt)
    return problem


def acquire(microscope: Any, source: Any, clock: Any, memory: Any, run: Run, *, partial: Path,
            offsets: np.ndarray, fraction: float, settle_s: float, max_radius: float,
            truth: Callable[[], dict[str, Any]] | None, progress: bool) -> None:
    """Every missing sample of the spiral into `partial`; the aperture ends at a_start, whatever
    happens (C1 is the wobble's to restore)."""
    from tqdm import tqdm

    from temalign.microscope import Position
    from temalign.wobble.stack import wobble

    here = microscope.aperture()
    if run.a_start is None:
        run.a_start = (here.x, here.y)
        run.c0 = microscope.c1()
        save_run(partial, run)
    else:
        off = math.hypot(here.x - run.a_start[0], here.y - run.a_start[1])
        if off > max_radius + RESUME_SLACK:
            raise AcquireError(f"resume: the aperture is at ({here.x}, {here.y}), {off:.0f} units from where "
                               f"the interrupted run started ({run.a_start[0]}, {run.a_start[1]}): somebody "
                               f"moved it. Put it back, or remove {partial} and start afresh")
        c1 = microscope.c1()
        if run.c0 is not None and abs(c1 - run.c0) > 1e-4 * abs(run.c0):
            raise AcquireError(f"resume: C1 is {c1:.6g} but the interrupted run started at {run.c0:.6g}; "
                               f"set it back, or remove {partial} and start afresh")
    a_start = run.a_start
    _check_limits(microscope, a_start, offsets)
    todo = [i for i in range(len(offsets)) if i not in done_indices(partial, len(offsets))]
    if len(todo) < len(offsets):
        print(f"resuming: {len(offsets) - len(todo)} of {len(offsets)} samples already in {partial}",
              flush=True)
    bar = tqdm(total=len(offsets), initial=len(offsets) - len(todo), unit="stack", disable=not progress,
               dynamic_ncols=True, desc="acquire")
    failure: BaseException | None = None
    try:
        for index in todo:
            target = Position(int(a_start[0] + offsets[index][0]), int(a_start[1] + offsets[index][1]))
            microscope.move_aperture(target)
            at = microscope.aperture()
            known = truth() if truth is not None else None
            stack = wobble(microscope, source, fraction=fraction, settle_s=settle_s, clock=clock,
                           memory=memory)
            label = np.array([a_start[0] - at.x, a_start[1] - at.y], dtype=np.float32)
            true = (np.asarray(known["aligned"], dtype=float) - np.asarray(known["aperture"], dtype=float)
                    if known is not None else np.full(2, np.nan))
            record = {"index": np.int64(index), "stack": as_stored(stack.images, stack.kind),
                      "label": label, "truth": true.astype(np.float32),
                      "position": np.array([at.x, at.y], dtype=np.int64),
                      "offset": offsets[index].astype(np.int64),
                      "c1_values": np.asarray(stack.c1_values, dtype=np.float64),
                      "time": np.float64(stack.times[0]), "kind": np.str_(stack.kind)}
            atomic_write(sample_path(partial, index), lambda handle, r=record: np.savez(handle, **r))
            bar.update(1)
    except BaseException as error:
        failure = error
    finally:
        bar.close()
        problem = put_back(microscope, a_start, clock)
    if problem is not None:
        why = "" if failure is None else f" after {type(failure).__name__}: {failure}"
        raise AcquireError(f"the aperture could not be put back to ({a_start[0]}, {a_start[1]}){why}: "
                           f"{problem}. Move it there by hand before anything else") from failure
    if failure is not None:
        raise failure


def _check_limits(microscope: Any, a_start: tuple[int, int], offsets: np.ndarray) -> None:
    limits = microscope.limits
    xs, ys = a_start[0] + offsets[:, 0], a_start[1] + offsets[:, 1]
    if (xs.min() < limits.aperture_x[0] or xs.max() > limits.aperture_x[1]
            or ys.min() < limits.aperture_y[0] or ys.max() > limits.aperture_y[1]):
        raise AcquireError(f"the spiral around ({a_start[0]}, {a_start[1]}) leaves the aperture limits the "
                           f"server announced (x {list(limits.aperture_x)}, y {list(limits.aperture_y)}); "
                           "nothing was moved")


def pack(partial: Path, n: int, meta: dict[str, Any]) -> Any:
    """The sample files, in spiral order, as one Dataset."""
    from trainkit.datasets import Dataset

    columns: dict[str, list[Any]] = {k: [] for k in ("stack", "label", "truth", "position", "offset",
                                                     "c1_values", "time", "index")}
    for index in range(n):
        with np.load(sample_path(partial, index), allow_pickle=False) as data:
            for key in columns:
                columns[key].append(data[key])
    return Dataset(stacks=np.stack(columns["stack"]), labels=np.stack(columns["label"]),
                   truth=np.stack(columns["truth"]), positions=np.stack(columns["position"]),
                   offsets=np.stack(columns["offset"]), spiral_index=np.array(columns["index"]),
                   c1_values=np.stack(columns["c1_values"]), times=np.array(columns["time"]), meta=meta)


# ---- the command ---------------------------------------------------------------------------------

def _default_state_dir() -> Path:
    system = Path("/var/lib/temalign")
    if system.is_dir() and os.access(system, os.W_OK):
        return system
    return Path.home() / ".local" / "state" / "temalign"


def _check_numbers(args: argparse.Namespace, radius: float, samples: int, revolutions: float,
                   fraction: float) -> None:
    if not (math.isfinite(args.max_radius) and args.max_radius > 0):
        raise AcquireError(f"--max-radius must be > 0, got {args.max_radius}")
    if not (math.isfinite(radius) and radius >= 0):
        raise AcquireError(f"--radius must be >= 0, got {radius}")
    if radius > args.max_radius:
        raise AcquireError(f"--radius {radius:g} is beyond the safety cap --max-radius {args.max_radius:g}; "
                           "raise the cap only if the beam stays on the detector at that misalignment")
    if samples < 1:
        raise AcquireError(f"--samples must be >= 1, got {samples}")
    if not (math.isfinite(revolutions) and revolutions >= 0):
        raise AcquireError(f"--revolutions must be >= 0, got {revolutions}")
    if not 0 < fraction < 0.5:
        raise AcquireError(f"--fraction must be in (0, 0.5), got {fraction}")
    if not (math.isfinite(args.settle_s) and args.settle_s >= 0):
        raise AcquireError(f"--settle-s must be >= 0, got {args.settle_s}")
    if args.seed < 0:
        raise AcquireError(f"--seed must be >= 0, got {args.seed}")
    if not args.time_scale > 0:
        raise AcquireError(f"--time-scale must be > 0, got {args.time_scale}")
    if args.source == "screen" and args.region is None:
        raise AcquireError("--source screen needs --region LEFT,TOP,WIDTH,HEIGHT (the live view's pixels)")


def merge_command(args: argparse.Namespace) -> int:
    from trainkit.datasets import Dataset, DatasetError, merge

    try:
        parts = [Dataset.load(p) for p in args.merge]
        merged = merge(parts)
        merged.meta["command"] = args.command
        merged.save(args.out)
    except DatasetError as error:
        raise AcquireError(str(error)) from None
    print(f"wrote {args.out}: {len(merged)} samples from {len(parts)} datasets")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from extras import require
    from trainkit.spiral import default_revolutions, spiral

    require("tools/acquire.py", "train", "tqdm")  # the progress bar; before anything connects or moves

    import temalign
    from temalign.clock import ScaledClock, SteppedClock
    from temalign.protocol.errors import ProtocolError
    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.wobble.c1_memory import C1Memory
    from temalign.wobble.errors import WobbleError
    from temalign.wobble.sources import CameraSource, ScreenSource

    chosen = None
    if args.twin is not None:
        from temalign_twin.presets import preset
        try:
            chosen = preset(args.twin)
        except KeyError as error:
            raise AcquireError(error.args[0]) from None
    radius = args.radius if args.radius is not None else (chosen.radius if chosen else 240.0)
    samples = args.samples if args.samples is not None else (chosen.samples if chosen else 127)
    revolutions = args.revolutions if args.revolutions is not None else default_revolutions(samples)
    fraction = args.fraction if args.fraction is not None else (chosen.wobble_fraction if chosen else 0.03)
    _check_numbers(args, radius, samples, revolutions, fraction)
    offsets = spiral(radius, samples, revolutions)

    server: Any = None
    twin: Any = None
    cleanup = contextlib.ExitStack()
    with cleanup:
        if chosen is not None:
            from temalign_twin.cli import build_settings
            from temalign_twin.model import Twin
            from temalign_twin.service import TwinServer

            settings = build_settings(args.twin, None, args.twin_set, optics=args.optics,
                                      column_name=args.column, scene_name=args.scene)
            clock: Any = SteppedClock()
            twin = Twin(settings, clock, seed=args.seed + chosen.seed_offset)
            server = cleanup.enter_context(TwinServer(twin, host="127.0.0.1", port=0))
            address = "{}:{}".format(*server.address[:2])
            state_dir = args.state_dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        else:
            clock = ScaledClock(args.time_scale) if args.time_scale != 1 else None
            if clock is None:
                from temalign.clock import RealClock
                clock = RealClock()
            address = args.microscope
            _refuse_if_daemon_active(args.daemon_config)
            state_dir = args.state_dir or _default_state_dir()
        token = None
        if args.token_file is not None:
            try:
                token = args.token_file.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise AcquireError(f"cannot read --token-file {args.token_file}: {error.strerror}") from None
        try:
            microscope = TcpMicroscope(address, token=token, client_name="temalign-acquire")
        except ValueError as error:
            raise AcquireError(str(error)) from None
        cleanup.callback(microscope.close)
        if args.source == "camera":
            source: Any = CameraSource(microscope, args.exposure_s, clock)
        else:
            try:
                region = [int(v) for v in args.region.split(",")]
            except ValueError:
                raise AcquireError(f"--region is LEFT,TOP,WIDTH,HEIGHT in pixels, "
                                   f"got {args.region!r}") from None
            source = ScreenSource(region, clock, display=args.display)
            cleanup.callback(source.close)

        identity = {"server": f"twin:{args.twin}" if chosen else address, "radius": radius,
                    "samples": samples, "revolutions": revolutions, "fraction": fraction,
                    "settle_s": args.settle_s, "exposure_s": args.exposure_s, "source": args.source,
                    "region": args.region, "seed": args.seed if chosen else None,
                    "twin_set": sorted(args.twin_set) if chosen else None,
                    **({"optics": args.optics, "column": args.column, "scene": args.scene}
                       if chosen and (args.optics, args.column, args.scene) != (None, None, None) else {})}
        out: Path = args.out
        partial = out.with_name(out.name + ".partial")
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            memory = C1Memory(state_dir)
            hello = microscope.hello
            run = open_partial(partial, Run(identity))
            recovered = memory.recover(microscope)
            if memory.exists():
                raise AcquireError(f"C1 record {memory.path} still pending: {recovered}")
            # twin.md: tools never call twin.* methods, so the truth is known only for --twin.
            truth = twin.truth if twin is not None else None
            with terminate_as_interrupt():
                acquire(microscope, source, clock, memory, run, partial=partial, offsets=offsets,
                        fraction=fraction, settle_s=args.settle_s, max_radius=args.max_radius, truth=truth,
                        progress=not args.no_progress)
            c1 = microscope.c1()
        except KeyboardInterrupt:
            done = len(done_indices(partial, samples)) if partial.exists() else 0
            print(f"\ninterrupted: {done} of {samples} samples kept in {partial}; aperture and C1 are back. "
                  "Rerun the same command to resume.", file=sys.stderr)
            return 130
        except ProtocolError as error:
            from temalign.wobble.cli import describe_protocol_error
            kept = (f"; {len(done_indices(partial, samples))} samples kept in {partial}, rerun to resume"
                    if partial.exists() else "")
            raise AcquireError(describe_protocol_error(error, address) + kept) from None
        except (WobbleError, OSError) as error:
            raise AcquireError(f"{error}; samples so far are kept in {partial}, rerun to resume") from None

        meta = {
            "wobble_fraction": fraction, "c0": run.c0, "c1_after": c1, "a_start": list(run.a_start or ()),
            "frames": "raw" if args.source == "camera" else "display",
            "camera": None, "source": args.source, "region": args.region, "exposure_s": args.exposure_s,
            "settle_s": args.settle_s, "server": hello.server, "address": None if chosen else address,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "spiral": {"radius": radius, "n": samples, "revolutions": revolutions},
            "preset": args.twin, "twin_seed": twin.seed if twin is not None else None,
            "twin_settings": twin.settings.model_dump(mode="json") if twin is not None else None,
            "command": args.command, "temalign_version": temalign.__version__,
        }
        dataset = pack(partial, samples, meta)
        dataset.meta["camera"] = list(dataset.stacks.shape[2:])
        dataset.save(out)
        shutil.rmtree(partial)
    print(f"wrote {out}: {samples} samples of {dataset.stacks.shape[3]}x{dataset.stacks.shape[2]} px; "
          f"aperture back at ({run.a_start[0]}, {run.a_start[1]}), C1 back at {c1:.6g}")
    return 0


def _refuse_if_daemon_active(config: Path | None) -> None:
    from temalign.config.loader import default_config_path, load_config
    from temalign.service.control import refuse_if_daemon_active

    path = config if config is not None else default_config_path()
    try:
        settings = load_config(path)
    except TemalignError:
        if config is not None:
            raise
        return  # no usable daemon config on this PC: no daemon to ask
    refuse_if_daemon_active(settings.control.socket, "acquisition")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return merge_command(args) if args.merge is not None else run_command(args)
    except TemalignError as error:
        print(f"acquire: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
