"""What each frame of a stack shows, for the doubtful-stack rules of decide/stack.py: the spot
(found, signal, border, fraction on the detector) and the saturated pixels. Measuring lives here;
the thresholds that make a stack doubtful live in decide/stack.py.

Malformed input (wrong shape, NaN/inf, all zero) is a doubtful stack too, never an exception."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from temalign.config.schema import QualitySettings
from temalign.decide.stack import FrameFacts, StackVerdict, doubtful, judge_stack
from temalign.estimate.spots import Spot, measure_spot
from temalign.frames import WobbleStack
from temalign.optics import WOBBLE_STEPS

RAW_SATURATION = 65535.0


@dataclass(frozen=True)
class StackQuality:
    """The verdict on a stack (decide.stack.StackVerdict) with the spots it was measured from."""

    ok: bool
    reasons: tuple[str, ...]
    frame_usable: tuple[bool, ...]
    spots: tuple[Spot, ...] = field(default=(), compare=False, repr=False)
    """The spot measured in each frame (empty when the stack could not be measured), so the
    classical estimator does not measure the same frames again."""
    camera_risk: bool = False
    """decide.stack.StackVerdict.camera_risk: a wide frame saturated."""
    discs_lost_only: bool = False
    """decide.stack.StackVerdict.discs_lost_only: doubtful only because wide discs left the detector."""

    @classmethod
    def of(cls, verdict: StackVerdict, spots: tuple[Spot, ...] = ()) -> StackQuality:
        return cls(verdict.ok, verdict.reasons, verdict.frame_usable, spots, verdict.camera_risk,
                   verdict.discs_lost_only)


def _shape_problem(images: object) -> str | None:
    if not isinstance(images, np.ndarray):
        return f"the stack is a {type(images).__name__}, not an array of frames"
    if images.ndim != 3 or images.shape[0] != WOBBLE_STEPS:
        return f"the stack has shape {images.shape}, expected ({WOBBLE_STEPS}, height, width)"
    if min(images.shape[1:]) < 4:
        return f"frames of {images.shape[2]}x{images.shape[1]} pixels are too small to measure"
    if not (np.issubdtype(images.dtype, np.number) and not np.issubdtype(images.dtype, np.complexfloating)):
        return f"the stack holds {images.dtype} values, not real numbers"
    return None


def _on_detector(spot: Spot, mirror: Spot | None) -> float:
    """Fraction of the disc on the detector; for a sliver the fit could not size, the visible
    area against the mirror frame's complete disc (same |g|, same radius), else 0."""
    if not spot.found:
        return 0.0
    if math.isfinite(spot.on_detector):
        return float(spot.on_detector)
    if mirror is not None and mirror.found and not mirror.truncated and mirror.radius > 0:
        return min(1.0, (spot.radius / mirror.radius) ** 2)
    return 0.0


def frame_facts(images: np.ndarray, spots: list[Spot], saturation_level: float | None) -> list[FrameFacts]:
    """Per frame: the spot's facts and the fraction of pixels saturated (stuck ones, saturated in
    every frame, not counted); no saturation fraction without a level."""
    saturated_fractions: list[float | None] = [None] * len(spots)
    if saturation_level is not None:
        saturated = images >= saturation_level
        stuck = saturated.all(axis=0)
        pixels = images[0].size
        saturated_fractions = [float(np.count_nonzero(saturated[k] & ~stuck)) / pixels
                               for k in range(len(spots))]
    last = len(spots) - 1
    return [FrameFacts(found=spot.found, total=float(spot.total), truncated=spot.truncated,
                       on_detector=_on_detector(spot, spots[last - k]),
                       centre_finite=bool(math.isfinite(spot.centre[0]) and math.isfinite(spot.centre[1])),
                       saturated_fraction=saturated_fractions[k])
            for k, spot in enumerate(spots)]


def assess_stack(stack: WobbleStack, settings: QualitySettings, *,
                 saturation_level: float | None = None) -> StackQuality:
    """Measure one wobble stack and judge it (decide.stack). `saturation_level`: the count at which
    a pixel is saturated; None means 65535 for raw frames and no check for display frames (a white
    display pixel says nothing about the camera)."""
    images = stack.images
    problem = _shape_problem(images)
    if problem is not None:
        return StackQuality.of(doubtful(problem))
    finite = np.isfinite(images).reshape(WOBBLE_STEPS, -1).all(axis=1)
    if not finite.all():
        frames = ", ".join(str(k) for k in np.flatnonzero(~finite))
        return StackQuality.of(doubtful(f"frame {frames}: NaN or infinite pixel values"))
    if not np.any(images):
        return StackQuality.of(doubtful("every frame is all zero: no signal at all (camera off or beam "
                                        "blanked)"))
    spots = [measure_spot(np.asarray(image)) for image in images]
    level = saturation_level
    if level is None and stack.kind == "raw":
        level = RAW_SATURATION
    verdict = judge_stack(frame_facts(images, spots, level), conserved=stack.kind == "raw", settings=settings)
    return StackQuality.of(verdict, tuple(spots))
