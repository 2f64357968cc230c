"""`temalign demo`: the whole measuring path on a digital twin, in a few seconds.

A twin serves protocol v1 on an ephemeral port in this process; the demo talks to it over TCP
exactly as the daemon talks to a column (TcpMicroscope), wobbles with the aperture aligned, then
150 and 240 units off, and shows for each stack the spot the estimator measured next to the
twin's truth (read through the protocol's twin.truth, which the daemon itself never calls), and
whether the discs walk. It writes one PNG per stack (the 7 frames and a colour composite, like
the paper's Fig. 2 and 10) and puts the aperture back where it found it."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temalign.errors import ConfigError, TemalignError

STACKS = (
    ("aligned", (0, 0)),
    ("150 units off (along x)", (150, 0)),
    ("240 units off (towards -x, +y)", (-170, 170)),
)
SETTLE_S = 2.0
"""The paper's wait after each C1 change (twin seconds)."""
FRACTION = 0.03


def register(subparsers: Any) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="run wobbles on a digital twin over TCP and show what they measure",
        description="Start a digital twin in this process, connect to it over TCP, wobble with the "
                    "aperture aligned, 150 and 240 units off; print measured vs true spot positions "
                    "and write a PNG per stack.",
    )
    parser.add_argument("--seed", type=int, default=0, help="twin seed (default %(default)s)")
    parser.add_argument("--time-scale", type=float, default=50.0, metavar="X",
                        help="twin seconds per wall second (default %(default)g)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), metavar="DIR",
                        help="where the PNGs go (default ./%(default)s)")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class TruthSpot:
    """The twin's own spot at the moment a frame was grabbed (FOV)."""

    centre: tuple[float, float]
    radius: float
    misalignment: tuple[float, float]


class TruthRecorder:
    """An image source that asks the twin for its truth right after each frame, so the table can
    put the measurement next to what the twin rendered. The wobble only sees a source."""

    def __init__(self, source: Any, truth_client: Any, progress: Any) -> None:
        self.source = source
        self.truth_client = truth_client
        self.progress = progress
        self.truths: list[TruthSpot] = []
        self.name = source.name
        self.kind = source.kind

    def grab(self) -> Any:
        frame = self.source.grab()
        truth = self.truth_client.call("twin.truth", {})
        spot = truth["spot"]
        self.truths.append(TruthSpot(tuple(spot["centre"]), float(spot["radius"]),
                                     tuple(truth["misalignment"])))
        self.progress(f"frame {len(self.truths)}/7")
        return frame


def _progress_line(prefix: str) -> Any:
    """Progress of one wobble: redrawn in place on a terminal, one line otherwise."""
    if not sys.stdout.isatty():
        print(f"  {prefix}...", flush=True)
        return lambda text: None

    def show(text: str) -> None:
        print(f"\r  {prefix}: {text}   ", end="", flush=True)
    return show


def _table(stack: Any, spots: list[Any], truths: list[TruthSpot]) -> list[str]:
    from temalign.wobble.report import pixel_position

    height, width = stack.images.shape[1:]
    lines = [f"  {'k':>1}  {'C1':>7}   {'measured col,row px':>21}   {'truth col,row px':>21}   "
             f"{'error px':>8}   {'radius px meas/truth':>20}"]
    for k, (c1, spot, truth) in enumerate(zip(stack.c1_values, spots, truths, strict=True)):
        tx = (truth.centre[0] + 0.5) * width - 0.5
        ty = (truth.centre[1] + 0.5 * height / width) * width - 0.5
        true_text = f"({tx:8.2f}, {ty:8.2f})"
        if not spot.found:
            lines.append(f"  {k:>1}  {c1:7.4f}   {'no spot found':>21}   {true_text:>21}")
            continue
        mx, my = pixel_position(spot, width, height)
        error = math.hypot(mx - tx, my - ty)
        lines.append(f"  {k:>1}  {c1:7.4f}   ({mx:8.2f}, {my:8.2f})   {true_text:>21}   {error:8.2f}   "
                     f"{spot.radius * width:9.1f} / {truth.radius * width:<8.1f}")
    return lines


