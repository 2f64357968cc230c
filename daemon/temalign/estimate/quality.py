"""Is a wobble stack fit to move the aperture on? The "doubtful stack" of safety.md, in numbers.

Three findings make a stack doubtful, each named per frame so a person can see what went wrong:
- beam absent: a frame's signal above the dark level (the spot's integrated total) is below
  `beam_min_fraction` of the brightest frame's. The beam current is conserved across a wobble,
  so on raw counts every frame carries about the same total; a frame without a spot at all, or a
  stack without any, is absent in any case. A disc cut by the border is judged by the next test
  instead (its signal is low because part of it is off the detector). Display frames (auto-contrast,
  gamma, 8 bits) do not conserve the signal: there, only a frame without a spot is absent;
- disc lost: in a wide frame (|k - 3| >= 2, |g| >= 2/3 of a centred wobble) less than
  `disc_min_fraction` of the disc's area lies on the detector;
- wide frames saturated: more than `wide_saturated_max_fraction` of a wide frame's pixels at the
  saturation level (pixels saturated in every frame, stuck ones, are not counted). The focused
  frames saturating is normal.
Malformed input (wrong shape, NaN/inf, all zero) is doubtful too, never an exception."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from temalign.config.schema import QualitySettings
from temalign.estimate.spots import Spot, measure_spot
from temalign.frames import WobbleStack

STEPS = 7
RAW_SATURATION = 65535.0
WIDE_FROM_MIDDLE = 2
"""Frames this many steps or more from the middle one are the wide frames (|g| >= 2/3 centred)."""


@dataclass(frozen=True)
class StackQuality:
    """`ok` is False when no move may be made on the stack; `reasons` says why, frame by frame;
    `frame_usable[k]` says whether frame k can give a centroid (spot found, enough of it on the
    detector), which a partial estimate may still use when `ok` is False."""

    ok: bool
    reasons: tuple[str, ...]
    frame_usable: tuple[bool, ...]
    spots: tuple[Spot, ...] = field(default=(), compare=False, repr=False)
    """The spot measured in each frame (empty when the stack could not be measured), so the
    classical estimator does not measure the same frames again."""


def wide_frames(steps: int = STEPS) -> tuple[int, ...]:
    """Indices of the wide frames of a `steps`-frame wobble."""
    half = (steps - 1) // 2
    return tuple(k for k in range(steps) if abs(k - half) >= WIDE_FROM_MIDDLE)


def _bad(reason: str, steps: int = STEPS) -> StackQuality:
    return StackQuality(False, (reason,), (False,) * steps)


def _shape_problem(images: object) -> str | None:
    if not isinstance(images, np.ndarray):
        return f"the stack is a {type(images).__name__}, not an array of frames"
    if images.ndim != 3 or images.shape[0] != STEPS:
        return f"the stack has shape {images.shape}, expected ({STEPS}, height, width)"
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


MIN_USABLE_WITH_HIDDEN = 5
"""On display frames the camera software's auto-contrast (0.5 to 99.5 %) clips the background noise
of a focused frame to white, and the 3 px focused spot disappears among it (docs/wobble.md). Such
a near-focus frame is left out, not taken as a lost beam, while every wide frame shows its disc
and at least this many frames are usable: the walk and the model need no focused spot."""


def assess_stack(stack: WobbleStack, settings: QualitySettings, *,
                 saturation_level: float | None = None) -> StackQuality:
    """Judge one wobble stack (safety.md, "Doubtful stack"). `saturation_level`: the count at which
    a pixel is saturated; None means 65535 for raw frames and no check for display frames (a white
    display pixel says nothing about the camera)."""
    images = stack.images
    problem = _shape_problem(images)
    if problem is not None:
        return _bad(problem)
    finite = np.isfinite(images).reshape(STEPS, -1).all(axis=1)
    if not finite.all():
        frames = ", ".join(str(k) for k in np.flatnonzero(~finite))
        return _bad(f"frame {frames}: NaN or infinite pixel values")
    if not np.any(images):
        return _bad("every frame is all zero: no signal at all (camera off or beam blanked)")

    spots = [measure_spot(np.asarray(image)) for image in images]
    reasons: list[str] = []
    totals = np.array([s.total if s.found and math.isfinite(s.total) else 0.0 for s in spots])
    brightest = float(totals.max())
    if brightest <= 0.0:
        return StackQuality(False, ("no beam in any frame (blanked, or off the detector)",),
                            (False,) * STEPS)
    conserved = stack.kind == "raw"
    present = []
    hidden = []
    wide = set(wide_frames())
    for k, (spot, total) in enumerate(zip(spots, totals, strict=True)):
        if not spot.found and not conserved and k not in wide:
            hidden.append(k)  # decided below: an auto-contrast display can hide the focused spot
            present.append(False)
        elif not spot.found:
            reasons.append(f"no beam in frame {k} (blanked, or the disc is wholly off the detector)")
            present.append(False)
        elif conserved and not spot.truncated and total < settings.beam_min_fraction * brightest:
            reasons.append(f"no beam in frame {k} (signal {total / brightest:.0%} of the brightest "
                           f"frame's, below {settings.beam_min_fraction:.0%})")
            present.append(False)
        else:
            present.append(True)

    on = [_on_detector(spot, spots[STEPS - 1 - k]) for k, spot in enumerate(spots)]
    usable = [present[k] and math.isfinite(spots[k].centre[0]) and math.isfinite(spots[k].centre[1])
              and on[k] >= settings.disc_min_fraction for k in range(STEPS)]
    if hidden and not (all(present[k] for k in wide) and sum(usable) >= MIN_USABLE_WITH_HIDDEN):
        reasons += [f"no beam in frame {k} (blanked, or the disc is wholly off the detector)" for k in hidden]
    for k in wide_frames():
        if present[k] and on[k] < settings.disc_min_fraction:
            reasons.append(f"frame {k}: disc lost ({on[k]:.0%} of it on the detector, below "
                           f"{settings.disc_min_fraction:.0%})")

    level = saturation_level
    if level is None and stack.kind == "raw":
        level = RAW_SATURATION
    if level is not None:
        saturated = images >= level
        stuck = saturated.all(axis=0)
        pixels = images[0].size
        for k in wide_frames():
            fraction = float(np.count_nonzero(saturated[k] & ~stuck)) / pixels
            if fraction > settings.wide_saturated_max_fraction:
                reasons.append(f"frame {k} saturated ({fraction:.1%} of pixels, above "
                               f"{settings.wide_saturated_max_fraction:.1%} in a wide frame)")
    return StackQuality(not reasons, tuple(reasons), tuple(usable), tuple(spots))
