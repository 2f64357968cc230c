"""What a person wants to read about one wobble: where the spot is in each frame, and whether the
discs pulse on themselves (aligned) or walk along a line (misaligned).

Plain functions over a `WobbleStack`, used by `temalign wobble`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from temalign.estimate.spots import Spot, measure_spot
from temalign.frames import WobbleStack

CONCENTRIC_FOV = 0.01
"""A walk (centre-to-end, at the wobble's extreme frames) below this is "concentric": 2.5 px at
256 px, what about 8 motor units of misalignment give at a 3 % wobble."""


@dataclass(frozen=True)
class Walk:
    """The straight-line fit of the spot centres against the wobble coordinate t = (k - 3) / 3.

    `slope` (FOV) is the displacement from the middle frame to the last one; `spread` (FOV) the
    rms distance of the centres from the fitted line (the Larmor bend, noise)."""

    frames: int
    slope: tuple[float, float]
    spread: float

    @property
    def amplitude(self) -> float:
        return math.hypot(*self.slope)

    @property
    def direction_deg(self) -> float:
        """Direction of the walk towards the last frame, degrees from +x towards +y (y down)."""
        return math.degrees(math.atan2(self.slope[1], self.slope[0]))

    @property
    def concentric(self) -> bool:
        return self.amplitude < CONCENTRIC_FOV


def measure_stack(stack: WobbleStack) -> list[Spot]:
    """The spot of each frame (estimate/spots.py)."""
    return [measure_spot(image) for image in stack.images]


def fit_walk(spots: list[Spot], steps: int | None = None) -> Walk | None:
    """Fit centre_k = p + t_k * slope over the frames where a spot was found; None with fewer than
    three such frames (nothing to tell a walk from noise)."""
    n = steps or len(spots)
    half = (n - 1) / 2
    t = np.array([(k - half) / half for k, s in enumerate(spots) if s.found])
    if t.size < 3:
        return None
    xy = np.array([s.centre for s in spots if s.found])
    design = np.column_stack([np.ones_like(t), t])
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    residual = xy - design @ coef
    spread = float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))
    return Walk(int(t.size), (float(coef[1, 0]), float(coef[1, 1])), spread)


def pixel_position(spot: Spot, width: int, height: int) -> tuple[float, float]:
    """(column, row) of the spot's centre in the frame's own pixels, as an image viewer shows them."""
    x, y = spot.centre
    return (x + 0.5) * width - 0.5, (y + 0.5 * height / width) * width - 0.5


def describe_walk(walk: Walk | None, width: int) -> str:
    """One line: is the wobble concentric, and if not how far and where the spot walks."""
    if walk is None:
        return "walk: fewer than 3 frames show a spot; cannot tell whether the wobble is concentric"
    px = walk.amplitude * width
    if walk.concentric:
        return (f"walk: concentric, the discs pulse on themselves (walk {px:.1f} px from the middle "
                f"frame to an end, under {CONCENTRIC_FOV * width:.1f} px): aligned")
    return (f"walk: NOT concentric, the spot walks {2 * px:.1f} px ({2 * walk.amplitude:.3f} FOV) from "
            f"frame 0 to frame 6, towards {walk.direction_deg:+.0f} deg (x right, y down), "
            f"{walk.spread * width:.1f} px rms off a straight line: the aperture is off-axis")


def spot_table(stack: WobbleStack, spots: list[Spot]) -> list[str]:
    """A readable table: per frame C1, centre in pixels (column, row) and FOV, radius."""
    height, width = stack.images.shape[1:]
    lines = [f"  {'k':>1}  {'C1':>9}  {'col px':>7} {'row px':>7}  {'x FOV':>7} {'y FOV':>7}  "
             f"{'radius px':>9} {'FOV':>6}"]
    for k, (c1, spot) in enumerate(zip(stack.c1_values, spots, strict=True)):
        if not spot.found:
            lines.append(f"  {k:>1}  {c1:9.6f}  no spot found (blank or lost beam)")
            continue
        col, row = pixel_position(spot, width, height)
        lines.append(f"  {k:>1}  {c1:9.6f}  {col:7.2f} {row:7.2f}  {spot.centre[0]:+7.4f} "
                     f"{spot.centre[1]:+7.4f}  {spot.radius * width:9.2f} {spot.radius:6.4f}")
    return lines
