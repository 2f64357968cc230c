"""Whether an estimate is trusted enough to move on (docs/safety.md invariant 3, "a low-confidence
prediction: the estimators disagree"): the estimator-agreement gate, a pure function of what the
model and the classical estimator said.

The model is the more accurate; the classical estimator (spot centroids through the column's
calibration) fails in other ways. With `estimator.use: both` (the default) a move needs both to
agree within `estimator.agreement_units`; `model` or `classical` trusts one alone (for comparison
and diagnosis); without a calibration the classical estimator cannot speak, and
`estimator.without_calibration` says whether the model alone may move."""

from __future__ import annotations

import math
from dataclasses import dataclass

from temalign.config.schema import EstimatorSettings
from temalign.values import finite

Vector = tuple[float, float]

AGREE = "agree"
MODEL_ONLY = "model_only"
CLASSICAL_ONLY = "classical_only"
NO_CALIBRATION = "no_calibration"
MODEL_FAILED = "model_failed"
CLASSICAL_FAILED = "classical_failed"
DISAGREE = "disagree"
SOLE_CONFIDENCE = 0.5
"""The confidence reported when one estimator speaks alone: nothing checked it."""


@dataclass(frozen=True)
class Trust:
    """The estimate to use (None: no move), its confidence (0 to 1), and why, as a stable code."""

    delta: Vector | None
    confidence: float
    trusted: bool
    reason: str
    detail: str


@dataclass(frozen=True)
class ClassicalSays:
    """What the classical estimator said: its delta (None when it could not measure), the rms
    residual of the walk's fit in 256-px pixels, and why it could not measure."""

    delta: Vector | None
    residual_px: float
    reason: str | None


def _vector(v: Vector | None) -> bool:
    return v is not None and finite(*v)


def model_verdict(model_delta: Vector | None, *, use: str, calibrated: bool,
                  without_calibration: str) -> Trust | None:
    """The verdict once the model has spoken, when the classical estimator has nothing to add:
    the model failed, is used alone, or there is no calibration. None: ask the classical one."""
    if not _vector(model_delta):
        return Trust(None, 0.0, False, MODEL_FAILED, f"the model's estimate is not finite: {model_delta}")
    if use == "model":
        return Trust(model_delta, SOLE_CONFIDENCE, True, MODEL_ONLY, "the model alone (estimator.use: model)")
    if calibrated:
        return None
    if use == "classical":
        return Trust(None, 0.0, False, NO_CALIBRATION,
                     "estimator.use: classical needs a calibration (temalign calibrate)")
    if without_calibration == "model-only":
        return Trust(model_delta, SOLE_CONFIDENCE, True, MODEL_ONLY,
                     "no calibration: the model alone (estimator.without_calibration)")
    return Trust(model_delta, 0.0, False, NO_CALIBRATION,
                 "no calibration yet (temalign calibrate): measured, not moved")


def agreement(model_delta: Vector, classical: ClassicalSays, settings: EstimatorSettings) -> Trust:
    """The verdict once both have spoken (a calibration exists, the model's delta is finite)."""
    if not _vector(classical.delta):
        return Trust(None, 0.0, False, CLASSICAL_FAILED,
                     classical.reason or "the classical estimate is not finite")
    assert classical.delta is not None
    if not classical.residual_px <= settings.classical_max_residual_px:
        return Trust(None, 0.0, False, CLASSICAL_FAILED,
                     f"the spot walk is not a line: rms residual {classical.residual_px:.2f} px "
                     f"(estimator.classical_max_residual_px {settings.classical_max_residual_px})")
    if settings.use == "classical":
        return Trust(classical.delta, SOLE_CONFIDENCE, True, CLASSICAL_ONLY,
                     "the classical estimator alone (estimator.use: classical)")
    gap = math.hypot(model_delta[0] - classical.delta[0], model_delta[1] - classical.delta[1])
    confidence = max(0.0, 1.0 - gap / settings.agreement_units)
    if gap > settings.agreement_units:
        return Trust(None, confidence, False, DISAGREE,
                     f"model and classical estimates differ by {gap:.1f} units "
                     f"(estimator.agreement_units {settings.agreement_units})")
    return Trust(model_delta, confidence, True, AGREE, f"model and classical agree within {gap:.1f} units")
