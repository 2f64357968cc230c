"""Measuring the calibration on a live column: four known aperture moves.

Five wobbles: at the start position (walk s0), then `step` units along +x, -x, +y and -y, back to
the start after each. The walk is linear in the misalignment to first order, so
M @ [d1 .. d4] = [s1 - s0 .. s4 - s0] with d_i the displacements the motor actually made (read back,
not assumed), solved by least squares. Moves in both directions make it a central difference: the
walk's curvature in the misalignment (a traced lens, a calibration started off axis) cancels, and
the noise of four walks averages.

The classical estimator's M comes from the centroids' walks; a spot model's own M (`model_matrix`,
tied to its file) from the walks through its spots on the same wobbles. Where the classical walks
cannot be measured (a specimen edge or the biprism defeats the centroid's thresholds) but the spot
model read every wobble confidently, its M serves both (source "measured by the model").

One move's wobble may be left out when neither estimator can read its walk (the spots stray from a
line: a hologram's fringes under line foci, a disc at the detector's edge): M has four unknowns, and
the other three moves still give six equations on independent directions. The start's wobble and a
doubtful stack (no beam, a saturated frame) are never left out: they say something is wrong.

The aperture is a tool's to move here (docs/safety.md, "Tools"), so it goes back to where it
started whatever ends the calibration; C1 is the wobble's to restore."""

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
from temalign.estimate.model_walk import model_walk
from temalign.estimate.quality import assess_stack
from temalign.estimate.walk import Walk, fit_walk
from temalign.frames import WobbleStack
from temalign.microscope import Microscope, Position
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import ImageSource
from temalign.wobble.stack import wobble

