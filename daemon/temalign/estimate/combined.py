"""Both estimators on one stack, and the verdicts of decide/ on it: the stack's quality
(decide.stack) first, then the estimator-agreement gate (decide.trust).

The model's delta is re-mapped through the calibration (architecture.md: a twin-trained model
knows the twin's rotation and magnification; `remap` turns that into the column's), so one model
serves any column."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from temalign.config.schema import EstimatorSettings, QualitySettings
from temalign.decide.stack import DOUBTFUL_STACK
from temalign.decide.trust import MODEL_FAILED, ClassicalSays, Trust, agreement, model_verdict
from temalign.errors import TemalignError
from temalign.estimate.calibration import Calibration
from temalign.estimate.classical import ClassicalEstimate, classical_estimate
from temalign.estimate.model_estimator import ModelError, ModelEstimator
from temalign.estimate.quality import StackQuality, assess_stack
from temalign.frames import WobbleStack
from temalign.values import finite

Vector = tuple[float, float]


@dataclass(frozen=True)
class Measurement:
    """What one stack says: each estimator's delta, the one used, and why it is (not) trusted.

    `reason` is a stable code: decide.stack.DOUBTFUL_STACK or one of decide.trust's (agree,
    model_only, classical_only, no_calibration, model_failed, classical_failed, disagree)."""

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

    @classmethod
    def of(cls, quality: StackQuality, model_delta: Vector | None, classical: ClassicalEstimate | None,
           trust: Trust, **times: float) -> Measurement:
        return cls(quality, model_delta, classical, trust.delta, trust.confidence, trust.trusted,
                   trust.reason, trust.detail, **times)

    @property
    def misalignment(self) -> float | None:
        """|delta|, the estimated distance from alignment (units), when there is an estimate."""
        return None if self.delta is None else math.hypot(*self.delta)


class CombinedEstimator:
    """The model, the calibration (None until `temalign calibrate` ran) and the settings of the
    gates it asks."""

    def __init__(self, model: ModelEstimator, calibration: Calibration | None, estimator: EstimatorSettings,
                 quality: QualitySettings) -> None:
        self.model = model
        self.calibration = calibration
        self.settings = estimator
        self.quality_settings = quality
        self.remaps = model.twin_basis is not None
        """A twin-trained model speaks the twin's geometry and is re-mapped through the column's
        calibration; a model trained on a column's own data already speaks that column's."""

    def in_column_units(self, model_delta: Vector, calibration: Calibration) -> Vector:
        """The model's output as this column's delta: through the model matrix the calibration
        measured for this very model, else (a twin-trained model) re-mapped through M, else as
        it is (a model trained on this column's own data)."""
        if calibration.model_matrix is not None and calibration.model_fingerprint == self.model.fingerprint:
            a = np.array(calibration.model_matrix)
        else:
            a = self.model.output_geometry(calibration.array)
        out = a @ np.asarray(model_delta, dtype=float)
        return float(out[0]), float(out[1])

    def measure(self, stack: WobbleStack) -> Measurement:
        """Estimate delta from one stack; never raises for a bad stack (it is a reason instead)."""
        quality = assess_stack(stack, self.quality_settings)
        if not quality.ok:
            return Measurement(quality, None, None, None, 0.0, False, DOUBTFUL_STACK,
                               "; ".join(quality.reasons))
        try:
            estimate = self.model.predict(stack.images)
        except (ValueError, ModelError) as error:
            return Measurement(quality, None, None, None, 0.0, False, MODEL_FAILED, str(error))
        model_delta: Vector = estimate.delta
        times = {"preprocess_ms": estimate.preprocess_ms, "inference_ms": estimate.inference_ms}
        if self.calibration is not None and finite(*model_delta):
            model_delta = self.in_column_units(model_delta, self.calibration)
        settings = self.settings
        verdict = model_verdict(model_delta, use=settings.use, calibrated=self.calibration is not None,
                                without_calibration=settings.without_calibration)
        if verdict is not None:
            return Measurement.of(quality, model_delta, None, verdict, **times)
        assert self.calibration is not None
        t0 = time.perf_counter()
        try:
            classical = classical_estimate(stack, self.calibration, quality.frame_usable,
                                           quality.spots or None)
        except (ValueError, TemalignError) as error:
            classical = ClassicalEstimate(None, None, math.nan, 0, str(error))
        times["classical_ms"] = (time.perf_counter() - t0) * 1e3
        said = ClassicalSays(classical.delta, classical.residual_px, classical.reason)
        verdict = agreement(model_delta, said, settings)
        return Measurement.of(quality, model_delta, classical, verdict, **times)
