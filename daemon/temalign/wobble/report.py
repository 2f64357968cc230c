"""What a person wants to read about one wobble: where the spot is in each frame, and whether the
discs pulse on themselves (aligned) or walk along a line (misaligned).

Plain functions over a `WobbleStack` and its walk (estimate/walk.py), used by `temalign wobble`."""

from __future__ import annotations

from temalign.estimate.spots import Spot
from temalign.estimate.walk import Walk
from temalign.frames import WobbleStack

CONCENTRIC_FOV = 0.01
"""A walk (centre-to-end, at the wobble's extreme frames) below this is "concentric": 2.5 px at
256 px, what about 8 motor units of misalignment give at a 3 % wobble."""


def pixel_position(spot: Spot, width: int, height: int) -> tuple[float, float]:
    """(column, row) of the spot's centre in the frame's own pixels, as an image viewer shows them."""
    x, y = spot.centre
    return (x + 0.5) * width - 0.5, (y + 0.5 * height / width) * width - 0.5


def is_concentric(walk: Walk, fraction: float) -> bool:
    """The discs pulse on themselves: the walk from the middle frame to an end is below
    CONCENTRIC_FOV."""
    return walk.amplitude(fraction) < CONCENTRIC_FOV


def describe_walk(walk: Walk | str, width: int, fraction: float) -> str:
    """One line: is the wobble (of `fraction`) concentric, and if not how far and where the spot
    walks. `walk` is estimate.walk.fit_walk's result (a string: why there is no walk)."""
    if isinstance(walk, str):
        return f"walk: cannot tell whether the wobble is concentric ({walk})"
    amplitude = walk.amplitude(fraction)
    px = amplitude * width
    if is_concentric(walk, fraction):
        return (f"walk: concentric, the discs pulse on themselves (walk {px:.1f} px from the middle "
                f"frame to an end, under {CONCENTRIC_FOV * width:.1f} px): aligned")
    return (f"walk: NOT concentric, the spot walks {2 * px:.1f} px ({2 * amplitude:.3f} FOV) from "
            f"frame 0 to frame 6, towards {walk.direction_deg:+.0f} deg (x right, y down), "
            f"{walk.residual_fov * width:.1f} px rms off the fitted walk: the aperture is off-axis")


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
