"""Training and test stacks from the traced twin, widely randomised (issue 13): every column and
scene but the ones held out, wobbles of 1.5 to 4 %, c0 from 0.97 to 1.03 c_f, offsets to 400 units,
doses from 1/30 to 4x, cameras of 128 to 1024 px, the display path, astigmatism up to 0.5, hot
pixels on.

`draw_condition(..., wide=True)` (the spot network's training sets) goes further, since a network
must meet columns and scenes nobody named: half the stacks on a column drawn at random
(`random_column`: magnification, camera rotation, mirror, c_f, Larmor rotation, spherical
aberration, aperture size and contamination, emission and crossover size over wider ranges than the
named columns span), and every scene laid out at random (`random_layout`: where and at what angle
the specimen edge and the biprism wire cross the field, how strong the specimen, the shadow and
the fringes are). The held-out scene is never drawn; when that is `stigmated-holography`,
neither is a hologram under stigmated illumination.

Each stack comes with the labels a walk-space network needs and the column's own:

* `truth`: delta = a* - a, motor units (what the daemon must move);
* `centres`: each frame's true spot centre (the traced disc's intensity centroid), FOV, and
  `radii`, its equivalent radius;
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
from temalign_twin.columns import COLUMNS, REFERENCE, Column
from temalign_twin.model import Twin
from temalign_twin.scenes import SCENES
from temalign_twin.settings import NO_DRIFT, TwinSettings

CAMERAS = (128, 256, 512, 1024)
CAMERA_WEIGHTS = (0.2, 0.5, 0.22, 0.08)
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
    drawn_column: Column | None = None
    """A column drawn at random (named `column`), registered where the stack is taken."""
    layout: tuple[tuple[str, float], ...] = ()
    """Scene settings drawn at random (random_layout), over the named scene's."""
    texture_seed: int | None = None

    def overrides(self) -> dict[str, Any]:
        if self.drawn_column is not None:
            COLUMNS[self.drawn_column.name] = self.drawn_column
        layer = optics_overrides("traced", self.column, self.scene)
        if self.layout:
            layer["scene"] = {**layer.get("scene", {}), **dict(self.layout)}
        if self.texture_seed is not None:
            layer["specimen"] = {"texture_seed": self.texture_seed}
        layer["optics"] = {**layer["optics"], "ellipticity": self.ellipticity,
                           "ellipse_angle_deg": self.ellipse_angle_deg}
        layer["beam"] = {"electrons_per_s": TwinSettings().beam.electrons_per_s * self.dose}
        layer["camera"] = {"width": self.camera, "height": self.camera}
        layer["drift"] = {**NO_DRIFT["drift"], "beam_shift_start": self.beam_shift}
        return layer


HOLD_OUT_COLUMN = "quarter-turn-mirrored"
HOLD_OUT_SCENE = "biprism"
"""What the shipped spot network is trained without, to measure how it generalises
(docs/model-design.md says why these two)."""
TEXTURE_SEEDS = 24
"""Specimen textures per set (wide draws): each costs more than the stack's frames to make."""
STIGMATED_HOLOGRAPHY = "stigmated-holography"


def random_column(rng: np.random.Generator, name: str) -> Column:
    """A column no one named, over wider ranges than the named columns span."""
    c_f = float(rng.uniform(0.9, 1.6))
    harmonics: tuple[tuple[int, float, float], ...] = ()
    if rng.uniform() < 0.4:
        harmonics = ((2, float(rng.uniform(0.0, 0.04)), float(rng.uniform(-180, 180))),
                     (3, float(rng.uniform(0.0, 0.025)), float(rng.uniform(-180, 180))))
    return Column(name, "drawn at random for training", magnification=float(rng.uniform(0.6, 1.4)),
                  camera_rotation_deg=float(rng.uniform(-180.0, 180.0)), mirrored=bool(rng.uniform() < 0.5),
                  c_f=c_f, larmor_deg_per_unit=float(rng.uniform(50.0, 250.0)) / c_f,
                  cs_power_at_1000=float(rng.uniform(0.01, 0.045)),
                  aperture_radius_units=REFERENCE.aperture_radius_units * float(rng.uniform(0.8, 1.25)),
                  edge_harmonics=harmonics, emission_sigma_units=float(rng.uniform(250.0, 500.0)),
                  crossover_sigma_fov=float(math.exp(rng.uniform(math.log(0.0012), math.log(0.0085)))))


