"""The wobble: step C1 through seven values, grab a frame after each settle, put C1 back.

This is the one place that changes C1 during normal work, so it carries invariant 2 of
docs/safety.md: C1 is recorded durably before the first change, and it is put back (and read back)
whatever ends the wobble: an error reply, a lost connection, a deadline, a failing image source,
a lens that did not take its value, a saturated frame, KeyboardInterrupt. The original error is
re-raised after the restore; when the restore itself fails, `C1RestoreFailed` says so and the
record stays for the next start. A lens.set that ran into its deadline may still be carried out
late, after the restore: C1 is put back once more after the microscope's
`late_write_grace_s` (the fault campaign found this; docs/reliability.md)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from temalign.clock import Clock
from temalign.decide.column import C1_TOLERANCE, same_c1
from temalign.decide.stack import camera_at_risk
from temalign.frames import Frame, WobbleStack
from temalign.microscope import Microscope
from temalign.optics import WOBBLE_STEPS, wobble_values
from temalign.protocol.errors import DeadlineExceeded
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.errors import (
    C1RestoreFailed,
    CameraProtectionAbort,
    LensDidNotTake,
    SourceError,
    WobbleError,
    WobbleInterrupted,
)
from temalign.wobble.sources import ImageSource

Interlock = Callable[[], tuple[str, str] | None]
"""Asked before each wobble step: None to go on, or (reason code, sentence) to stop now."""

DEFAULT_SATURATION_ABORT_FRACTION = 0.05
"""More than this fraction of a frame's pixels saturated stops the wobble (docs/safety.md, camera
protection); the focused spot alone covers well under 1 % of the frame."""
RAW_CEILING = 65535.0
RESTORE_BACKOFF_S = 0.5
"""Clock seconds between restore attempts, times the attempt number: gives a reconnect or a
busy server a moment without holding C1 off for long."""


def saturated_fraction(frame: Frame, level: float | None) -> float:
    """Fraction of the frame's pixels at or above `level` (0 when no level applies)."""
    if level is None:
        return 0.0
    return float(np.count_nonzero(frame.data >= level)) / frame.data.size


def _check_args(fraction: float, settle_s: float, restore_attempts: int,
                saturation_abort_fraction: float) -> None:
    if not (math.isfinite(fraction) and 0 < fraction < 0.5):
        raise ValueError(f"wobble fraction must be in (0, 0.5), got {fraction}")
    if not (math.isfinite(settle_s) and settle_s >= 0):
        raise ValueError(f"settle_s must be >= 0, got {settle_s}")
    if isinstance(restore_attempts, bool) or not isinstance(restore_attempts, int) or restore_attempts < 1:
        raise ValueError(f"restore_attempts must be an integer >= 1, got {restore_attempts!r}")
    if not 0 < saturation_abort_fraction <= 1:
        raise ValueError(f"saturation_abort_fraction must be in (0, 1], got {saturation_abort_fraction}")


def _check_steps(steps: Sequence[int] | None) -> tuple[int, ...]:
    if steps is None:
        return tuple(range(WOBBLE_STEPS))
    picked = tuple(steps)
    indices = all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < WOBBLE_STEPS for k in picked)
    if len(picked) < 2 or len(set(picked)) != len(picked) or not indices:
        raise ValueError(f"steps must be two or more distinct indices 0..{WOBBLE_STEPS - 1}, got {steps!r}")
    return picked


def _check_limits(microscope: Microscope, values: tuple[float, ...], c0: float) -> None:
    lo, hi = microscope.limits.c1
    outside = [v for v in values if not lo <= v <= hi]
    if outside:
        raise WobbleError(f"the wobble around C1 = {c0:.6g} would set {outside[0]:.6g}, outside the "
                          f"lens limits [{lo:.6g}, {hi:.6g}]; C1 was not changed")


