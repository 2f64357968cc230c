"""The classical estimator: where the spot is in each frame, against C1, through a 2x2 calibration.

To first order (twin.md) the spot centre walks linearly with the relative lens change
rho = c/c0 - 1, and the walk's slope is linear in the misalignment: slope = M @ (a - a*). M holds
everything a column adds (camera rotation, mirroring, magnification, Larmor rotation) and is
measured by two known aperture moves (estimate/calibration.py), so the correction is
delta = a* - a = -(M^-1 @ slope). The fit has a rho^2 term as well: it takes up the Larmor bend of
the walk (a few pixels at 240 units) so that the residual measures noise, and on a full symmetric
wobble it leaves the slope exactly that of the straight line.

`remap` carries a twin-trained model's delta (twin geometry) onto a column with its own M."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from temalign.durable import atomic_write
from temalign.estimate.spots import Spot
from temalign.frames import WobbleStack
from temalign.twin import optics
from temalign.wobble.report import measure_stack

CALIBRATION_NAME = "calibration.json"
MAX_CONDITION = 20.0
"""A calibration matrix more ill-conditioned than this amplifies centroid noise along one axis
past use: a rotation, a mirror and a magnification all have condition 1."""
MIN_FRAMES = 3
REFERENCE_WIDTH = 256
"""Residuals are quoted in pixels of a 256 px-wide image, whatever the camera."""
SOURCES = ("measured", "nominal (twin.md geometry)")


Matrix = tuple[tuple[float, float], tuple[float, float]]


def _check_matrix(matrix: Any) -> Matrix:
    """The matrix as a tuple of tuples of floats; ValueError when malformed, singular or
    ill-conditioned."""
    try:
        m = np.array(matrix, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"calibration matrix: not a 2x2 array of numbers ({error})") from None
    if m.shape != (2, 2):
        raise ValueError(f"calibration matrix: expected 2x2, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("calibration matrix: holds NaN or infinite values")
    singular = np.linalg.svd(m, compute_uv=False)
    if singular[1] <= 0.0 or singular[0] / singular[1] > MAX_CONDITION:
        cond = math.inf if singular[1] <= 0.0 else singular[0] / singular[1]
        raise ValueError(f"calibration matrix is singular or ill-conditioned (condition number {cond:.3g}, "
                         f"limit {MAX_CONDITION:g}): the two calibration moves did not give independent "
                         "walks; measure the calibration again")
    return ((float(m[0, 0]), float(m[0, 1])), (float(m[1, 0]), float(m[1, 1])))


def _finite(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"calibration {name}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"calibration {name}: expected a number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Calibration:
    """slope = M @ (a - a*): M maps motor units of misalignment to the spot's walk, FOV per unit rho
    (rho_k = c_k / c0 - 1). Valid around C1 = `c1`; `wobble_fraction` is the wobble it was measured
    with; `residual_fov` the worst straight-line residual of the measuring wobbles."""

    matrix: Matrix
    wobble_fraction: float
    c1: float
    measured_at: str
    source: str
    residual_fov: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", _check_matrix(self.matrix))
        _finite("wobble_fraction", self.wobble_fraction, positive=True)
        _finite("c1", self.c1, positive=True)
        _finite("residual_fov", self.residual_fov)
        if not isinstance(self.measured_at, str) or not self.measured_at:
            raise ValueError(f"calibration measured_at: expected an ISO time, got {self.measured_at!r}")
        if self.source not in SOURCES:
            raise ValueError(f"calibration source: expected one of {SOURCES}, got {self.source!r}")

    @property
    def array(self) -> np.ndarray:
        return np.array(self.matrix, dtype=float)

    def to_json(self) -> dict:
        return {"matrix": [list(row) for row in self.matrix], "wobble_fraction": self.wobble_fraction,
                "c1": self.c1, "measured_at": self.measured_at, "source": self.source,
                "residual_fov": self.residual_fov}

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        """Parse what `to_json` wrote; ValueError naming the bad or missing field."""
        if not isinstance(data, dict):
            raise ValueError(f"calibration: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("matrix", "wobble_fraction", "c1", "measured_at", "source") if k not in data]
        if missing:
            raise ValueError(f"calibration: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - {"matrix", "wobble_fraction", "c1", "measured_at", "source",
                                      "residual_fov"})
        if unknown:
            raise ValueError(f"calibration: unknown field(s) {', '.join(unknown)}")
        matrix = data["matrix"]
        if (not isinstance(matrix, list) or len(matrix) != 2
                or not all(isinstance(row, list) and len(row) == 2 for row in matrix)):
            raise ValueError(f"calibration matrix: expected [[a, b], [c, d]], got {matrix!r}")
        for row in matrix:
            for v in row:
                _finite("matrix", v)
        return cls(matrix=(tuple(matrix[0]), tuple(matrix[1])),  # type: ignore[arg-type]
                   wobble_fraction=data["wobble_fraction"], c1=data["c1"], measured_at=data["measured_at"],
                   source=data["source"], residual_fov=data.get("residual_fov", 0.0))


def save_calibration(state_dir: str | Path, calibration: Calibration) -> Path:
    """Write `state_dir/calibration.json` atomically (a kill leaves the old file or the new one)."""
    path = Path(state_dir) / CALIBRATION_NAME
    text = json.dumps(calibration.to_json(), indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))
    return path


def load_calibration(state_dir: str | Path) -> Calibration | None:
    """The saved calibration; None when there is none; ValueError (naming the file) when corrupt."""
    path = Path(state_dir) / CALIBRATION_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); measure the calibration again "
                         "(temalign calibrate) or remove the file") from error
    try:
        return Calibration.from_json(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _rho(c1_values: Sequence[float], c0: float) -> np.ndarray:
    return np.asarray(c1_values, dtype=float) / c0 - 1.0


def nominal_calibration(c0_over_cf: float = 1.0, wobble_fraction: float = 0.03,
                        c1: float = 1.2) -> Calibration:
    """M of twin.md's geometry, for the wobble c_k = c0 (1 + w (k - 3) / 3) around c0 = c0_over_cf c_f.

    p_k = g_k D R(theta(u_k)) m / 1000 with u_k = (c0/c_f)(1 + rho_k) - 1, g_k = u_k / 0.03. The
    straight-line slope over the wobble is linear in m, so M is that slope taken exactly, frame by
    frame: sum_k (rho_k - mean) g_k D R(theta(u_k)) / 1000 / sum_k (rho_k - mean)^2. To first order
    M = (c0/c_f) / 0.03 * D * R(theta(c0/c_f - 1)) / 1000, plus the (c0/c_f - 1) * dtheta/du turn of
    an uncentred wobble, which is why it is computed rather than written down."""
    ratio = _finite("c0_over_cf", c0_over_cf, positive=True)
    rho = _rho(optics.wobble_values(1.0, wobble_fraction), 1.0)
    centred = rho - rho.mean()
    total = np.zeros((2, 2))
    for r, weight in zip(rho, centred, strict=True):
        u = ratio * (1.0 + r) - 1.0
        total += weight * (u / optics.WOBBLE_UNIT) * optics.D_FOV * optics.rotation(optics.larmor_angle(u))
    matrix = total / 1000.0 / float(np.sum(centred**2))
    return Calibration(matrix=matrix.tolist(), wobble_fraction=wobble_fraction, c1=c1,  # type: ignore[arg-type]
                       measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
                       source="nominal (twin.md geometry)")


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


@dataclass(frozen=True)
class Walk:
    """The fitted walk of one stack: slope (FOV per unit rho), rms residual (FOV), frames used."""

    slope: np.ndarray
    residual_fov: float
    frames: int


def fit_walk_rho(stack: WobbleStack, usable: Sequence[bool] | None = None,
                 spots: Sequence[Spot] | None = None, min_frames: int = MIN_FRAMES) -> Walk | str:
    """Centroids of the usable frames against rho, fitted as p0 + slope rho (+ q rho^2 with 5 or
    more frames); a string says why there is no fit. `spots`: the frames' spots when already
    measured (StackQuality.spots). `min_frames` 2 serves the two-frame check, whose line has no
    residual to judge it by."""
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
    if len(keep) < min_frames:
        return f"only {len(keep)} frame(s) show a usable spot; at least {min_frames} are needed"
    rho = _rho([stack.c1_values[k] for k in keep], c0)
    xy = np.array([spots[k].centre for k in keep], dtype=float)
    columns = [np.ones_like(rho), rho]
    if len(keep) >= 5:
        columns.append(rho**2)
    design = np.column_stack(columns)
    if np.linalg.matrix_rank(design) < design.shape[1]:
        return "the usable frames do not span distinct C1 values"
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    residual = xy - design @ coef
    rms = float(math.sqrt(float(np.mean(np.sum(residual**2, axis=1)))))
    return Walk(coef[1].astype(float), rms, len(keep))


def classical_estimate(stack: WobbleStack, calibration: Calibration,
                       usable: Sequence[bool] | None = None,
                       spots: Sequence[Spot] | None = None,
                       min_frames: int = MIN_FRAMES) -> ClassicalEstimate:
    """delta = -(M^-1 @ slope) from the spot's walk over the usable frames (all frames with a spot
    when `usable` is None). M is scaled by c0 / calibration.c1: the walk per unit rho grows with
    c0 / c_f, so a C1 moved a little since the calibration is still served."""
    walk = fit_walk_rho(stack, usable, spots, min_frames)
    if isinstance(walk, str):
        return ClassicalEstimate(None, None, math.nan, 0, walk)
    residual_px = walk.residual_fov * REFERENCE_WIDTH
    slope = (float(walk.slope[0]), float(walk.slope[1]))
    m = calibration.array * (float(stack.c1_before) / calibration.c1)
    delta = -np.linalg.solve(m, walk.slope)
    if not np.isfinite(delta).all():
        return ClassicalEstimate(None, slope, residual_px, walk.frames, "the estimate is not finite")
    return ClassicalEstimate((float(delta[0]), float(delta[1])), slope, residual_px, walk.frames, None)


def remap(delta_model: tuple[float, float], basis: Calibration, column: Calibration) -> tuple[float, float]:
    """A delta in `basis`'s geometry (a twin-trained model's: nominal_calibration) as the column
    needs it: the same walk of the spot, slope = -M_basis delta_model = -M_column delta_column."""
    walk = basis.array @ np.asarray(delta_model, dtype=float)
    out = np.linalg.solve(column.array, walk)
    return float(out[0]), float(out[1])
