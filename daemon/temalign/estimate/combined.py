"""Both estimators on one stack, and the verdicts of decide/ on it: the stack's quality
(decide.stack), then the estimator-agreement gate (decide.trust), and the model alone where the
classical estimator cannot read the walk of a stack the quality gate passed
(decide.trust.model_alone).

A spot model (the default) reads each frame's spot; the walk through them (estimate/model_walk.py)
goes through the column's calibration like the classical estimator's centroids, with the model's
own M when `temalign calibrate` measured one for this very model file. A delta model's output is
calibrated by the model matrix measured for it, else re-mapped through M (a twin-trained model
knows the twin's rotation and magnification; the remap turns that into the column's)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from temalign.config.schema import EstimatorSettings, QualitySettings
from temalign.decide.stack import DOUBTFUL_STACK
from temalign.decide.trust import (
    CLASSICAL_FAILED,
    MODEL_FAILED,
    ClassicalSays,
    ModelSays,
    Trust,
    agreement,
    model_alone,
    model_verdict,
)
from temalign.errors import TemalignError
from temalign.estimate.calibration import Calibration, Matrix, nominal_calibration
from temalign.estimate.classical import REFERENCE_WIDTH, ClassicalEstimate, classical_estimate
from temalign.estimate.model_estimator import ModelError, ModelEstimator
from temalign.estimate.model_walk import ModelWalk, model_walk
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
    model_walk: ModelWalk | None = None
    """A spot model's walk and the frames it used (None for a delta model)."""

    @classmethod
    def of(cls, quality: StackQuality, model: ModelReading, classical: ClassicalEstimate | None,
           trust: Trust, classical_ms: float = 0.0) -> Measurement:
        return cls(quality, model.delta, classical, trust.delta, trust.confidence, trust.trusted,
                   trust.reason, trust.detail, model.preprocess_ms, model.inference_ms, classical_ms,
                   model.walk)

    @property
    def misalignment(self) -> float | None:
        """|delta|, the estimated distance from alignment (units), when there is an estimate."""
        return None if self.delta is None else math.hypot(*self.delta)


@dataclass(frozen=True)
class ModelReading:
    """What the model said of one stack: delta in this column's motor units (None: it could not
    say, `error` says why), a spot model's walk and self-assessment, and the time it took."""

    delta: Vector | None
    error: str | None = None
    walk: ModelWalk | None = None
    says: ModelSays | None = None
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0


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

    def in_column_units(self, model_delta: Vector, calibration: Calibration,
                        model: ModelEstimator | None = None) -> Vector:
        """`model`'s output (the live model's by default) as this column's delta: through the model
        matrix the calibration measured for this very model file, else (a twin-trained model)
        re-mapped through M, else as it is (a model trained on this column's own data)."""
        model = self.model if model is None else model
        own = self.model_matrix(calibration, model)
        a = np.array(own) if own is not None else model.output_geometry(calibration.array)
        out = a @ np.asarray(model_delta, dtype=float)
        return float(out[0]), float(out[1])

    def model_matrix(self, calibration: Calibration, model: ModelEstimator | None = None) -> Matrix | None:
        """The model matrix `temalign calibrate` measured for `model` (the live model by default),
        when it measured one for this very file; None otherwise: a spot model's walk then goes
        through the classical M, a delta model's output through the remap."""
        model = self.model if model is None else model
        if calibration.model_matrix is not None and calibration.model_fingerprint == model.fingerprint:
            return calibration.model_matrix
        return None

    def read(self, stack: WobbleStack, model: ModelEstimator | None = None) -> ModelReading:
        """`model`'s delta for one stack (the live model's by default; a candidate in shadow is read
        the same way, service.shadow); never raises: an error is a reason instead."""
        model = self.model if model is None else model
        try:
            if not model.reads_spots:
                estimate = model.predict(stack.images)
                delta: Vector = estimate.delta
                if self.calibration is not None and finite(*delta):
                    delta = self.in_column_units(delta, self.calibration, model)
                return ModelReading(delta, preprocess_ms=estimate.preprocess_ms,
                                    inference_ms=estimate.inference_ms)
            reading = model.read_spots(stack.images)
        except (ValueError, ModelError) as error:
            return ModelReading(None, str(error))
        times = (reading.preprocess_ms, reading.inference_ms)
        walked = model_walk(reading, stack.c1_values, stack.c1_before)
        if walked.walk is None:
            return ModelReading(None, walked.reason, walked, None, *times)
        calibration = self.calibration or nominal_calibration(1.0, stack.wobble_fraction, c1=stack.c1_before)
        try:
            out = calibration.correction(walked.walk.slope, stack.c1_before,
                                         self.model_matrix(calibration, model))
        except (ValueError, np.linalg.LinAlgError) as error:
            return ModelReading(None, f"the model's walk cannot be mapped: {error}", walked, None, *times)
        delta = (float(out[0]), float(out[1]))
        used = np.asarray(walked.used)
        says = ModelSays(delta, walked.frames, walked.walk.residual_fov * REFERENCE_WIDTH,
                         float(np.mean(reading.confidence[used])) if used.any() else 0.0)
        return ModelReading(delta, None, walked, says, *times)

    def measure(self, stack: WobbleStack) -> Measurement:
        """Estimate delta from one stack; never raises for a bad stack (it is a reason instead)."""
        quality = assess_stack(stack, self.quality_settings)
        if not quality.ok:  # docs/safety.md: nothing moves on a doubtful stack, the model alone neither
            return Measurement(quality, None, None, None, 0.0, False, DOUBTFUL_STACK,
                               "; ".join(quality.reasons))
        model = self.read(stack)
        if model.delta is None:
            failed = Trust(None, 0.0, False, MODEL_FAILED, model.error or "")
            return Measurement.of(quality, model, None, failed)
        settings = self.settings
        verdict = model_verdict(model.delta, use=settings.use, calibrated=self.calibration is not None,
                                without_calibration=settings.without_calibration)
        if verdict is not None:
            return Measurement.of(quality, model, None, verdict)
        assert self.calibration is not None
        t0 = time.perf_counter()
        try:
            classical = classical_estimate(stack, self.calibration, quality.frame_usable,
                                           quality.spots or None)
        except (ValueError, TemalignError) as error:
            classical = ClassicalEstimate(None, None, math.nan, 0, str(error))
        classical_ms = (time.perf_counter() - t0) * 1e3
        said = ClassicalSays(classical.delta, classical.residual_px, classical.reason)
        verdict = agreement(model.delta, said, settings)
        if verdict.reason == CLASSICAL_FAILED:
            verdict = model_alone(model.says, verdict.detail, settings=settings) or verdict
        return Measurement.of(quality, model, classical, verdict, classical_ms)
