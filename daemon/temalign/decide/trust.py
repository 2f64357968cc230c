"""Whether an estimate is trusted enough to move on (docs/safety.md invariant 3, "a low-confidence
prediction: the estimators disagree"): the estimator-agreement gate, a pure function of what the
model and the classical estimator said.

The model is the more accurate; the classical estimator (spot centroids through the column's
calibration) fails in other ways. With `estimator.use: both` (the default) a move needs both to
agree within `estimator.agreement_units` (or `agreement_fraction` of a long move);
`model` or `classical` trusts one alone (for comparison
and diagnosis); without a calibration the classical estimator cannot speak, and
`estimator.without_calibration` says whether the model alone may move.

The model alone (`model_alone`, docs/safety.md): when the classical estimator cannot read the walk
of a stack the quality gate passed (a specimen edge, a biprism or line foci pull its centroids off
a line; not when it measured and disagreed, and never on a doubtful stack), a spot model that read
the walk confidently may still move, but only a shorter step (`estimator.model_alone_max_units`),
and the move is verified and rolled back like any other."""

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
MODEL_ALONE = "model_alone"
SOLE_CONFIDENCE = 0.5
"""The confidence reported when one estimator speaks alone: nothing checked it."""
MODEL_ALONE_MIN_FRAMES = 5
"""The model alone needs its walk from at least this many frames (of 7) it is sure of."""
MODEL_ALONE_MAX_RESIDUAL_PX = 2.0
"""... lying on their fitted walk within this rms, in pixels of a 256 px image."""
MODEL_ALONE_MIN_CONFIDENCE = 0.6
"""... with at least this mean confidence over the frames it used."""


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


@dataclass(frozen=True)
class ModelSays:
    """What a spot model's reading says of itself: its delta (this column's motor units), how many
    frames its walk used, their rms distance from the walk (256-px pixels) and their mean confidence."""

    delta: Vector
    frames: int
    residual_px: float
    confidence: float


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


def agreement_limit(model_delta: Vector, settings: EstimatorSettings) -> float:
    """How far apart the two estimates may be: `agreement_units`, or `agreement_fraction` of the
    move when that is more. Far off axis both estimators err in proportion (a calibration's few per
    cent, a scene's pull on the centroids) while the move is verified and rolled back all the
    same; near the axis the absolute limit rules."""
    return max(settings.agreement_units, settings.agreement_fraction * math.hypot(*model_delta))


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
    limit = agreement_limit(model_delta, settings)
    confidence = max(0.0, 1.0 - gap / limit)
    if gap > limit:
        return Trust(None, confidence, False, DISAGREE,
                     f"model and classical estimates differ by {gap:.1f} units, more than {limit:.1f} "
                     f"(estimator.agreement_units {settings.agreement_units:g} or agreement_fraction "
                     f"{settings.agreement_fraction:g} of the move)")
    return Trust(model_delta, confidence, True, AGREE, f"model and classical agree within {gap:.1f} units")


def model_alone(model: ModelSays | None, classical_cannot: str, *,
                settings: EstimatorSettings) -> Trust | None:
    """The model's move when the classical estimator could not read the walk of a stack the quality
    gate passed (`classical_cannot` says why), or None when the model may not move alone: it is not
    a spot model's confident reading, `estimator.use` is not both, or the rule is off
    (`model_alone_max_units` 0). The step is shortened to `model_alone_max_units`."""
    limit = settings.model_alone_max_units
    if model is None or settings.use != "both" or limit <= 0.0 or not _vector(model.delta):
        return None
    if not (model.frames >= MODEL_ALONE_MIN_FRAMES and model.residual_px <= MODEL_ALONE_MAX_RESIDUAL_PX
            and model.confidence >= MODEL_ALONE_MIN_CONFIDENCE):
        return None
    length = math.hypot(*model.delta)
    factor = min(1.0, limit / length) if length > 0.0 else 1.0
    delta = (model.delta[0] * factor, model.delta[1] * factor)
    shortened = f", shortened to {limit:g} units (estimator.model_alone_max_units)" if factor < 1.0 else ""
    return Trust(delta, SOLE_CONFIDENCE, True, MODEL_ALONE,
                 f"the classical estimator could not measure ({classical_cannot}); the model alone read the "
                 f"walk from {model.frames} frames within {model.residual_px:.2f} px{shortened}")