def write_png(path: Path, stack: Any, spots: list[Any], truths: list[TruthSpot], title: str) -> bool:
    """The 7 frames side by side and a composite with one colour per frame; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return False
    from temalign.wobble.report import pixel_position

    images = stack.images
    n, height, width = images.shape
    shown = []
    for image, spot in zip(images, spots, strict=True):
        if spot.found:  # the disc's own plateau is white: hot pixels and the focused peak do not dim it
            background, top = spot.background, spot.background + 1.2 * spot.level
        else:
            background, top = np.percentile(image, (50.0, 99.9))
        shown.append(np.clip((image - background) / max(top - background, 1e-6), 0.0, 1.0) ** 0.7)
    colours = plt.get_cmap("turbo")(np.linspace(0.05, 0.95, n))[:, :3]
    composite = np.zeros((height, width, 3))
    for image, colour in zip(shown, colours, strict=True):
        composite = np.maximum(composite, image[..., None] * colour)

    fig, axes = plt.subplots(1, n + 1, figsize=(2.0 * (n + 1), 2.5), constrained_layout=True)
    for k, ax in enumerate(axes[:n]):
        ax.imshow(shown[k], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"k={k}  C1={stack.c1_values[k]:.4f}", fontsize=7)
        for spine in ax.spines.values():
            spine.set_color(colours[k])
            spine.set_linewidth(2.5)
    axes[n].imshow(composite, interpolation="nearest")
    axes[n].set_title("composite", fontsize=7)
    for spot, truth in zip(spots, truths, strict=True):
        tx = (truth.centre[0] + 0.5) * width - 0.5
        ty = (truth.centre[1] + 0.5 * height / width) * width - 0.5
        axes[n].plot(tx, ty, "o", mfc="none", mec="white", ms=5, mew=0.6)
        if spot.found:
            mx, my = pixel_position(spot, width, height)
            axes[n].plot(mx, my, "+", color="white", ms=6, mew=1.0)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    fig.suptitle(f"{title}   (+ measured, o twin truth)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _check(args: argparse.Namespace) -> None:
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if not (math.isfinite(args.time_scale) and args.time_scale > 0):
        raise ConfigError(f"--time-scale must be a number > 0, got {args.time_scale}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {args.out}: cannot create it: {error.strerror or error}") from error
    from temalign.protocol.errors import ProtocolError

    started = time.monotonic()
    try:
        _demo(args, started)
    except ProtocolError as error:
        raise TemalignError(f"the demo lost the twin: {error}") from error
    print(f"demo done in {time.monotonic() - started:.1f} s (wall); pictures in {args.out}/")
    return 0


def _demo(args: argparse.Namespace, started: float) -> None:
    from temalign.clock import ScaledClock
    from temalign.microscope import Position
    from temalign.protocol.client import ProtocolClient
    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.twin.model import Twin
    from temalign.twin.service import TwinServer
    from temalign.twin.settings import TwinSettings
    from temalign.wobble.c1_memory import C1Memory
    from temalign.wobble.report import describe_walk, fit_walk, measure_stack
    from temalign.wobble.sources import CameraSource
    from temalign.wobble.stack import wobble

    clock = ScaledClock(args.time_scale)
    print(f"starting a digital twin (seed {args.seed}, {args.time_scale:g} twin seconds per wall second)...",
          flush=True)
    twin = Twin(TwinSettings(), clock, seed=args.seed)
    with TwinServer(twin, host="127.0.0.1", port=0) as server, tempfile.TemporaryDirectory() as state:
        host, port = server.address[:2]
        print(f"twin listening on {host}:{port}; connecting over TCP as the daemon would", flush=True)
        microscope = TcpMicroscope((host, port), client_name="temalign-demo")
        truth_client = ProtocolClient(host, port, client_name="temalign-demo-truth")
        try:
            home = microscope.aperture()
            print(f"aperture at ({home.x}, {home.y}), C1 = {microscope.c1():.4f}; "
                  f"wobble {FRACTION:.0%}, settle {SETTLE_S:g} s (twin time)", flush=True)
            memory = C1Memory(state)
            for number, (label, (dx, dy)) in enumerate(STACKS, start=1):
                target = Position(home.x + dx, home.y + dy)
                if (dx, dy) != (0, 0):
                    print(f"moving the aperture {label}: to ({target.x}, {target.y})...", flush=True)
                    microscope.move_aperture(target)
                progress = _progress_line(f"stack {number} ({label}): wobbling")
                recorder = TruthRecorder(CameraSource(microscope, clock=clock), truth_client, progress)
                stack = wobble(microscope, recorder, fraction=FRACTION, settle_s=SETTLE_S, clock=clock,
                               memory=memory)
                if sys.stdout.isatty():
                    print("\r", end="")
                spots = measure_stack(stack)
                width = stack.images.shape[2]
                m = recorder.truths[-1].misalignment
                print(f"stack {number}: {label}; twin truth: misalignment ({m[0]:+.1f}, {m[1]:+.1f}) units, "
                      f"|m| = {math.hypot(*m):.1f}")
                for line in _table(stack, spots, recorder.truths):
                    print(line)
                print("  " + describe_walk(fit_walk(spots), width))
                png = args.out / f"stack{number}.png"
                if write_png(png, stack, spots, recorder.truths, f"stack {number}: {label}"):
                    print(f"  wrote {png}")
                else:
                    print("  (no PNG: matplotlib is not installed; pip install 'temalign[demo]')")
                print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
            print(f"putting the aperture back to ({home.x}, {home.y})...", flush=True)
            microscope.move_aperture(home)
            back = microscope.aperture()
            print(f"aperture reads ({back.x}, {back.y}) ({math.hypot(back.x - home.x, back.y - home.y):.1f} "
                  f"units from where it started: backlash and motor noise), C1 = {microscope.c1():.4f}")
        finally:
            truth_client.close()
            microscope.close()
