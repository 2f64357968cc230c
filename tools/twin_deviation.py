#!/usr/bin/env python3
"""How far twin.md's first-order formulas are from the twin's traced optics: the deviation table.

    .venv/bin/python tools/twin_deviation.py [--column reference] [--measure frames|optics]
        [--offsets 0 100 200 240 300 400] [--wobbles 2 3 4] [--out table.md] [--json out.json]

For each offset |m| (motor units) and wobble w, C1 is set to c_f (1 - w), c_f and c_f (1 + w)
with the aperture m from the optic axis, and the three spots are measured: by default from the traced
disc itself (its intensity centroid and equivalent radius), with --measure outline from the
centre of its outline (where a fit to the edge puts it), with --measure frames on noise-free
frames with the daemon's own measure_spot (what an estimator sees; each disc is brought near the
detector's centre by the beam shift so nothing is cut). Each figure is the mean over
`--directions` directions of m. Columns:

- walk: mean of |p(+w) - p(0)| and |p(-w) - p(0)|, FOV (the walk from the focused spot);
  first-order: (w / 3 %) 1.25 |m| / 1000;
- asym: |p(+w) - p(0)| / |p(-w) - p(0)| - 1; first-order 0, the lens law (power as I^2) alone
  gives (2w + w^2) / (2w - w^2) - 1;
- turn: the angle from p(0) - p(-w) to p(+w) - p(0), deg; first-order 150 deg * 2w;
- r(-w), r(+w): the disc radius, FOV; first-order sqrt(((w / 3 %) 0.156)^2 + 0.012^2);
- focus: |p(0) - s|, how far the focused spot itself moved, FOV; first-order 0;
- current: the beam current left, relative to an aligned aperture; first-order 1.

The traced rendering's speed is tools/bench_twin.py's (--traced)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import asdict, dataclass

import numpy as np

from temalign import optics
from temalign.estimate.spots import measure_spot
from temalign_twin.columns import COLUMNS, Column, column
from temalign_twin.settings import TwinSettings
from temalign_twin.traced import Fringes, TracedDisc, trace

CLEAN = {"specimen": {"texture_contrast": 0.0},
         "camera": {"shot_noise": False, "read_noise": 0.0, "hot_pixel_fraction": 0.0, "dark_offset": 0.0}}


@dataclass(frozen=True)
class Row:
    offset: float
    wobble: float
    walk: float
    walk_first_order: float
    asymmetry: float
    asymmetry_lens_law: float
    turn_deg: float
    turn_first_order_deg: float
    radius_minus: float
    radius_plus: float
    radius_first_order: float
    focus: float
    current: float
    label: str = ""
    """What the first cell shows instead of the offset (the column, in --summary)."""


def spot(c: float, m: np.ndarray, col: Column, settings: TwinSettings, measure: str
         ) -> tuple[np.ndarray, float, float]:
    """Centre (FOV, beam shift 0), radius (FOV) and current left of one disc."""
    fringes = Fringes.of(settings.beam)
    pixel = 1.0 / settings.camera.width
    disc = trace(c, m, col, fringes=fringes, pixel_fov=pixel)
    if measure == "optics":
        return np.asarray(disc.centroid), disc.equivalent_radius, disc.transmission
    if measure == "outline":
        return np.asarray(disc.outline_centre), disc.equivalent_radius, disc.transmission
    shift = -np.asarray(disc.centroid)
    moved: TracedDisc = trace(c, m, col, shift=shift, fringes=fringes, pixel_fov=pixel)
    mean, box = moved.expected_electrons(1e6, settings)
    frame = np.zeros((settings.camera.height, settings.camera.width))
    frame[box] = mean
    found = measure_spot(frame)
    if not found.found:
        raise RuntimeError(f"no spot found at c={c:.4f}, m={m.tolist()} in column {col.name}")
    return np.asarray(found.centre) - shift, found.radius, disc.transmission


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Signed angle from a to b, deg (+x towards +y positive)."""
    return math.degrees(math.atan2(a[0] * b[1] - a[1] * b[0], a[0] * b[0] + a[1] * b[1]))


