"""The classical estimator's calibration: the 2 x 2 matrix M that maps a misalignment (motor
units) to the spot's walk (FOV per unit of relative lens change), its file in the state directory,
and the nominal M of twin.md's geometry (what a twin-trained model's output is expressed in).

M is measured on the column by two known aperture moves (service/calibrate.py)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from temalign import optics
from temalign.durable import atomic_write
from temalign.values import JsonObject, finite_float

CALIBRATION_NAME = "calibration.json"
MAX_CONDITION = 20.0
"""A calibration matrix more ill-conditioned than this amplifies centroid noise along one axis
past use: a rotation, a mirror and a magnification all have condition 1."""
SOURCES = ("measured", "measured by the model", "nominal (twin.md geometry)")


Matrix = tuple[tuple[float, float], tuple[float, float]]


def check_matrix(matrix: object) -> Matrix:
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


def _number(name: str, value: object, *, positive: bool = False) -> float:
    number = finite_float(value)
    if number is None:
        raise ValueError(f"calibration {name}: expected a finite number, got {value!r}")
    if positive and number <= 0:
        raise ValueError(f"calibration {name}: expected a number > 0, got {value!r}")
    return number


@dataclass(frozen=True)
class Calibration:
    """slope = M @ (a - a*): M maps motor units of misalignment to the spot's walk, FOV per unit rho
    (rho_k = c_k / c0 - 1). Valid around C1 = `c1`; `wobble_fraction` is the wobble it was measured
    with; `residual_fov` the worst straight-line residual of the measuring wobbles; `settle_s` the
    lens settle time of those wobbles (None: not recorded, as in files before 0.2 and the nominal
    calibration), since a walk measured before the lens settled is a shorter walk."""

    matrix: Matrix
    wobble_fraction: float
    c1: float
    measured_at: str
    source: str
    residual_fov: float = 0.0
    settle_s: float | None = None
    model_matrix: Matrix | None = None
    """The model's own matrix, measured on the same calibration wobbles (None: not measured), for
    the model file `model_fingerprint` names. For a spot model, its own M: the walk through its
    spots against the moves, used as `matrix` is (Calibration.correction). For a delta model, A:
    delta (motor units, this column) = A @ its output, A = s R, R the remap of a twin-trained
    model's output through M (rotation, mirror) and s the scale fitted from its answers and the
    known moves; the remap alone is wrong wherever the model's output does not scale with the
    walk (a model that reads the walk against the disc's size does not see a column's
    magnification, and the remap then divides by it: 1.43 x at magnification 0.7)."""
    model_fingerprint: str | None = None
    """ModelEstimator.fingerprint of the model A was measured for; another model ignores A."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", check_matrix(self.matrix))
        if self.model_matrix is not None:
            object.__setattr__(self, "model_matrix", check_matrix(self.model_matrix))
            if not isinstance(self.model_fingerprint, str) or not self.model_fingerprint:
                raise ValueError("calibration model_fingerprint: a model_matrix needs the fingerprint of "
                                 f"its model, got {self.model_fingerprint!r}")
        _number("wobble_fraction", self.wobble_fraction, positive=True)
        _number("c1", self.c1, positive=True)
        _number("residual_fov", self.residual_fov)
        if not isinstance(self.measured_at, str) or not self.measured_at:
            raise ValueError(f"calibration measured_at: expected an ISO time, got {self.measured_at!r}")
        if self.source not in SOURCES:
            raise ValueError(f"calibration source: expected one of {SOURCES}, got {self.source!r}")
        if self.settle_s is not None:
            object.__setattr__(self, "settle_s", _number("settle_s", self.settle_s))

    def unfit_for(self, settle_s: float) -> str | None:
        """Why this calibration must not serve wobbles that settle `settle_s` (None: it may): the
        walk it measured depends on how far the lens had settled at each frame."""
        if self.settle_s is None or math.isclose(self.settle_s, settle_s, rel_tol=1e-9, abs_tol=1e-9):
            return None
        return (f"the calibration was measured with wobble.settle_s {self.settle_s:g} s, the config now "
                f"says {settle_s:g} s: its walks do not hold for these wobbles; calibrate again "
                "(temalign calibrate)")

    @property
    def array(self) -> np.ndarray:
        return np.array(self.matrix, dtype=float)

    def correction(self, slope: np.ndarray, c1_before: float, matrix: Matrix | None = None) -> np.ndarray:
        """delta = -(M^-1 slope) for a walk `slope` (FOV per unit rho) wobbled around `c1_before`.
        M is scaled by c1_before / c1: the walk per unit rho grows with c0 / c_f, so a C1 moved a
        little since the calibration is still served. `matrix`: an estimator's own M measured on
        the same calibration wobbles (a spot model's), instead of the classical one."""
        m = np.array(self.matrix if matrix is None else matrix, dtype=float) * (float(c1_before) / self.c1)
        out: np.ndarray = -np.linalg.solve(m, np.asarray(slope, dtype=float))
        return out

    def to_json(self) -> JsonObject:
        return {"matrix": [list(row) for row in self.matrix], "wobble_fraction": self.wobble_fraction,
                "c1": self.c1, "measured_at": self.measured_at, "source": self.source,
                "residual_fov": self.residual_fov, "settle_s": self.settle_s,
                **({} if self.model_matrix is None else {
                    "model_matrix": [list(row) for row in self.model_matrix],
                    "model_fingerprint": self.model_fingerprint})}

    @classmethod
    def from_json(cls, data: object) -> Calibration:
        """Parse what `to_json` wrote; ValueError naming the bad or missing field."""
        if not isinstance(data, dict):
            raise ValueError(f"calibration: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("matrix", "wobble_fraction", "c1", "measured_at", "source") if k not in data]
        if missing:
            raise ValueError(f"calibration: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - {"matrix", "wobble_fraction", "c1", "measured_at", "source",
                                      "residual_fov", "settle_s", "model_matrix", "model_fingerprint"})
        if unknown:
            raise ValueError(f"calibration: unknown field(s) {', '.join(unknown)}")
        model_matrix = data.get("model_matrix")
        return cls(matrix=_parse_matrix("matrix", data["matrix"]),
                   wobble_fraction=data["wobble_fraction"], c1=data["c1"], measured_at=data["measured_at"],
                   source=data["source"], residual_fov=data.get("residual_fov", 0.0),
                   settle_s=data.get("settle_s"),
                   model_matrix=None if model_matrix is None else _parse_matrix("model_matrix", model_matrix),
                   model_fingerprint=data.get("model_fingerprint"))


