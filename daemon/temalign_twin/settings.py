"""Every knob of the digital twin, with a realistic default, a unit and a valid range.

The geometry of twin.md (D = 1.25 FOV, theta = 30 deg + 150 deg u, the spot radius law) is
normative and therefore not a knob; everything the rendering, the drift and the hardware do is.
Presets (twin/presets.py) are partial dicts of these fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from temalign.values import JsonObject
from temalign_twin.columns import COLUMNS, column

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Pair = tuple[float, float]


Ordered = TypeVar("Ordered", bound=tuple[float, float])


def _check_ordered(value: Ordered) -> Ordered:
    if value[0] > value[1]:
        raise ValueError(f"limits must be [low, high], got {list(value)}")
    return value


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OpticsSettings(_Knobs):
    model: Literal["first-order", "traced"] = "first-order"
    """How the disc is made: twin.md's first-order formulas (the default, what conformance checks)
    or the traced optics of a column (temalign_twin/traced.py), which departs from them as a real
    column does."""
    column: str = "reference"
    """The column (temalign_twin/columns.py) the traced optics trace; unused by first-order."""
    c_f: Annotated[float, Field(gt=0.1, lt=10.0)] = 1.2
    """C1 value (lens units) that images the C1 crossover on the detector: the smallest spot. With
    traced optics it is the column's, whatever is given (the column fixes where C1 focuses)."""
    ellipticity: Annotated[float, Field(ge=0.0, le=0.5)] = 0.03
    """Condenser astigmatism: the disc's semi-axes are r*k and r/k with k = sqrt((1 + e) / (1 - e))
    (about r(1 + e) and r(1 - e)), the same area as the circle. First-order: every disc has that
    shape. Traced: that is the disc at |g| = 1 on the strong side; the two axes focus at different
    currents, with line foci between (holography's elliptical illumination: up to 0.5)."""
    ellipse_angle_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = 25.0
    """Direction of the disc's long axis, degrees from +x towards +y (y points down); traced: on
    the strong side at |g| = 1 (it turns with the Larmor rotation and by 90 deg past the foci)."""

    @field_validator("column")
    @classmethod
    def _known_column(cls, value: str) -> str:
        try:
            column(value)
        except KeyError as error:
            raise ValueError(error.args[0]) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _column_focus(cls, data: Any) -> Any:
        """Traced optics focus where their column does: c_f follows the column."""
        if isinstance(data, dict) and data.get("model") == "traced":
            found = COLUMNS.get(str(data.get("column", "reference")))
            if found is not None:
                data = {**data, "c_f": found.c_f}
        return data


class BeamSettings(_Knobs):
    electrons_per_s: Annotated[float, Field(gt=0.0, le=1e12)] = 2.5e7
    """Total beam current on the detector, electrons per second (the dose knob)."""
    source_blur_fov: Annotated[float, Field(ge=0.0, le=0.05)] = 0.0015
    """Edge blur (Gaussian sigma, FOV) from the finite source size."""
    fringe_amplitude: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    """Relative amplitude of the Fresnel fringes just inside the disc edge (0 switches them off);
    scaled by (1 - 0.012 / r), so the focused spot (the crossover image) has none."""
    fringe_period_fov: Annotated[float, Field(gt=0.0, le=0.1)] = 0.015
    """Spacing of the first fringe, FOV (inner ones get closer, Fresnel-like, and blur away);
    about 4 px at 256 px, so the default camera shows the strong fringes the paper saw."""
    fringe_decay_fov: Annotated[float, Field(gt=0.0, le=0.2)] = 0.03
    """Distance inside the edge over which the fringes die out, FOV."""


class CameraSettings(_Knobs):
    width: Annotated[int, Field(ge=16, le=8192)] = 256
    height: Annotated[int, Field(ge=16, le=8192)] = 256
    exposure_s: Annotated[float, Field(gt=0.0, le=60.0)] = 0.1
    """Exposure when `camera.acquire` names none, seconds."""
    counts_per_electron: Annotated[float, Field(gt=0.0, le=1000.0)] = 1.0
    shot_noise: bool = True
    """Poisson noise on the electrons counted."""
    read_noise: Annotated[float, Field(ge=0.0, le=1000.0)] = 3.0
    """Gaussian read noise, counts rms."""
    dark_offset: Annotated[float, Field(ge=0.0, le=60000.0)] = 100.0
    """Counts every pixel reads with no beam."""
    saturation: Annotated[int, Field(ge=255, le=65535)] = 65535
    """Counts at which a pixel saturates (the uint16 ceiling by default)."""
    hot_pixel_fraction: Annotated[float, Field(ge=0.0, le=0.01)] = 1e-4
    """Fraction of pixels stuck at saturation."""


