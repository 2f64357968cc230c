#!/usr/bin/env python3
"""A picture of the twin's wobble stacks: one row per column or scene, the 7 frames of a wobble.

    .venv/bin/python tools/twin_gallery.py [--optics traced] [--columns reference ...]
        [--scenes specimen vacuum ...] [--offset 160 -120] [--out docs/figures/twin-scenes.png]

Every column is shown under the first scene, every scene on the first column; frames are as the
camera gives them (noise on), each shown with its own 0.5/99.5 % stretch as the camera software
would. It is how a reader checks by eye that a line focus, a wire's shadow or a mirrored walk
looks like what the microscope shows."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from temalign import optics
from temalign.clock import SteppedClock
from temalign_twin.cli import build_settings
from temalign_twin.columns import COLUMNS
from temalign_twin.model import Twin
from temalign_twin.scenes import SCENES
from temalign_twin.settings import NO_DRIFT


def wobble_stack(optics_model: str, column: str | None, scene: str, offset: tuple[float, float],
                 wobble: float = 0.03, seed: int = 0) -> list[np.ndarray]:
    """The 7 frames of a wobble centred on c_f with the aperture `offset` units off the axis."""
    settings = build_settings("default", None, [], optics=optics_model, column_name=column,
                              scene_name=scene).updated(NO_DRIFT)
    twin = Twin(settings, SteppedClock(), seed=seed)
    aligned = twin.aligned()
    twin.move_aperture(round(aligned[0] + offset[0]), round(aligned[1] + offset[1]))
    frames = []
    for c in optics.wobble_values(settings.optics.c_f, wobble):
        twin.set_c1(float(c))
        twin.advance(settings.lens.settle_s + 0.5)
        frames.append(twin.acquire().astype(np.float64))
    return frames


def plot(rows: list[tuple[str, list[np.ndarray]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 7, figsize=(14, 2.1 * len(rows)), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for k, frame in enumerate(frames):
            ax = axes[r][k]
            lo, hi = np.percentile(frame, (0.5, 99.5))
            ax.imshow(frame, cmap="gray", vmin=lo, vmax=max(hi, lo + 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"C1 = c_f ({k - 3:+d} %)", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=50)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from extras import require

    require("tools/twin_gallery.py", "demo", "matplotlib")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optics", choices=("first-order", "traced"), default="traced")
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--offset", nargs=2, type=float, default=(160.0, -120.0), metavar=("X", "Y"))
    parser.add_argument("--out", type=Path, default=Path("docs/figures/twin-scenes.png"))
    args = parser.parse_args(argv)
    column = (lambda name: name) if args.optics == "traced" else (lambda name: None)
    rows = []
    for name in args.columns:
        print(f"column {name} ...", file=sys.stderr, flush=True)
        rows.append((f"{name}\n{args.scenes[0]}", wobble_stack(args.optics, column(name), args.scenes[0],
                                                               tuple(args.offset))))
    for name in args.scenes[1:]:
        print(f"scene {name} ...", file=sys.stderr, flush=True)
        rows.append((f"{args.columns[0]}\n{name}", wobble_stack(args.optics, column(args.columns[0]), name,
                                                                tuple(args.offset))))
    plot(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
