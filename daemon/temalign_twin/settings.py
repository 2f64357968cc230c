"""Every knob of the digital twin, with a realistic default, a unit and a valid range.

The geometry of twin.md (D = 1.25 FOV, theta = 30 deg + 150 deg u, the spot radius law) is
normative and therefore not a knob; everything the rendering, the drift and the hardware do is.
Presets (twin/presets.py) are partial dicts of these fields."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from temalign.values import JsonObject

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
    c_f: Annotated[float, Field(gt=0.1, lt=10.0)] = 1.2
    """C1 value (lens units) that images the C1 crossover on the detector: the smallest spot."""
    ellipticity: Annotated[float, Field(ge=0.0, le=0.3)] = 0.03
    """Condenser astigmatism: the disc's semi-axes are r*k and r/k with k = sqrt((1 + e) / (1 - e))
    (about r(1 + e) and r(1 - e)), the same area as the circle."""
    ellipse_angle_deg: Annotated[float, Field(ge=-180.0, le=180.0)] = 25.0
    """Direction of the disc's long axis, degrees from +x towards +y (y points down)."""


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


class TwinSettings(_Knobs):
    optics: OpticsSettings = Field(default_factory=OpticsSettings)
    beam: BeamSettings = Field(default_factory=BeamSettings)
    camera: CameraSettings = Field(default_factory=CameraSettings)
    specimen: SpecimenSettings = Field(default_factory=SpecimenSettings)
    display: DisplaySettings = Field(default_factory=DisplaySettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    motor: MotorSettings = Field(default_factory=MotorSettings)
    lens: LensSettings = Field(default_factory=LensSettings)

    def updated(self, overrides: JsonObject) -> TwinSettings:
        """These settings with a nested dict of overrides applied, validated as a whole."""
        merged = _deep_merge(self.model_dump(), overrides)
        return TwinSettings.model_validate(merged)


def _deep_merge(base: JsonObject, overrides: JsonObject) -> JsonObject:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
