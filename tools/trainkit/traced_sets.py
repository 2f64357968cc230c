"""Training and test stacks from the traced twin, widely randomised (issue 13): every column and
scene but the ones held out, wobbles of 1.5 to 4 %, c0 from 0.97 to 1.03 c_f, offsets to 400 units,
doses from 1/30 to 4x, cameras of 128 to 1024 px, the display path, astigmatism up to 0.5, hot
pixels on. Each stack comes with the labels a walk-space network needs and the column's own:

* `truth`: delta = a* - a, motor units (what the daemon must move);
* `centres`: each frame's true spot centre (the traced disc's intensity centroid), FOV;
* `walk`: the straight-line slope of those centres against tau_k = (k - 3) / 3, FOV per unit tau,
  with `intercept` (the focused spot): what the images show, independent of the column's motor
  geometry, which the daemon's calibration maps to motor units.

Stacks are stored at `side` px (block means of a larger camera, pixel repeats of a smaller one),
uint16 counts or uint8 display levels. Seeded: condition i of seed s is the same on every run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from temalign import optics
from temalign.clock import SteppedClock
from temalign_twin import display
from temalign_twin.cli import optics_overrides
from temalign_twin.columns import COLUMNS
from temalign_twin.model import Twin
from temalign_twin.scenes import SCENES
from temalign_twin.settings import NO_DRIFT, TwinSettings

CAMERAS = (128, 256, 512, 1024)
CAMERA_WEIGHTS = (0.2, 0.5, 0.2, 0.1)
"""Most stacks at the default camera; 1024 px frames cost 16 times as much to render."""
SETTLE_S = 3.0
"""Twice the twin's lens settle: the labels are those of a settled lens."""


@dataclass(frozen=True)
class Condition:
    """One stack's column, scene and acquisition."""

    column: str
    scene: str
    wobble: float
    c0_over_cf: float
    offset: tuple[float, float]
    dose: float
    camera: int
    display: bool
    ellipticity: float
    ellipse_angle_deg: float
    beam_shift: tuple[float, float]

    def overrides(self) -> dict[str, Any]:
        layer = optics_overrides("traced", self.column, self.scene)
        layer["optics"] = {**layer["optics"], "ellipticity": self.ellipticity,
                           "ellipse_angle_deg": self.ellipse_angle_deg}
        layer["beam"] = {"electrons_per_s": TwinSettings().beam.electrons_per_s * self.dose}
        layer["camera"] = {"width": self.camera, "height": self.camera}
        layer["drift"] = {**NO_DRIFT["drift"], "beam_shift_start": self.beam_shift}
        return layer


def draw_condition(rng: np.random.Generator, columns: Sequence[str], scenes: Sequence[str]) -> Condition:
    """A random condition from the ranges of the module doc."""
    radius = 400.0 * math.sqrt(float(rng.uniform()))
    phi = float(rng.uniform(0.0, 2.0 * math.pi))
    stigmated = rng.uniform() < 0.3
    return Condition(
        column=str(rng.choice(list(columns))), scene=str(rng.choice(list(scenes))),
        wobble=float(rng.uniform(0.015, 0.04)), c0_over_cf=float(rng.uniform(0.97, 1.03)),
        offset=(radius * math.cos(phi), radius * math.sin(phi)),
        dose=float(math.exp(rng.uniform(math.log(1 / 30), math.log(4.0)))),
        camera=int(rng.choice(CAMERAS, p=CAMERA_WEIGHTS)), display=bool(rng.uniform() < 0.25),
        ellipticity=float(rng.uniform(0.1, 0.5)) if stigmated else float(rng.uniform(0.0, 0.05)),
        ellipse_angle_deg=float(rng.uniform(-90.0, 90.0)),
        beam_shift=(float(rng.normal(0.0, 0.02)), float(rng.normal(0.0, 0.02))))


def to_side(frame: np.ndarray, side: int) -> np.ndarray:
    """A square frame at `side` px: block means when larger, pixel repeats when smaller."""
    n = frame.shape[0]
    if n == side:
        return frame
    if n > side:
        k = n // side
        return frame.reshape(side, k, side, k).mean(axis=(1, 3))
    k = side // n
    return np.repeat(np.repeat(frame, k, axis=0), k, axis=1)


@dataclass(frozen=True)
class Sample:
    stack: np.ndarray
    truth: tuple[float, float]
    centres: np.ndarray
    walk: tuple[float, float]
    intercept: tuple[float, float]
    c1_values: np.ndarray
    condition: Condition


def take_stack(condition: Condition, seed: int, side: int = 256) -> Sample:
    """The 7 frames of one wobble under `condition`, with its labels."""
    settings = TwinSettings().updated(condition.overrides())
    twin = Twin(settings, SteppedClock(), seed=seed)
    aligned = twin.aligned()
    twin.move_aperture(round(aligned[0] + condition.offset[0]), round(aligned[1] + condition.offset[1]))
    c0 = condition.c0_over_cf * settings.optics.c_f
    values = optics.wobble_values(c0, condition.wobble)
    frames, centres = [], []
    for c in values:
        twin.set_c1(float(c))
        twin.advance(SETTLE_S)
        counts = twin.acquire()
        shown = display.to_display(counts, settings.display) if condition.display else counts
        frames.append(to_side(shown.astype(np.float64), side))
        centres.append(twin.truth()["spot"]["centre"])
    truth = -np.asarray(twin.truth()["misalignment"], dtype=float)
    tau = (np.arange(len(values)) - 3) / 3.0
    centre_arr = np.asarray(centres, dtype=float)
    design = np.column_stack([tau, np.ones_like(tau)])
    (slope, intercept), *_ = np.linalg.lstsq(design, centre_arr, rcond=None)
    dtype = np.uint8 if condition.display else np.uint16
    limit = 255 if condition.display else 65535
    stack = np.clip(np.rint(np.stack(frames)), 0, limit).astype(dtype)
    return Sample(stack, (float(truth[0]), float(truth[1])), centre_arr, (float(slope[0]), float(slope[1])),
                  (float(intercept[0]), float(intercept[1])), np.asarray(values, dtype=float), condition)


def traced_set(n: int, seed: int, *, side: int = 256, hold_out_column: str | None = None,
               hold_out_scene: str | None = None, only_column: str | None = None,
               only_scene: str | None = None, progress: Callable[[int, int], None] | None = None
               ) -> list[Sample]:
    """`n` samples: every column and scene but the held-out ones, or only the ones named."""
    columns = [only_column] if only_column else [c for c in COLUMNS if c != hold_out_column]
    scenes = [only_scene] if only_scene else [s for s in SCENES if s != hold_out_scene]
    unknown = [c for c in columns if c not in COLUMNS] + [s for s in scenes if s not in SCENES]
    if unknown:
        raise ValueError(f"unknown column or scene: {', '.join(unknown)}")
    rng = np.random.default_rng([seed, 13])
    out = []
    for i in range(n):
        out.append(take_stack(draw_condition(rng, columns, scenes), seed=seed * 100_003 + i, side=side))
        if progress is not None:
            progress(i + 1, n)
    return out
