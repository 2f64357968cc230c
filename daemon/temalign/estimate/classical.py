"""The classical estimator: where the spot is in each frame, against C1, through a 2x2 calibration.

The spot's walk (estimate/walk.py: slope per unit of relative lens change rho = c/c0 - 1) is
linear in the misalignment to first order: slope = M @ (a - a*). M holds everything a column adds
(camera rotation, mirroring, magnification, Larmor rotation): it is the calibration
(estimate/calibration.py, measured by two known aperture moves in service/calibrate.py), so the
correction is delta = a* - a = -(M^-1 @ slope).

`remap` carries a twin-trained model's delta (twin geometry) onto a column with its own M."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from temalign.estimate.calibration import Calibration
from temalign.estimate.spots import Spot
from temalign.estimate.walk import MIN_FRAMES, fit_walk
from temalign.frames import WobbleStack

REFERENCE_WIDTH = 256
"""Residuals are quoted in pixels of a 256 px-wide image, whatever the camera."""


@dataclass(frozen=True)
class ClassicalEstimate:
    """delta: motor units to move the aperture by (None when it cannot be estimated: `reason`).
    slope: the spot's walk, FOV per unit rho. residual_px: rms distance of the centroids from the
    fitted walk, in pixels of a 256 px-wide image."""

    delta: tuple[float, float] | None
    slope: tuple[float, float] | None
    residual_px: float
    frames_used: int
    reason: str | None


def classical_estimate(stack: WobbleStack, calibration: Calibration,
                       usable: Sequence[bool] | None = None,
                       spots: Sequence[Spot] | None = None,
                       min_frames: int = MIN_FRAMES) -> ClassicalEstimate:
    """delta = -(M^-1 @ slope) from the spot's walk over the usable frames (all frames with a spot
    when `usable` is None), through Calibration.correction."""
    walk = fit_walk(stack, usable, spots, min_frames)
    if isinstance(walk, str):
        return ClassicalEstimate(None, None, math.nan, 0, walk)
    residual_px = walk.residual_fov * REFERENCE_WIDTH
    slope = (float(walk.slope[0]), float(walk.slope[1]))
    delta = calibration.correction(walk.slope, float(stack.c1_before))
    if not np.isfinite(delta).all():
        return ClassicalEstimate(None, slope, residual_px, walk.frames, "the estimate is not finite")
    return ClassicalEstimate((float(delta[0]), float(delta[1])), slope, residual_px, walk.frames, None)


def remap(delta_model: tuple[float, float], basis: Calibration, column: Calibration) -> tuple[float, float]:
    """A delta in `basis`'s geometry (a twin-trained model's: nominal_calibration) as the column
    needs it: the same walk of the spot, slope = -M_basis delta_model = -M_column delta_column."""
    out = remap_matrix(basis.array, column.array) @ np.asarray(delta_model, dtype=float)
    return float(out[0]), float(out[1])


def remap_matrix(basis: np.ndarray, column: np.ndarray) -> np.ndarray:
    """R with delta_column = R delta_basis for the same walk: M_column^-1 M_basis."""
    out: np.ndarray = np.linalg.solve(column, basis)
    return out
