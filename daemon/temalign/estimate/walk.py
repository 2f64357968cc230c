"""The spot's walk over a wobble: the one fit of the spot centres against the lens change.

To first order (twin.md) the spot centre walks linearly with the relative lens change
rho = c / c0 - 1 (c0: C1 before the wobble), and the walk's slope is linear in the misalignment.
The fit is p0 + slope rho, with a rho^2 term as well when 5 or more frames show the spot: it
takes up the Larmor bend of the walk (a few pixels at 240 units) so that the residual measures
noise, and on a full symmetric wobble it leaves the slope exactly that of the straight line.
The classical estimator, the calibration and the people-facing report (`temalign wobble`) all
read the walk from here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from temalign.estimate.spots import Spot, measure_stack
from temalign.frames import WobbleStack

MIN_FRAMES = 3
"""Fewer frames with a spot cannot tell a walk from noise (the two-frame check asks for 2)."""


@dataclass(frozen=True)
class Walk:
    """The fitted walk of one stack: slope (FOV per unit rho), rms residual (FOV), frames used."""

    slope: np.ndarray
    residual_fov: float
    frames: int
    misfits: np.ndarray | None = None
    """Each frame's distance from the fitted walk, FOV (NaN for a frame left out)."""

    def amplitude(self, fraction: float) -> float:
        """How far the spot walks from the middle frame to an end of a wobble of `fraction`, FOV."""
        return float(math.hypot(*self.slope)) * fraction

    @property
    def direction_deg(self) -> float:
        """Direction of the walk towards higher C1, degrees from +x towards +y (y down)."""
        return math.degrees(math.atan2(float(self.slope[1]), float(self.slope[0])))


def rho_of(c1_values: Sequence[float], c0: float) -> np.ndarray:
    return np.asarray(c1_values, dtype=float) / c0 - 1.0


def fit_walk(stack: WobbleStack, usable: Sequence[bool] | None = None,
             spots: Sequence[Spot] | None = None, min_frames: int = MIN_FRAMES) -> Walk | str:
    """Centroids of the usable frames (every frame with a spot when `usable` is None) against rho;
    a string says why there is no fit. `spots`: the frames' spots when already measured
    (StackQuality.spots). `min_frames` 2 serves the two-frame check, whose line has no residual
    to judge it by."""
    images = getattr(stack, "images", None)
    if not isinstance(images, np.ndarray) or images.ndim != 3 or len(stack.c1_values) != images.shape[0]:
        return "the stack is not a (frames, height, width) array with one C1 value per frame"
    if usable is not None and len(usable) != images.shape[0]:
        return f"{len(usable)} usable flags for {images.shape[0]} frames"
    if images.dtype.kind not in "biuf":
        return f"the frames hold {images.dtype} values, not real numbers"
    if not np.isfinite(images).all():
        return "the stack holds NaN or infinite pixel values"
    c0 = float(stack.c1_before)
    if not (math.isfinite(c0) and c0 > 0):
        return f"C1 before the wobble is {c0!r}, not a positive number"
    if spots is None or len(spots) != images.shape[0]:
        try:
            spots = measure_stack(stack)
        except ValueError as error:
            return f"the frames cannot be measured: {error}"
    keep = [k for k, s in enumerate(spots)
            if s.found and all(math.isfinite(v) for v in s.centre) and (usable is None or usable[k])]
    rho = rho_of(stack.c1_values, c0)
    xy = np.array([s.centre if k in keep else (0.0, 0.0) for k, s in enumerate(spots)], dtype=float)
    weights = np.array([1.0 if k in keep else 0.0 for k in range(len(spots))])
    return fit_points(rho, xy, weights, min_frames)


def fit_points(rho: np.ndarray, xy: np.ndarray, weights: np.ndarray,
               min_frames: int = MIN_FRAMES) -> Walk | str:
    """The walk through spot centres `xy` (FOV) at `rho`, each frame counted by its weight (0 leaves
    it out): the one fit of the classical estimator's centroids and of a model's spots."""
    keep = np.flatnonzero(np.asarray(weights, dtype=float) > 0.0)
    if len(keep) < min_frames:
        return f"only {len(keep)} frame(s) show a usable spot; at least {min_frames} are needed"
    r = np.asarray(rho, dtype=float)[keep]
    points = np.asarray(xy, dtype=float)[keep]
    w = np.asarray(weights, dtype=float)[keep]
    columns = [np.ones_like(r), r]
    if len(keep) >= 5:
        columns.append(r**2)
    design = np.column_stack(columns)
    if np.linalg.matrix_rank(design) < design.shape[1]:
        return "the usable frames do not span distinct C1 values"
    root = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(design * root, points * root, rcond=None)
    residual = points - design @ coef
    rms = float(math.sqrt(float(np.sum(w * np.sum(residual**2, axis=1)) / float(np.sum(w)))))
    misfits = np.full(len(np.asarray(rho)), np.nan)
    misfits[keep] = np.hypot(residual[:, 0], residual[:, 1])
    return Walk(coef[1].astype(float), rms, len(keep), misfits)