def random_layout(rng: np.random.Generator) -> tuple[tuple[str, float], ...]:
    """Where the scene's edge and wire lie and how strong each part is (a scene kind keeps its own
    parts: vacuum stays vacuum)."""
    def log_uniform(low: float, high: float) -> float:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))

    return (("edge_angle_deg", float(rng.uniform(-180, 180))),
            ("edge_offset_fov", float(rng.uniform(-0.15, 0.15))),
            ("edge_roughness_fov", float(rng.uniform(0.003, 0.03))),
            ("specimen_transmission", float(rng.uniform(0.3, 0.85))),
            ("specimen_contrast", float(rng.uniform(0.1, 0.6))),
            ("specimen_scale_fov", log_uniform(0.004, 0.03)),
            ("wire_angle_deg", float(rng.uniform(-180, 180))),
            ("wire_offset_fov", float(rng.uniform(-0.15, 0.15))),
            ("wire_width_fov", log_uniform(0.008, 0.05)),
            ("wire_shadow_transmission", float(rng.uniform(0, 0.15))),
            ("wire_fringe_amplitude", float(rng.uniform(0.1, 0.7))),
            ("wire_fringe_period_fov", log_uniform(0.008, 0.03)),
            ("hologram_fringe_contrast", float(rng.uniform(0.1, 0.6))),
            ("hologram_fringe_period_fov", log_uniform(0.006, 0.03)),
            ("hologram_overlap_fov", float(rng.uniform(0.05, 0.3))))


def draw_condition(rng: np.random.Generator, columns: Sequence[str], scenes: Sequence[str], *,
                   wide: bool = False, name: str = "drawn") -> Condition:
    """A random condition from the ranges of the module doc (`wide`: random columns for half the
    stacks and random scene layouts; `name` names a drawn column)."""
    radius = 400.0 * math.sqrt(float(rng.uniform()))
    phi = float(rng.uniform(0.0, 2.0 * math.pi))
    stigmated = rng.uniform() < 0.3
    scene = str(rng.choice(list(scenes)))
    drawn = random_column(rng, name) if wide and rng.uniform() < 0.5 else None
    layout = random_layout(rng) if wide else ()
    texture_seed = int(rng.integers(TEXTURE_SEEDS)) if wide else None
    if wide and STIGMATED_HOLOGRAPHY not in scenes and SCENES[scene].overrides.get("scene", {}).get(
            "kind") == "holography":
        stigmated = False  # the held-out combination
    ellipticity = float(rng.uniform(0.1, 0.5)) if stigmated else float(rng.uniform(0.0, 0.05))
    angle = float(rng.uniform(-90.0, 90.0))
    if "ellipticity" in SCENES[scene].overrides.get("optics", {}):
        # a stigmated scene is stigmated: its line foci inside the wobble, the long axis across the
        # wire for holography (the scene's own angle with the wire's, when the layout turns it)
        ellipticity = float(rng.uniform(0.3, 0.5))
        wire = dict(layout).get("wire_angle_deg", 90.0)
        angle = (wire + float(rng.normal(0.0, 10.0))) % 180.0 - 90.0 if wide else 0.0  # wire - 90, mod 180
    return Condition(
        column=drawn.name if drawn is not None else str(rng.choice(list(columns))), scene=scene,
        wobble=float(rng.uniform(0.015, 0.04)), c0_over_cf=float(rng.uniform(0.97, 1.03)),
        offset=(radius * math.cos(phi), radius * math.sin(phi)),
        dose=float(math.exp(rng.uniform(math.log(1 / 30), math.log(4.0)))),
        camera=int(rng.choice(CAMERAS, p=CAMERA_WEIGHTS)), display=bool(rng.uniform() < 0.25),
        ellipticity=ellipticity, ellipse_angle_deg=angle,
        beam_shift=(float(rng.normal(0.0, 0.02)), float(rng.normal(0.0, 0.02))),
        drawn_column=drawn, layout=layout, texture_seed=texture_seed)


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
    radii: np.ndarray
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
    frames, centres, radii = [], [], []
    for c in values:
        twin.set_c1(float(c))
        twin.advance(SETTLE_S)
        counts = twin.acquire()
        shown = display.to_display(counts, settings.display) if condition.display else counts
        frames.append(to_side(shown.astype(np.float64), side))
        spot = twin.truth()["spot"]
        centres.append(spot["centre"])
        radii.append(spot["radius"])
    truth = -np.asarray(twin.truth()["misalignment"], dtype=float)
    tau = (np.arange(len(values)) - 3) / 3.0
    centre_arr = np.asarray(centres, dtype=float)
    design = np.column_stack([tau, np.ones_like(tau)])
    (slope, intercept), *_ = np.linalg.lstsq(design, centre_arr, rcond=None)
    dtype = np.uint8 if condition.display else np.uint16
    limit = 255 if condition.display else 65535
    stack = np.clip(np.rint(np.stack(frames)), 0, limit).astype(dtype)
    return Sample(stack, (float(truth[0]), float(truth[1])), centre_arr, np.asarray(radii, dtype=float),
                  (float(slope[0]), float(slope[1])),
                  (float(intercept[0]), float(intercept[1])), np.asarray(values, dtype=float), condition)


