"""Measuring the classical estimator's calibration on a live column: two known aperture moves.

Three wobbles: at the start position (walk s0), `step` units along +x (s1) and along +y (s2). The
walk is linear in the misalignment, so M @ [d1 d2] = [s1 - s0, s2 - s0] with d1, d2 the
displacements the motor actually made (read back, not assumed). The aperture is a tool's to move
here (docs/safety.md, "Tools"), so it goes back to where it started whatever ends the calibration; C1
is the wobble's to restore."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from temalign.clock import Clock
from temalign.config.schema import QualitySettings, WobbleSettings
from temalign.errors import TemalignError
from temalign.estimate.calibration import Calibration, Matrix, check_matrix
from temalign.estimate.model_estimator import ModelError, ModelEstimator
from temalign.estimate.quality import assess_stack
from temalign.estimate.walk import Walk, fit_walk
from temalign.microscope import Microscope, Position
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import ImageSource
from temalign.wobble.stack import wobble

MOTOR_TOLERANCE_UNITS = 5.0
"""A read-back this far from the target means the motor did not get there (noise 0.5, backlash 2)."""
MAX_RESIDUAL_FOV = 3.0 / 256
"""A walk that strays more than 3 px (at 256 px) rms from its fit is not a clean measurement."""
STEP_RANGE = (10.0, 500.0)
MAX_MODEL_MISFIT = 0.25
"""The model's answers on the calibration wobbles must follow the known moves this well (relative)
for its output to be calibrated; else it is re-mapped through M as before."""
RETURN_ATTEMPTS = 3
RETURN_BACKOFF_S = 0.5


class CalibrationError(TemalignError):
    """The calibration was refused or failed; the message says why and where the aperture is."""


class ApertureNotRestored(CalibrationError):
    """The aperture could not be put back where the calibration started: it may be off."""

    exit_status = 3


def _reached(microscope: Microscope, target: Position, what: str) -> Position:
    at = microscope.aperture()
    if max(abs(at.x - target.x), abs(at.y - target.y)) > MOTOR_TOLERANCE_UNITS:
        raise CalibrationError(f"{what}: the aperture was sent to ({target.x}, {target.y}) but reads "
                               f"({at.x}, {at.y}); the motor did not reach its target")
    return at


def _return(microscope: Microscope, start: Position, clock: Clock) -> str | None:
    """Move back to `start` and check it; None when done, else what went wrong."""
    problems: list[str] = []
    for attempt in range(1, RETURN_ATTEMPTS + 1):
        try:
            microscope.move_aperture(start)
            _reached(microscope, start, "return to the start")
            return None
        except Exception as error:  # any failure: try again, the client reconnects by itself
            problems.append(f"attempt {attempt}: {type(error).__name__}: {error}")
        if attempt < RETURN_ATTEMPTS:
            clock.sleep(RETURN_BACKOFF_S * attempt)
    return "; ".join(problems)


def calibrate(microscope: Microscope, source: ImageSource, *, wobble_settings: WobbleSettings,
              quality_settings: QualitySettings, clock: Clock, memory: C1Memory, step_units: float = 60.0,
              progress: Callable[[str], None] | None = None, model: ModelEstimator | None = None
              ) -> Calibration:
    """Measure M at the present aperture position and C1 (see module doc). Refuses (CalibrationError)
    on a doubtful stack, a walk that does not fit a line, a motor that does not reach its target
    or an ill-conditioned matrix. The aperture ends where it started in every case; if it cannot be
    put back, ApertureNotRestored says where it is."""
    if not (isinstance(step_units, int | float) and STEP_RANGE[0] <= step_units <= STEP_RANGE[1]):
        raise CalibrationError(f"step_units must be in [{STEP_RANGE[0]:g}, {STEP_RANGE[1]:g}], "
                               f"got {step_units!r}")
    say = progress or (lambda _text: None)
    step = round(step_units)
    start = microscope.aperture()
    c0 = microscope.c1()
    say(f"calibration at aperture ({start.x}, {start.y}), C1 = {c0:.6g}, steps of {step} units")

    answers: list[tuple[float, float] | None] = []

    def measure(label: str) -> Walk:
        stack = wobble(microscope, source, fraction=wobble_settings.fraction,
                       settle_s=wobble_settings.settle_s, clock=clock, memory=memory,
                       restore_attempts=wobble_settings.restore_attempts,
                       saturation_abort_fraction=quality_settings.saturation_abort_fraction)
        quality = assess_stack(stack, quality_settings)
        if not quality.ok:
            raise CalibrationError(f"wobble {label}: doubtful stack ({'; '.join(quality.reasons)})")
        walk = fit_walk(stack, quality.frame_usable)
        if isinstance(walk, str):
            raise CalibrationError(f"wobble {label}: no walk ({walk})")
        if walk.residual_fov > MAX_RESIDUAL_FOV:
            raise CalibrationError(f"wobble {label}: the spots stray {walk.residual_fov * 256:.1f} px (at "
                                   f"256 px) from their fitted walk, above {MAX_RESIDUAL_FOV * 256:.0f} px")
        say(f"wobble {label}: walk ({walk.slope[0]:+.4f}, {walk.slope[1]:+.4f}) FOV per unit rho, "
            f"residual {walk.residual_fov * 256:.2f} px")
        answers.append(_model_answer(model, stack.images))
        return walk

    walks: list[Walk] = []
    displacements: list[np.ndarray] = []
    failure: BaseException | None = None
    try:
        walks.append(measure("at the start"))
        for axis, (dx, dy) in (("x", (step, 0)), ("y", (0, step))):
            target = Position(start.x + dx, start.y + dy)
            microscope.move_aperture(target)
            at = _reached(microscope, target, f"step along {axis}")
            displacements.append(np.array([at.x - start.x, at.y - start.y], dtype=float))
            walks.append(measure(f"after +{step} units in {axis}"))
            microscope.move_aperture(start)
            _reached(microscope, start, f"return after the step along {axis}")
    except BaseException as error:  # KeyboardInterrupt included: the aperture goes back first
        failure = error

    problem = _return(microscope, start, clock)
    if problem is not None:
        what = f"the calibration failed ({type(failure).__name__}: {failure}) and " if failure else ""
        raise ApertureNotRestored(f"{what}the aperture could not be put back to ({start.x}, {start.y}): "
                                  f"{problem}. Check it and move it back by hand") from failure
    if failure is not None:
        if isinstance(failure, CalibrationError):
            raise CalibrationError(f"{failure}; aperture back at ({start.x}, {start.y})") from failure
        raise failure
    say(f"aperture back at ({start.x}, {start.y})")

    walk_change = np.column_stack([walks[1].slope - walks[0].slope, walks[2].slope - walks[0].slope])
    moves = np.column_stack(displacements)
    if abs(np.linalg.det(moves)) < 0.25 * step * step:
        raise CalibrationError(f"the two moves {displacements[0].tolist()} and {displacements[1].tolist()} "
                               "are not independent; the motor does not move as commanded")
    matrix = walk_change @ np.linalg.inv(moves)
    model_matrix, why_not = (None, None) if model is None else _model_matrix(answers, moves, matrix, model)
    if why_not is not None:
        say(f"the model's output is not calibrated ({why_not}): it is re-mapped through M instead")
    try:
        calibration = Calibration(matrix=matrix.tolist(), wobble_fraction=wobble_settings.fraction,
                                  c1=c0, measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
                                  source="measured", residual_fov=max(w.residual_fov for w in walks),
                                  settle_s=wobble_settings.settle_s, model_matrix=model_matrix,
                                  model_fingerprint=None if model_matrix is None or model is None
                                  else model.fingerprint)
    except ValueError as error:
        raise CalibrationError(f"refused: {error}") from error
    scale = math.sqrt(abs(np.linalg.det(matrix)))
    angle = math.degrees(math.atan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1]))
    say(f"calibration: |M| = {scale:.5f} FOV per unit rho per motor unit, rotation {angle:+.1f} deg, "
        f"{'mirrored' if np.linalg.det(matrix) < 0 else 'not mirrored'}")
    if calibration.model_matrix is not None:
        a = np.array(calibration.model_matrix)
        say(f"the model's output: scale {math.sqrt(abs(np.linalg.det(a))):.3f}, "
            f"{'mirrored' if np.linalg.det(a) < 0 else 'not mirrored'} on this column")
    return calibration


def _model_answer(model: ModelEstimator | None, images: np.ndarray) -> tuple[float, float] | None:
    """The model's own output for one calibration stack (None: no model, or it could not say)."""
    if model is None:
        return None
    try:
        delta = model.predict(images).delta
    except (ValueError, ModelError):
        return None
    return delta if all(map(math.isfinite, delta)) else None


