"""The paper's `generate_datapoints` (section 3.2), done right: aperture offsets along a spiral.

The paper's listing mixes up its names (`delta_max` is both the argument and the loop's radius,
`radius` and `number_revolution` are undefined). What it means, and what this does: point i of n
sits at radius `R * i / n` and angle `2 pi * revolutions * i / n`, so point 0 is the aligned
position itself, the radius grows linearly and the outermost point is just inside R.

Properties (checked by tests/test_acquire.py):
- ordering: the motor moves a short way between successive points (at most about
  `R / n * sqrt(1 + (2 pi revolutions)^2)` plus rounding), which is why the paper chose a spiral
  over random positions for a slow mechanical stage;
- coverage: every point lies in the disc of radius R, and with `revolutions ~ sqrt(n / pi)` the
  rings are about as far apart as successive points on a ring, so the disc is covered evenly in
  radius (the density per area falls as 1/r: the aligned region, where precision matters, is
  sampled most densely).
"""

from __future__ import annotations

import math

import numpy as np


def spiral(radius: float, n: int, revolutions: float) -> np.ndarray:
    """`n` offsets (x, y) from the aligned position, int64 motor units, shape (n, 2)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"the spiral needs an integer number of points >= 1, got {n!r}")
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"the spiral radius must be a finite number >= 0 motor units, got {radius!r}")
    if not (math.isfinite(revolutions) and revolutions >= 0):
        raise ValueError(f"the number of revolutions must be finite and >= 0, got {revolutions!r}")
    i = np.arange(int(n), dtype=float)
    r = radius * i / n
    phase = 2.0 * np.pi * revolutions * i / n
    points = np.stack([r * np.cos(phase), r * np.sin(phase)], axis=1)
    return np.rint(points).astype(np.int64)


def default_revolutions(n: int) -> float:
    """Revolutions that space the rings about as far apart as successive points: sqrt(n / pi),
    rounded to a quarter turn (127 points: 6.25)."""
    return max(1.0, round(4.0 * math.sqrt(n / math.pi)) / 4.0)