def _parse_matrix(name: str, matrix: object) -> Matrix:
    """[[a, b], [c, d]] of finite numbers as a Matrix; ValueError naming the field."""
    if (not isinstance(matrix, list) or len(matrix) != 2
            or not all(isinstance(row, list) and len(row) == 2 for row in matrix)):
        raise ValueError(f"calibration {name}: expected [[a, b], [c, d]], got {matrix!r}")
    rows = [tuple(_number(name, v) for v in row) for row in matrix]
    return ((rows[0][0], rows[0][1]), (rows[1][0], rows[1][1]))


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


def nominal_calibration(c0_over_cf: float = 1.0, wobble_fraction: float = 0.03,
                        c1: float = 1.2) -> Calibration:
    """M of twin.md's geometry, for the wobble c_k = c0 (1 + w (k - 3) / 3) around c0 = c0_over_cf c_f.

    p_k = g_k D R(theta(u_k)) m / 1000 with u_k = (c0/c_f)(1 + rho_k) - 1, g_k = u_k / 0.03. The
    straight-line slope over the wobble is linear in m, so M is that slope taken exactly, frame by
    frame: sum_k (rho_k - mean) g_k D R(theta(u_k)) / 1000 / sum_k (rho_k - mean)^2. To first order
    M = (c0/c_f) / 0.03 * D * R(theta(c0/c_f - 1)) / 1000, plus the (c0/c_f - 1) * dtheta/du turn of
    an uncentred wobble, which is why it is computed rather than written down."""
    ratio = _number("c0_over_cf", c0_over_cf, positive=True)
    rho = optics.wobble_values(1.0, wobble_fraction) - 1.0
    centred = rho - rho.mean()
    total = np.zeros((2, 2))
    for r, weight in zip(rho, centred, strict=True):
        u = ratio * (1.0 + r) - 1.0
        total += weight * (u / optics.WOBBLE_UNIT) * optics.D_FOV * optics.rotation(optics.larmor_angle(u))
    matrix = total / 1000.0 / float(np.sum(centred**2))
    return Calibration(matrix=matrix.tolist(), wobble_fraction=wobble_fraction, c1=c1,
                       measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
                       source="nominal (twin.md geometry)")