def conditions(n: int, seed: int, *, hold_out_column: str | None = None, hold_out_scene: str | None = None,
               only_column: str | None = None, only_scene: str | None = None,
               wide: bool = False) -> list[Condition]:
    """The `n` conditions of a set: every column and scene but the held-out ones, or only the ones
    named (same seed, same set); `wide`: random columns and scene layouts too (draw_condition)."""
    columns = [only_column] if only_column else [c for c in COLUMNS if c != hold_out_column]
    scenes = [only_scene] if only_scene else [s for s in SCENES if s != hold_out_scene]
    unknown = [c for c in columns if c not in COLUMNS] + [s for s in scenes if s not in SCENES]
    if unknown:
        raise ValueError(f"unknown column or scene: {', '.join(unknown)}")
    rng = np.random.default_rng([seed, 13])
    return [draw_condition(rng, columns, scenes, wide=wide, name=f"drawn-{seed}-{i}") for i in range(n)]


def held_out_conditions(n: int, seed: int, *, column: str = HOLD_OUT_COLUMN,
                        scene: str = HOLD_OUT_SCENE) -> list[Condition]:
    """`n` conditions outside the training distribution: half on the held-out `column` in every
    scene (drawn with `seed`), half in the held-out `scene` on every column (`seed + 1`)."""
    half = n // 2
    return (conditions(half, seed, only_column=column)
            + conditions(n - half, seed + 1, only_scene=scene))


def stack_seed(seed: int, index: int) -> int:
    """The render seed of stack `index` of the set drawn with `seed`: the same stack on every run."""
    return seed * 100_003 + index


def traced_set(n: int, seed: int, *, side: int = 256, hold_out_column: str | None = None,
               hold_out_scene: str | None = None, only_column: str | None = None,
               only_scene: str | None = None, progress: Callable[[int, int], None] | None = None
               ) -> list[Sample]:
    """`n` samples (`conditions`, not wide), each rendered with its own seed."""
    out = []
    for i, condition in enumerate(conditions(n, seed, hold_out_column=hold_out_column,
                                             hold_out_scene=hold_out_scene, only_column=only_column,
                                             only_scene=only_scene)):
        out.append(take_stack(condition, seed=stack_seed(seed, i), side=side))
        if progress is not None:
            progress(i + 1, n)
    return out