def _model_matrix(answers: list[tuple[float, float] | None], moves: np.ndarray, matrix: np.ndarray,
                  model: ModelEstimator) -> tuple[Matrix | None, str | None]:
    """A = s R: R the geometry the model's output needs on this column (a twin-trained model's
    remap through M: the rotation and the mirror), s the one scale the remap misses, fitted so
    that A @ (answer after a move - answer at the start) = -(the move) for both moves (delta =
    a* - a falls by what the aperture moved). One parameter, not four: two 60-unit moves read by
    a model with a scene in the beam are not enough to measure a whole matrix well. None, and why,
    when the model's answers do not follow the moves."""
    if len(answers) != 3 or any(a is None for a in answers):
        return None, "the model gave no answer on a calibration stack"
    start, after_x, after_y = (np.asarray(a, dtype=float) for a in answers)
    changes = np.column_stack([after_x - start, after_y - start])
    geometry = model.output_geometry(matrix)
    mapped = geometry @ changes
    power = float(np.sum(mapped * mapped))
    if not power > 0.0:
        return None, "its answers did not change with the moves"
    scale = -float(np.sum(mapped * moves)) / power
    misfit = float(np.linalg.norm(scale * mapped + moves) / np.linalg.norm(moves))
    if not (scale > 0.0 and misfit <= MAX_MODEL_MISFIT):
        return None, (f"its answers follow the moves only to {100 * misfit:.0f} % (scale {scale:.3g}), "
                      f"more than {100 * MAX_MODEL_MISFIT:.0f} %")
    try:
        return check_matrix(scale * geometry), None
    except ValueError as error:
        return None, str(error)
