"""Is a wobble stack fit to move the aperture on? The "doubtful stack" and the camera protection
of docs/safety.md, as rules over what was measured in each frame (estimate/quality.py measures).

Three findings make a stack doubtful, each named per frame so a person can see what went wrong:
- beam absent: a frame's signal above the dark level (the spot's integrated total) is below
  `beam_min_fraction` of the brightest frame's. The beam current is conserved across a wobble,
  so on raw counts every frame carries about the same total; a frame without a spot at all, or a
  stack without any, is absent in any case. A disc cut by the border is judged by the next test
  instead (its signal is low because part of it is off the detector), and a frame with saturated
  pixels is a beam whatever its total (clipping took its counts: the tiny focused spot of a
  coherent source can keep a tenth of them). Display frames
  (auto-contrast, gamma, 8 bits) do not conserve the signal: there, only a frame without a spot
  is absent;
- disc lost: in a wide frame (|k - 3| >= 2, |g| >= 2/3 of a centred wobble) less than
  `disc_min_fraction` of the disc's area lies on the detector;
- wide frames saturated: more than `wide_saturated_max_fraction` of a wide frame's pixels at the
  saturation level (stuck pixels, saturated in every frame, not counted). The focused frames
  saturating is normal.

Camera protection: a frame with more than `saturation_abort_fraction` of its pixels saturated
ends the wobble at once (wobble/stack.py asks `camera_at_risk`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from temalign.config.schema import QualitySettings

DOUBTFUL_STACK = "doubtful_stack"
STEPS = 7
WIDE_FROM_MIDDLE = 2
"""Frames this many steps or more from the middle one are the wide frames (|g| >= 2/3 centred)."""
MIN_USABLE_WITH_HIDDEN = 5
"""On display frames the camera software's auto-contrast (0.5 to 99.5 %) clips the background noise
of a focused frame to white, and the 3 px focused spot disappears among it (docs/wobble.md). Such
a near-focus frame is left out, not taken as a lost beam, while every wide frame shows its disc
and at least this many frames are usable: the walk and the model need no focused spot."""


@dataclass(frozen=True)
class FrameFacts:
    """What was measured in one frame, for the rules: whether a spot was found, its signal above
    the dark level, whether it touches the border, the fraction of its disc on the detector,
    whether its centre is a finite position, and the fraction of the frame's pixels saturated
    (not counting stuck pixels; None where no saturation level applies, as on display frames)."""

    found: bool
    total: float
    truncated: bool
    on_detector: float
    centre_finite: bool
    saturated_fraction: float | None


@dataclass(frozen=True)
class StackVerdict:
    """`ok` is False when no move may be made on the stack; `reasons` says why, frame by frame;
    `frame_usable[k]` says whether frame k can give a centroid (spot found, enough of it on the
    detector), which a partial estimate may still use when `ok` is False."""

    ok: bool
    reasons: tuple[str, ...]
    frame_usable: tuple[bool, ...]
    camera_risk: bool = False
    """A wide frame saturated (camera protection): no estimator, alone or not, may move on it."""
    discs_lost_only: bool = False
    """Doubtful only because wide discs left the detector: the beam is there and nothing
    saturates, so a narrower wobble (narrower_wobble) keeps them on it."""


def wide_frames(steps: int = STEPS) -> tuple[int, ...]:
    """Indices of the wide frames of a `steps`-frame wobble."""
    half = (steps - 1) // 2
    return tuple(k for k in range(steps) if abs(k - half) >= WIDE_FROM_MIDDLE)


def doubtful(reason: str, steps: int = STEPS) -> StackVerdict:
    """A stack that could not even be measured (wrong shape, NaN pixels, no signal)."""
    return StackVerdict(False, (reason,), (False,) * steps)


def judge_stack(frames: Sequence[FrameFacts], *, conserved: bool, settings: QualitySettings) -> StackVerdict:
    """The verdict on a stack whose frames measured `frames`; `conserved`: the frames are raw
    counts, whose total signal the beam current keeps the same in every frame."""
    steps = len(frames)
    totals = [f.total if f.found and math.isfinite(f.total) else 0.0 for f in frames]
    brightest = max(totals, default=0.0)
    if brightest <= 0.0:
        return doubtful("no beam in any frame (blanked, or off the detector)", steps)
    wide = set(wide_frames(steps))
    reasons: list[str] = []
    present: list[bool] = []
    hidden: list[int] = []
    for k, (frame, total) in enumerate(zip(frames, totals, strict=True)):
        if not frame.found and not conserved and k not in wide:
            hidden.append(k)  # decided below: an auto-contrast display can hide the focused spot
            present.append(False)
        elif not frame.found:
            reasons.append(f"no beam in frame {k} (blanked, or the disc is wholly off the detector)")
            present.append(False)
        elif (conserved and not frame.truncated and not (frame.saturated_fraction or 0.0) > 0.0
              and total < settings.beam_min_fraction * brightest):  # clipped counts say nothing of it
            reasons.append(f"no beam in frame {k} (signal {total / brightest:.0%} of the brightest "
                           f"frame's, below {settings.beam_min_fraction:.0%})")
            present.append(False)
        else:
            present.append(True)
    usable = [present[k] and frames[k].centre_finite and frames[k].on_detector >= settings.disc_min_fraction
              for k in range(steps)]
    if hidden and not (all(present[k] for k in wide) and sum(usable) >= MIN_USABLE_WITH_HIDDEN):
        reasons += [f"no beam in frame {k} (blanked, or the disc is wholly off the detector)" for k in hidden]
    beam_reasons = len(reasons)  # a beam absent: not what a narrower wobble mends
    for k in sorted(wide):
        if present[k] and frames[k].on_detector < settings.disc_min_fraction:
            reasons.append(f"frame {k}: disc lost ({frames[k].on_detector:.0%} of it on the detector, below "
                           f"{settings.disc_min_fraction:.0%})")
    lost_only = beam_reasons == 0 and len(reasons) > 0
    camera_risk = False
    for k in sorted(wide):
        fraction = frames[k].saturated_fraction
        if fraction is not None and fraction > settings.wide_saturated_max_fraction:
            camera_risk = True
            reasons.append(f"frame {k} saturated ({fraction:.1%} of pixels, above "
                           f"{settings.wide_saturated_max_fraction:.1%} in a wide frame)")
    lost_only = lost_only and not camera_risk
    return StackVerdict(not reasons, tuple(reasons), tuple(usable), camera_risk, lost_only)


NARROWER = 0.5
"""A wobble whose wide discs left the detector is taken again at this fraction of its width: the
discs walk and grow half as far."""


def narrower_wobble(discs_lost_only: bool, fraction: float, lowest: float | None) -> float | None:
    """The wobble fraction to take the stack again at, when it was doubtful only because its wide
    discs left the detector (StackVerdict.discs_lost_only: a misalignment large for this column's
    magnification), or None: it was not, or the estimator takes no narrower wobble (`lowest`: the
    narrowest it was made for; None, a model made for one wobble only)."""
    if not discs_lost_only or lowest is None:
        return None
    narrower = max(fraction * NARROWER, lowest)
    return narrower if narrower < fraction * (1.0 - 1e-6) else None


def camera_at_risk(saturated_fraction: float, abort_fraction: float) -> bool:
    """Camera protection: this frame saturates so much that the wobble must stop at once."""
    return saturated_fraction > abort_fraction