class SpecimenSettings(_Knobs):
    texture_contrast: Annotated[float, Field(ge=0.0, le=0.9)] = 0.15
    """Rms contrast of the amorphous-carbon-like texture that multiplies the illumination (0: no specimen)."""
    texture_scale_fov: Annotated[float, Field(gt=0.0, le=0.2)] = 0.006
    """Correlation length of the texture, FOV (the sigma of the Gaussian that smooths white noise)."""
    texture_seed: Annotated[int, Field(ge=0)] | None = None
    """Seed of the texture (None: the twin's own). Datasets of many one-stack twins reuse a few
    textures this way: a texture costs more to make than the stack's seven frames."""


class SceneSettings(_Knobs):
    """What the beam passes through below the condenser system (temalign_twin/scenes.py): fixed
    to the detector, multiplying the illumination. Angles from +x towards +y, distances in FOV
    from the detector's centre."""

    kind: Literal["specimen", "vacuum", "specimen-edge", "biprism", "holography"] = "specimen"
    """specimen: the `specimen` texture everywhere (twin.md's); vacuum: nothing; specimen-edge:
    half vacuum, half a strongly textured specimen; biprism: the wire's shadow; holography: both."""
    edge_angle_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = 10.0
    """Direction of the specimen edge's normal, pointing into the specimen."""
    edge_offset_fov: Annotated[float, Field(ge=-0.5, le=0.5)] = 0.03
    """Distance of the edge from the centre along its normal (positive: less specimen)."""
    edge_roughness_fov: Annotated[float, Field(ge=0.0, le=0.1)] = 0.012
    """Rms waviness of the edge."""
    specimen_transmission: Annotated[float, Field(ge=0.05, le=1.0)] = 0.55
    """Mean fraction of the beam the specimen passes (holography specimens: 40 to 70 %)."""
    specimen_contrast: Annotated[float, Field(ge=0.0, le=0.9)] = 0.35
    """Rms contrast of the specimen's texture past the edge (strong, unlike the carbon film's)."""
    specimen_scale_fov: Annotated[float, Field(gt=0.0, le=0.2)] = 0.01
    """Correlation length of that texture."""
    wire_angle_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = 90.0
    """Direction along the biprism wire (90: the wire runs along y)."""
    wire_offset_fov: Annotated[float, Field(ge=-0.5, le=0.5)] = -0.04
    """Distance of the wire's axis from the centre, along +x rotated by wire_angle_deg - 90."""
    wire_width_fov: Annotated[float, Field(gt=0.0, le=0.2)] = 0.02
    """Width of the wire's shadow."""
    wire_shadow_transmission: Annotated[float, Field(ge=0.0, le=1.0)] = 0.03
    """What is left in the shadow (electrons scattered back into the aperture)."""
    wire_fringe_amplitude: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    """Relative brightness of the first Fresnel fringe outside each edge of the shadow."""
    wire_fringe_period_fov: Annotated[float, Field(gt=0.0, le=0.1)] = 0.016
    """Spacing of the first fringes outside the shadow's edge (later ones get closer)."""
    hologram_fringe_contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    """Contrast of the hologram's interference fringes around the wire, in the holography scene
    (its wire is biased; the biprism scene's is not)."""
    hologram_fringe_period_fov: Annotated[float, Field(gt=0.0, le=0.1)] = 0.016
    """Their period."""
    hologram_overlap_fov: Annotated[float, Field(ge=0.0, le=1.0)] = 0.16
    """Width of the band, centred on the wire, where the two waves overlap."""


class DisplaySettings(_Knobs):
    """How the camera software shows a frame on screen: the screen-capture path sees this."""

    contrast: Literal["auto", "fixed"] = "auto"
    auto_percentiles: Pair = (0.5, 99.5)
    """Auto-contrast: the counts at these percentiles map to black and white."""
    fixed_range: Pair = (100.0, 5000.0)
    """Fixed LUT: counts mapped to black and white."""
    gamma: Annotated[float, Field(gt=0.1, le=5.0)] = 1.0
    zoom: Annotated[float, Field(ge=0.25, le=8.0)] = 2.0
    """Screen pixels per camera pixel in the viewer window."""
    refresh_s: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    """Wall seconds between live-view refreshes."""


