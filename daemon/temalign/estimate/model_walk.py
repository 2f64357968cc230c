"""A spot model's reading of one stack as the spot's walk: the split of issue 13, where the network
reads what the images show (each frame's spot) and the column's calibration maps the walk through
the spots to motor units, exactly as it does for the classical estimator's centroids.

Which frames count: those the model is at least MIN_CONFIDENCE sure of, each weighted by its
confidence; then, while more than OUTLIER_MIN_FRAMES remain, the frame furthest from the fitted walk
is left out if it strays more than OUTLIER_FOV (one misread frame, a disc cut by the border or a
fringe taken for the spot, would otherwise tilt a seven-point line)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from temalign.estimate.model_estimator import SpotReading
from temalign.estimate.walk import MIN_FRAMES, Walk, fit_points, rho_of

MIN_CONFIDENCE = 0.5
OUTLIER_FOV = 2.0 / 256
"""Two pixels of a 256 px image: a frame this far from the walk of the others is misread."""
OUTLIER_MIN_FRAMES = 4


@dataclass(frozen=True)
class ModelWalk:
    """The walk through the model's spots (None when it has none: `reason`), and which frames it used."""

    walk: Walk | None
    used: tuple[bool, ...]
    reason: str | None
    centres: tuple[tuple[float, float], ...] = ()
    """Each frame's spot as the model read it, FOV (the stack store keeps them beside the frames)."""
    confidence: tuple[float, ...] = ()
    """The model's confidence in each frame's spot, 0 to 1."""

    @property
    def frames(self) -> int:
        return sum(self.used)


def model_walk(reading: SpotReading, c1_values: tuple[float, ...] | list[float], c1_before: float
               ) -> ModelWalk:
    """The walk through the confident spots of `reading` against rho = c / c1_before - 1."""
    rho = rho_of(c1_values, c1_before)
    centres = np.asarray(reading.centres, dtype=float)
    confidence = np.asarray(reading.confidence, dtype=float)
    if centres.shape != (len(rho), 2) or confidence.shape != (len(rho),):
        return ModelWalk(None, (False,) * len(rho),
                         f"the model read {centres.shape[0]} spots for {len(rho)} frames")
    weights = np.where(np.isfinite(confidence) & (confidence >= MIN_CONFIDENCE)
                       & np.isfinite(centres).all(axis=1), confidence, 0.0)
    walk = fit_points(rho, np.nan_to_num(centres), weights, MIN_FRAMES)
    while isinstance(walk, Walk) and walk.frames > OUTLIER_MIN_FRAMES and walk.misfits is not None:
        worst = int(np.nanargmax(walk.misfits))
        if not walk.misfits[worst] > OUTLIER_FOV:
            break
        weights[worst] = 0.0
        walk = fit_points(rho, np.nan_to_num(centres), weights, MIN_FRAMES)
    used = tuple(bool(w > 0.0) for w in weights)
    read = (tuple((float(x), float(y)) for x, y in centres), tuple(float(c) for c in confidence))
    if isinstance(walk, str):
        return ModelWalk(None, used, f"the model: {walk}", *read)
    return ModelWalk(walk, used, None, *read)