def wobble(microscope: Microscope, source: ImageSource, *, fraction: float, settle_s: float,
           clock: Clock, memory: C1Memory, restore_attempts: int = 5,
           saturation_abort_fraction: float = DEFAULT_SATURATION_ABORT_FRACTION,
           saturation_level: float | None = None, tolerance: float = C1_TOLERANCE,
           steps: Sequence[int] | None = None, interlock: Interlock | None = None) -> WobbleStack:
    """One wobble around the present C1 value; returns its frames (7, or those of `steps`) and
    what was done.

    `steps` picks frames of the series by index, in that order (the check of service.cycle takes
    (3, 6): the present value, then one end). After each `set_c1` the value is read back (a lens
    that did not take it is a LensDidNotTake), then `settle_s` passes on `clock` and the source
    delivers a frame; a step at the value C1 already holds is neither set nor settled.
    `saturation_level` is the count at which a pixel is saturated; None means 65535 for raw frames
    and no check for display frames (a white display pixel says nothing about the camera). C1 is
    put back in any case. `interlock` is asked before every step and before every frame: a
    (reason, detail) it returns stops the wobble there (WobbleInterrupted), C1 put back, so a
    pause or the busy file that comes on mid-wobble is honoured within one frame, not one cycle."""
    _check_args(fraction, settle_s, restore_attempts, saturation_abort_fraction)
    picked = _check_steps(steps)
    c0 = microscope.c1()
    series = wobble_values(c0, fraction)
    values = tuple(float(series[k]) for k in picked)
    _check_limits(microscope, values, c0)
    level = saturation_level
    if level is None and source.kind == "raw":
        level = RAW_CEILING
    memory.begin(c0, values)

    frames: list[Frame] = []
    readbacks: list[float] = []
    saturation: list[float] = []
    failure: BaseException | None = None
    unanswered_set = False
    try:
        previous = c0
        for k, value in enumerate(values):
            _ask(interlock, k)
            changed = value != previous
            if changed:
                unanswered_set = True
                microscope.set_c1(value)
                unanswered_set = False
            readback = microscope.c1()
            readbacks.append(readback)
            if not same_c1(readback, value, tolerance):
                raise LensDidNotTake(f"frame {k}: C1 was set to {value:.6g} but reads {readback:.6g}: "
                                     "the lens did not take its value")
            if changed:
                clock.sleep(settle_s)
            previous = value
            _ask(interlock, k)  # again after the settle: the camera may be the exposure's now
            frame = source.grab()
            _check_frame(frame, frames, k)
            sat = saturated_fraction(frame, level)
            saturation.append(sat)
            if camera_at_risk(sat, saturation_abort_fraction):
                raise CameraProtectionAbort(
                    f"frame {k} (C1 = {value:.6g}): {sat:.1%} of the pixels are saturated (limit "
                    f"{saturation_abort_fraction:.1%}); wobble stopped to protect the camera: shorten "
                    "the exposure or lower the dose")
            frames.append(frame)
    except BaseException as error:  # KeyboardInterrupt included: C1 goes back first
        failure = error

    problem, interrupt = restore_c1(microscope, c0, attempts=restore_attempts, clock=clock,
                                    tolerance=tolerance)
    grace = late_write_grace_s(microscope)
    if problem is None and unanswered_set and isinstance(failure, DeadlineExceeded) and grace > 0:
        # A lens.set without its reply may still be carried out after the restore: wait for it
        # (wall time, as the deadline is), then put C1 back again.
        time.sleep(grace)
        problem, late = restore_c1(microscope, c0, attempts=restore_attempts, clock=clock,
                                   tolerance=tolerance)
        interrupt = interrupt or late
    if problem is not None:
        what = f"the wobble failed ({_describe(failure)}) and " if failure is not None else ""
        raise C1RestoreFailed(
            f"{what}C1 could not be put back to {c0:.6g} after {restore_attempts} attempts ({problem}). "
            f"C1 may be off; the record {memory.path} stays and C1 is restored at the next start "
            "if nobody has changed it") from failure
    memory.clear()
    if failure is not None:
        if isinstance(failure, Exception):
            failure.add_note(f"C1 restored to {c0:.6g}")
        raise failure
    if interrupt is not None:
        raise interrupt
    return WobbleStack(
        images=np.stack([f.data for f in frames]).astype(np.float32, copy=False),
        c1_values=values,
        times=tuple(f.time for f in frames),
        c1_before=c0,
        wobble_fraction=fraction,
        source=source.name,
        kind=source.kind,
        meta={"settle_s": settle_s, "c1_readback": tuple(readbacks), "saturated_fraction": tuple(saturation)},
    )


def _ask(interlock: Interlock | None, k: int) -> None:
    stop = interlock() if interlock is not None else None
    if stop is not None:
        raise WobbleInterrupted(stop[0], f"{stop[1]}: the wobble stopped before frame {k}")


def late_write_grace_s(microscope: Microscope) -> float:
    """How long after a call without a reply its command may still land (TcpMicroscope's
    deadline); 0 for a microscope in this process, whose calls end when they return."""
    return float(getattr(microscope, "late_write_grace_s", 0.0))


def _check_frame(frame: Frame, earlier: list[Frame], k: int) -> None:
    data = frame.data
    if not isinstance(data, np.ndarray) or data.ndim != 2:
        what = getattr(data, "shape", type(data).__name__)
        raise SourceError(f"frame {k}: the source delivered {what}, expected a 2-D array")
    if earlier and data.shape != earlier[0].data.shape:
        raise SourceError(f"frame {k}: {data.shape[1]}x{data.shape[0]} pixels, but frame 0 was "
                          f"{earlier[0].data.shape[1]}x{earlier[0].data.shape[0]}")


def _describe(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def restore_c1(microscope: Microscope, c0: float, *, attempts: int, clock: Clock,
               tolerance: float = C1_TOLERANCE) -> tuple[str | None, KeyboardInterrupt | None]:
    """Set C1 to c0 and read it back, up to `attempts` times; returns (None, ...) once it reads c0,
    else a summary of what went wrong. A lost connection is retried through the client's own
    reconnect on the next call. A KeyboardInterrupt does not cut the restore short: it is handed
    back to be raised once C1 is settled."""
    problems: list[str] = []
    interrupt: KeyboardInterrupt | None = None
    for attempt in range(1, attempts + 1):
        try:
            microscope.set_c1(c0)
            back = microscope.c1()
            if same_c1(back, c0, tolerance):
                return None, interrupt
            problems.append(f"attempt {attempt}: C1 reads {back:.6g}")
        except KeyboardInterrupt as error:
            interrupt = error
            problems.append(f"attempt {attempt}: interrupted")
        except Exception as error:
            problems.append(f"attempt {attempt}: {_describe(error)}")
        if attempt < attempts:
            try:
                clock.sleep(RESTORE_BACKOFF_S * attempt)
            except KeyboardInterrupt as error:
                interrupt = error
    return "; ".join(problems[-3:]), interrupt