class DriftSettings(_Knobs):
    aligned_start: Pair = (2150.0, -1340.0)
    """a* at twin time 0, motor units (away from zero on purpose, as on a real stage)."""
    linear_per_hour: Pair = (12.0, -8.0)
    """Linear drift of a*, units per hour."""
    random_walk_per_sqrt_hour: Annotated[float, Field(ge=0.0, le=1000.0)] = 5.0
    """Random-walk drift of a*, units per sqrt(hour) per axis."""
    jump_rate_per_hour: Annotated[float, Field(ge=0.0, le=100.0)] = 0.1
    """Rate of sudden jumps of a* (gun flash), per hour (Poisson)."""
    jump_sigma: Annotated[float, Field(ge=0.0, le=1000.0)] = 25.0
    """Size of a jump, normal sigma per axis, units."""
    beam_shift_start: Pair = (0.0, 0.0)
    """s at twin time 0, FOV."""
    beam_shift_linear_per_hour: Pair = (0.004, -0.003)
    """Linear drift of s, FOV per hour."""
    beam_shift_random_walk_per_sqrt_hour: Annotated[float, Field(ge=0.0, le=1.0)] = 0.002
    """Random-walk drift of s, FOV per sqrt(hour) per axis."""


class MotorSettings(_Knobs):
    start_offset: Pair = (0.0, 0.0)
    """Aperture position at start relative to a*(0), units (0, 0: aligned)."""
    speed_units_per_s: Annotated[float, Field(gt=0.0, le=1e6)] = 200.0
    backlash_units: Annotated[float, Field(ge=0.0, le=100.0)] = 2.0
    settle_s: Annotated[float, Field(ge=0.0, le=10.0)] = 0.3
    """Time after the motion before `aperture.move` returns."""
    position_noise_units: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    """Where a move really ends: normal sigma around the target, per axis."""
    limits_x: tuple[int, int] = (-8388608, 8388607)
    limits_y: tuple[int, int] = (-8388608, 8388607)

    @field_validator("limits_x", "limits_y")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _check_ordered(value)


class LensSettings(_Knobs):
    start_over_cf: Annotated[float, Field(gt=0.5, lt=2.0)] = 1.0
    """C1 at start as a multiple of c_f (1.0: wobble centred on maximal convergence)."""
    settle_s: Annotated[float, Field(ge=0.0, le=30.0)] = 1.5
    """Time for C1 to reach a new value; frames taken sooner show it part way."""
    limits: Pair = (0.6, 2.4)
    """C1 values the lens accepts (lens units)."""

    @field_validator("limits")
    @classmethod
    def _ordered(cls, value: Pair) -> Pair:
        return _check_ordered(value)


NO_DRIFT: JsonObject = {"drift": {
    "linear_per_hour": (0.0, 0.0), "random_walk_per_sqrt_hour": 0.0, "jump_rate_per_hour": 0.0,
    "beam_shift_linear_per_hour": (0.0, 0.0), "beam_shift_random_walk_per_sqrt_hour": 0.0}}
"""Overrides that hold a* and the beam shift still: a stack's label is then the truth at every one
of its frames (datasets, accuracy benchmarks, pictures, tests)."""


class TwinSettings(_Knobs):
    optics: OpticsSettings = Field(default_factory=OpticsSettings)
    beam: BeamSettings = Field(default_factory=BeamSettings)
    camera: CameraSettings = Field(default_factory=CameraSettings)
    specimen: SpecimenSettings = Field(default_factory=SpecimenSettings)
    scene: SceneSettings = Field(default_factory=SceneSettings)
    display: DisplaySettings = Field(default_factory=DisplaySettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    motor: MotorSettings = Field(default_factory=MotorSettings)
    lens: LensSettings = Field(default_factory=LensSettings)

    def updated(self, overrides: JsonObject) -> TwinSettings:
        """These settings with a nested dict of overrides applied, validated as a whole."""
        merged = deep_merge(self.model_dump(), overrides)
        return TwinSettings.model_validate(merged)


def deep_merge(base: JsonObject, overrides: JsonObject) -> JsonObject:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
