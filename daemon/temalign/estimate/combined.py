"""Both estimators on one stack, and whether their estimate is trusted enough to move on.

The model (LiteRT) is the more accurate; the classical estimator (spot centroids through the
column's calibration) fails in other ways. A move needs a clean stack and both to agree within
`estimator.agreement_units` (safety.md invariant 3). The model's delta is re-mapped through the
calibration (architecture.md: a twin-trained model knows the twin's rotation and magnification;
`remap` turns that into the column's), so one model serves any column."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from temalign.config.schema import EstimatorSettings, QualitySettings
from temalign.errors import TemalignError
from temalign.estimate.calibration import Calibration, nominal_calibration
from temalign.estimate.classical import ClassicalEstimate, classical_estimate, remap
from temalign.estimate.model_estimator import ModelError, ModelEstimator
from temalign.estimate.quality import StackQuality, assess_stack
from temalign.frames import WobbleStack

Vector = tuple[float, float]


@dataclass(frozen=True)
class Measurement:
    """What one stack says: each estimator's delta, the one used, and why it is (not) trusted.

    `reason` is a stable code: "agree", "model-only" (estimator.use: model, or no calibration and
    the config allows it), "classical-only" (estimator.use: classical), "no-calibration",
    "doubtful-stack", "model-failed", "classical-failed", "disagree"."""

    quality: StackQuality
    model_delta: Vector | None
    classical: ClassicalEstimate | None
    delta: Vector | None
    confidence: float
    trusted: bool
    reason: str
    detail: str
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    classical_ms: float = 0.0

    @property
    def misalignment(self) -> float | None:
        """|delta|, the estimated distance from alignment (units), when there is an estimate."""
        return None if self.delta is None else math.hypot(*self.delta)


def _finite(v: Vector | None) -> bool:
    return v is not None and all(math.isfinite(x) for x in v)


class CombinedEstimator:
    """The model, the calibration (None until `temalign calibrate` ran) and the trust rules."""

    def __init__(self, model: ModelEstimator, calibration: Calibration | None, estimator: EstimatorSettings,
                 quality: QualitySettings) -> None:
        self.model = model
        self.calibration = calibration
        self.settings = estimator
        self.quality_settings = quality
        card = model.card
        self.basis = nominal_calibration(float(card["c0_over_cf"]), float(card["wobble_fraction"]))
        self.remaps = card.get("geometry", "twin") == "twin"
        """A twin-trained model speaks the twin's geometry and is re-mapped through the column's
        calibration; a model trained on a column's own data already speaks that column's."""

    def measure(self, stack: WobbleStack) -> Measurement:
        """Estimate delta from one stack; never raises for a bad stack (it is a reason instead)."""
        quality = assess_stack(stack, self.quality_settings)
        if not quality.ok:
            return Measurement(quality, None, None, None, 0.0, False, "doubtful-stack",
                               "; ".join(quality.reasons))
        try:
            estimate = self.model.predict(stack.images)
        except (ValueError, ModelError) as error:
            return Measurement(quality, None, None, None, 0.0, False, "model-failed", str(error))
        model_delta: Vector | None = estimate.delta
        times = {"preprocess_ms": estimate.preprocess_ms, "inference_ms": estimate.inference_ms}
        if self.remaps and self.calibration is not None and _finite(model_delta):
            model_delta = remap(model_delta, self.basis, self.calibration)
        if not _finite(model_delta):
            return Measurement(quality, model_delta, None, None, 0.0, False, "model-failed",
                               f"the model's estimate is not finite: {model_delta}", **times)
        if self.settings.use == "model":
            return Measurement(quality, model_delta, None, model_delta, 0.5, True, "model-only",
                               "the model alone (estimator.use: model)", **times)
        if self.calibration is None:
            if self.settings.use == "classical":
                return Measurement(quality, model_delta, None, None, 0.0, False, "no-calibration",
                                   "estimator.use: classical needs a calibration (temalign calibrate)",
                                   **times)
            if self.settings.without_calibration == "model-only":
                return Measurement(quality, model_delta, None, model_delta, 0.5, True, "model-only",
                                   "no calibration: the model alone (estimator.without_calibration)", **times)
            return Measurement(quality, model_delta, None, model_delta, 0.0, False, "no-calibration",
                               "no calibration yet (temalign calibrate): measured, not moved", **times)
        t0 = time.perf_counter()
        try:
            classical = classical_estimate(stack, self.calibration, quality.frame_usable,
                                           quality.spots or None)
        except (ValueError, TemalignError) as error:
            classical = ClassicalEstimate(None, None, math.nan, 0, str(error))
        times["classical_ms"] = (time.perf_counter() - t0) * 1e3
        if not _finite(classical.delta):
            return Measurement(quality, model_delta, classical, None, 0.0, False, "classical-failed",
                               classical.reason or "the classical estimate is not finite", **times)
        if classical.residual_px > self.settings.classical_max_residual_px:
            return Measurement(quality, model_delta, classical, None, 0.0, False, "classical-failed",
                               f"the spot walk is not a line: rms residual {classical.residual_px:.2f} px "
                               f"(estimator.classical_max_residual_px "
                               f"{self.settings.classical_max_residual_px})", **times)
        if self.settings.use == "classical":
            return Measurement(quality, model_delta, classical, classical.delta, 0.5, True, "classical-only",
                               "the classical estimator alone (estimator.use: classical)", **times)
        gap = math.hypot(model_delta[0] - classical.delta[0], model_delta[1] - classical.delta[1])
        confidence = max(0.0, 1.0 - gap / self.settings.agreement_units)
        if gap > self.settings.agreement_units:
            return Measurement(quality, model_delta, classical, None, confidence, False, "disagree",
                               f"model and classical estimates differ by {gap:.1f} units "
                               f"(estimator.agreement_units {self.settings.agreement_units})", **times)
        return Measurement(quality, model_delta, classical, model_delta, confidence, True, "agree",
                           f"model and classical agree within {gap:.1f} units", **times)