def row(offset: float, wobble: float, col: Column, settings: TwinSettings, measure: str,
        directions: int) -> Row:
    """One line of the table: the figures averaged over `directions` directions of m."""
    figures = []
    for k in range(directions):
        a = 2.0 * math.pi * (k + 0.25) / directions
        m = offset * np.array([math.cos(a), math.sin(a)])
        (lo, r_lo, _), (mid, _, cur), (hi, r_hi, _) = (
            spot(col.c_f * f, m, col, settings, measure) for f in (1.0 - wobble, 1.0, 1.0 + wobble))
        up, down = hi - mid, mid - lo
        walk_up, walk_down = float(np.hypot(*up)), float(np.hypot(*down))
        moving = offset > 0
        figures.append([0.5 * (walk_up + walk_down), walk_up / walk_down - 1.0 if moving else math.nan,
                        _angle(down, up) if moving else math.nan, r_lo, r_hi, float(np.hypot(*mid)), cur])
    mean = np.mean(np.asarray(figures), axis=0)
    g = wobble / optics.WOBBLE_UNIT
    law = (2 * wobble + wobble**2) / (2 * wobble - wobble**2) - 1.0
    return Row(offset, wobble, float(mean[0]), g * optics.D_FOV * offset / 1000.0, float(mean[1]), law,
               float(mean[2]), optics.THETA_PER_U_DEG * 2 * wobble, float(mean[3]), float(mean[4]),
               math.hypot(g * optics.RADIUS_PER_G, optics.RADIUS_MIN), float(mean[5]), float(mean[6]))


def _cell(value: float, digits: int, unit: str = "", signed: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return (f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}") + unit


def markdown(rows: list[Row], title: str, first_column: str = "offset") -> str:
    """The table as docs/twin.md shows it: each cell traced (first-order)."""
    lines = [title, "",
             f"| {first_column} | wobble | walk, FOV | asym | turn, deg | r(-w), FOV | r(+w), FOV "
             "| focus, FOV | current |",
             "| ---: | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lead = r.label or f"{r.offset:g}"
        lines.append(
            f"| {lead} | {100 * r.wobble:g} % | {_cell(r.walk, 3)} ({r.walk_first_order:.3f}) "
            f"| {_cell(100 * r.asymmetry, 1, ' %', True)} (0; lens law {100 * r.asymmetry_lens_law:+.1f} %) "
            f"| {_cell(r.turn_deg, 1, signed=True)} ({r.turn_first_order_deg:+.1f}) "
            f"| {r.radius_minus:.3f} ({r.radius_first_order:.3f}) "
            f"| {r.radius_plus:.3f} ({r.radius_first_order:.3f}) "
            f"| {r.focus:.4f} (0) | {r.current:.2f} (1) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--column", default="reference", help=f"one of {', '.join(COLUMNS)}")
    parser.add_argument("--measure", choices=("optics", "outline", "frames"), default="optics",
                        help="optics: the traced discs' intensity centroid and radius (default); "
                             "outline: the centre of their outline; frames: measure_spot on "
                             "noise-free frames")
    parser.add_argument("--summary", action="store_true",
                        help="one row per column at 240 units and a 3 %% wobble instead")
    parser.add_argument("--offsets", type=float, nargs="+", default=[0, 100, 200, 240, 300, 400])
    parser.add_argument("--wobbles", type=float, nargs="+", default=[2, 3, 4], help="percent")
    parser.add_argument("--directions", type=int, default=4, help="directions of m averaged")
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()
    try:
        col = column(args.column)
    except KeyError as error:
        print(error.args[0], file=sys.stderr)
        return 2
    settings = TwinSettings().updated(CLEAN)
    how = {"frames": "noise-free frames measured with measure_spot",
           "optics": "the traced discs' intensity centroids",
           "outline": "the centres of the traced discs' outlines"}[args.measure]
    if args.summary:
        rows = [dataclasses.replace(row(240.0, 0.03, c, settings, args.measure, args.directions), label=name)
                for name, c in COLUMNS.items()]
        text = markdown(rows, f"Every column at 240 units, 3 % wobble, from {how}; each cell: traced "
                        "(first-order).", first_column="column")
    else:
        rows = [row(offset, w / 100.0, col, settings, args.measure, args.directions)
                for offset in args.offsets for w in args.wobbles]
        text = markdown(rows, f"Column `{col.name}`, from {how}; each cell: traced (first-order).")
    print(text, end="")
    if args.out:
        with open(args.out, "w") as out:
            out.write(text)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"column": col.name, "measure": args.measure, "rows": [asdict(r) for r in rows]}, out,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