MOTOR_TOLERANCE_UNITS = 5.0
"""A read-back this far from the target means the motor did not get there (noise 0.5, backlash 2)."""
MAX_RESIDUAL_FOV = 3.0 / 256
"""A walk that strays more than 3 px (at 256 px) rms from its fit is not a clean measurement."""
STEP_RANGE = (10.0, 500.0)
DEFAULT_STEP_UNITS = 100.0
"""Long enough that a frame's few tenths of a pixel of noise are a per cent of the walk's change,
short enough that every disc stays on the detector of a column at magnification 1.3."""
MODEL_M_TOLERANCE = 0.1
"""A spot model's own M is kept only within this (relative) of the classical one: the same walk of
the same spot, measured twice; further apart, one of them misread the calibration's wobbles and the
classical M, which passed its line test on every wobble, serves both."""
MAX_MODEL_MISFIT = 0.25
"""The model's answers on the calibration wobbles must follow the known moves this well (relative)
for its output to be calibrated; else it is re-mapped through M as before."""
MIN_MODEL_FRAMES = 5
"""A spot model's calibration walk counts when it comes from this many confident frames."""
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
              quality_settings: QualitySettings, clock: Clock, memory: C1Memory,
              step_units: float = DEFAULT_STEP_UNITS,
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
    model_walks: list[Walk | None] = []
    classical: list[Walk | str] = []
    left_out: list[str] = []
    labels: list[str] = []

    def measure(label: str) -> None:
        stack = wobble(microscope, source, fraction=wobble_settings.fraction,
                       settle_s=wobble_settings.settle_s, clock=clock, memory=memory,
                       restore_attempts=wobble_settings.restore_attempts,
                       saturation_abort_fraction=quality_settings.saturation_abort_fraction)
        quality = assess_stack(stack, quality_settings)
        walk: Walk | str
        if quality.camera_risk:
            raise CalibrationError(f"wobble {label}: doubtful stack ({'; '.join(quality.reasons)})")
        if not quality.ok:
            walk = f"doubtful stack ({'; '.join(quality.reasons)})"
        else:
            walk = fit_walk(stack, quality.frame_usable)
            if isinstance(walk, str):
                walk = f"no walk ({walk})"
            elif walk.residual_fov > MAX_RESIDUAL_FOV:
                walk = (f"the spots stray {walk.residual_fov * 256:.1f} px (at 256 px) from their fitted "
                        f"walk, above {MAX_RESIDUAL_FOV * 256:.0f} px")
        classical.append(walk)
        labels.append(label)
        read = None
        if model is not None and model.reads_spots:
            read = _model_walk(model, stack)
            model_walks.append(read)
        else:
            answers.append(_model_answer(model, stack.images))
        if isinstance(walk, Walk):
            say(f"wobble {label}: walk ({walk.slope[0]:+.4f}, {walk.slope[1]:+.4f}) FOV per unit rho, "
                f"residual {walk.residual_fov * 256:.2f} px")
        elif read is None:
            if len(classical) == 1 or walk.startswith("doubtful") or left_out:
                raise CalibrationError(f"wobble {label}: {walk}")
            left_out.append(label)
            say(f"wobble {label}: {walk}; left out")
        else:
            say(f"wobble {label}: the classical estimator cannot measure it ({walk}); the model's walk "
                f"({read.slope[0]:+.4f}, {read.slope[1]:+.4f}) FOV per unit rho")

    displacements: list[np.ndarray] = []
    failure: BaseException | None = None
    try:
        measure("at the start")
        for axis, sign, (dx, dy) in (("x", "+", (step, 0)), ("x", "-", (-step, 0)),
                                     ("y", "+", (0, step)), ("y", "-", (0, -step))):
            target = Position(start.x + dx, start.y + dy)
            microscope.move_aperture(target)
            at = _reached(microscope, target, f"step along {sign}{axis}")
            displacements.append(np.array([at.x - start.x, at.y - start.y], dtype=float))
            measure(f"after {sign}{step} units in {axis}")
            microscope.move_aperture(start)
            _reached(microscope, start, f"return after the step along {sign}{axis}")
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

    all_moves = np.column_stack(displacements)
    singular = np.linalg.svd(all_moves, compute_uv=False)
    if singular[1] < 0.5 * step:
        raise CalibrationError(f"the moves {[d.tolist() for d in displacements]} are not independent; the "
                               "motor does not move as commanded")
    # the classical walks; else the model's where it read every one; else either with one move left out
    n = len(classical)
    kept = [i for i, w in enumerate(classical) if isinstance(w, Walk)]
    by_model = [i for i, w in enumerate(model_walks) if w is not None]
    measured_by = "measured"
    if len(kept) == n or (len(by_model) < n and len(kept) == n - 1 and 0 in kept):
        walks: list[Walk] = [w for w in classical if isinstance(w, Walk)]
    elif len(by_model) >= n - 1 and 0 in by_model:
        kept = by_model
        walks = [w for w in model_walks if w is not None]
        measured_by = "measured by the model"
        say("the classical walks could not all be measured: the model's M serves both estimators")
    else:
        why = next(w for w in classical if isinstance(w, str))
        raise CalibrationError(f"the spot walks cannot be measured ({why}); aperture back at "
                               f"({start.x}, {start.y})")
    moves = all_moves[:, [i - 1 for i in kept[1:]]]
    if len(kept) < n:
        dropped = next(i for i in range(n) if i not in kept)
        reading = classical[dropped]
        why = reading if isinstance(reading, str) else "the model read no confident walk"
        say(f"M from {len(kept) - 1} of {n - 1} moves: the wobble {labels[dropped]} left out ({why})")
    matrix = fit_matrix([w.slope for w in walks], moves)
    residual = max(w.residual_fov for w in walks)
    if model is None or measured_by != "measured":
        model_matrix, why_not = None, None
    elif model.reads_spots:
        model_matrix, why_not = _spot_model_matrix([model_walks[i] for i in kept], moves, matrix)
    else:
        model_matrix, why_not = _model_matrix([answers[i] for i in kept], moves, matrix, model)
    if why_not is not None:
        say(f"the model's output is not calibrated ({why_not}): it goes through the classical M instead")
    try:
        calibration = Calibration(matrix=matrix.tolist(), wobble_fraction=wobble_settings.fraction,
                                  c1=c0, measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
                                  source=measured_by, residual_fov=residual,
                                  settle_s=wobble_settings.settle_s, model_matrix=model_matrix,
                                  model_fingerprint=None if model_matrix is None or model is None
                                  else model.fingerprint)
    except ValueError as error:
        raise CalibrationError(f"refused: {error}") from error
    scale = math.sqrt(abs(np.linalg.det(matrix)))
    angle = math.degrees(math.atan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1]))
    say(f"calibration: |M| = {scale:.5f} FOV per unit rho per motor unit, rotation {angle:+.1f} deg, "
        f"{'mirrored' if np.linalg.det(matrix) < 0 else 'not mirrored'}")
    if calibration.model_matrix is not None and model is not None and model.reads_spots:
        a = np.array(calibration.model_matrix)
        say(f"the model's own M: |M| = {math.sqrt(abs(np.linalg.det(a))):.5f}, differs from the classical "
            f"one by {np.linalg.norm(a - matrix) / np.linalg.norm(matrix):.1%}")
    elif calibration.model_matrix is not None:
        a = np.array(calibration.model_matrix)
        say(f"the model's output: scale {math.sqrt(abs(np.linalg.det(a))):.3f}, "
            f"{'mirrored' if np.linalg.det(a) < 0 else 'not mirrored'} on this column")
    return calibration


def fit_matrix(slopes: list[np.ndarray], moves: np.ndarray) -> np.ndarray:
    """M from the walk at the start (slopes[0]) and after each move (moves' columns): least squares
    of the walk's change against the displacement."""
    changes = np.column_stack([s - slopes[0] for s in slopes[1:]])
    out: np.ndarray = changes @ moves.T @ np.linalg.inv(moves @ moves.T)
    return out


def _model_walk(model: ModelEstimator, stack: WobbleStack) -> Walk | None:
    """A spot model's confident walk on one calibration stack (None: it could not read one from
    MIN_MODEL_FRAMES frames within MAX_RESIDUAL_FOV)."""
    try:
        walked = model_walk(model.read_spots(stack.images), stack.c1_values, stack.c1_before)
    except (ValueError, ModelError):
        return None
    walk = walked.walk
    if walk is None or walk.frames < MIN_MODEL_FRAMES or walk.residual_fov > MAX_RESIDUAL_FOV:
        return None
    return walk


def _spot_model_matrix(walks: list[Walk | None], moves: np.ndarray,
                       classical: np.ndarray) -> tuple[Matrix | None, str | None]:
    """A spot model's own M from its walks on the calibration wobbles, as the classical M is
    measured from the centroids' (None, and why, when it could not read them all or its M is
    further than MODEL_M_TOLERANCE from the classical one)."""
    if len(walks) != moves.shape[1] + 1 or any(w is None for w in walks):
        return None, "the model read no confident walk on a calibration stack"
    own = fit_matrix([w.slope for w in walks if w is not None], moves)
    apart = float(np.linalg.norm(own - classical) / np.linalg.norm(classical))
    if apart > MODEL_M_TOLERANCE:
        return None, (f"its own M is {apart:.0%} from the classical one, more than "
                      f"{MODEL_M_TOLERANCE:.0%}")
    try:
        return check_matrix(own), None
    except ValueError as error:
        return None, str(error)


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
    that A @ (answer after a move - answer at the start) = -(the move) for every move (delta =
    a* - a falls by what the aperture moved). One parameter, not four: short moves read by
    a model with a scene in the beam are not enough to measure a whole matrix well. None, and why,
    when the model's answers do not follow the moves."""
    if len(answers) != moves.shape[1] + 1 or any(a is None for a in answers):
        return None, "the model gave no answer on a calibration stack"
    points = [np.asarray(a, dtype=float) for a in answers]
    changes = np.column_stack([p - points[0] for p in points[1:]])
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
