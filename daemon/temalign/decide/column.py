"""The gates before a wobble (docs/safety.md invariant 5, "Busy", "Hands on the column"): whether the
daemon may look at the column at all, and whether the column is as the daemon left it.

Pure functions of plain values: the cycle reads the busy file, the run state, the clock and the
column, and acts on the verdict (records it, pauses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

C1_TOLERANCE = 1e-4
"""Relative difference under which two C1 values are the same setting: far below a wobble step
(1 % at a 3 % wobble), far above the rounding of a lens read-back."""

BUSY = "busy"
HOLD = "hold"
PAUSED = "paused"
C1_CHANGED = "c1_changed"
APERTURE_MOVED = "aperture_moved"


Asked = Literal["schedule", "once", "force"]
ASKED: tuple[Asked, ...] = ("schedule", "once", "force")
"""Who asked for a cycle: the scheduler, a person (`temalign once`), a person overriding a pause
(`temalign once --force`)."""


@dataclass(frozen=True)
class Stop:
    """A gate that stops the cycle: the stable reason code and the sentence for a person."""

    reason: str
    detail: str


def same_c1(a: float, b: float, tolerance: float = C1_TOLERANCE) -> bool:
    """True if C1 values a and b are the same setting (relative to their size): the one C1
    tolerance rule, for the wobble's read-back, the recovery at start and the hands-on check."""
    return abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-12)


def is_paused(paused_until: float | None, now_epoch: float) -> bool:
    """True while a pause lasts: until its end time (wall clock), forever for math.inf."""
    return paused_until is not None and now_epoch < paused_until


def may_wobble(*, busy_file: Path | None, busy_file_exists: bool, hold: str | None,
               paused_until: float | None, pause_reason: str | None, now_epoch: float,
               asked: Asked) -> Stop | None:
    """None when a wobble may start for a cycle `asked` by the schedule, by `temalign once` or by
    `temalign once --force`. The busy file blocks every wobble. A pause (the interlock the
    acquisition software sets before an exposure) blocks all but a forced one. A hold blocks the
    schedule only: a person's `once` measures in hold, and a hold never moves."""
    if busy_file is not None and busy_file_exists:
        return Stop(BUSY, f"{busy_file} exists: an exposure is running")
    if asked not in ASKED:
        raise ValueError(f"asked must be one of {ASKED}, got {asked!r}")
    if is_paused(paused_until, now_epoch) and asked != "force":
        why = pause_reason or "paused"
        if asked == "once":
            why += " (temalign once --force runs a cycle anyway)"
        return Stop(PAUSED, why)
    if hold is not None and asked == "schedule":
        return Stop(HOLD, f"in hold: {hold} (temalign hold clear)")
    return None


def c1_changed(c1: float, left_at: float | None, tolerance: float) -> Stop | None:
    """A person changed the optics: C1 is not at the value the daemon left it at."""
    if left_at is None or same_c1(c1, left_at, tolerance):
        return None
    return Stop(C1_CHANGED, f"C1 reads {c1:.6g}, the daemon left it at {left_at:.6g}: "
                            "someone changed the optics")


def aperture_moved(position: tuple[int, int], left_at: tuple[int, int] | None,
                   motor_tolerance: float) -> Stop | None:
    """A person moved the aperture: it is further than the motor's noise from where the daemon
    left it."""
    if left_at is None:
        return None
    off = math.dist(position, left_at)
    if off <= motor_tolerance:
        return None
    return Stop(APERTURE_MOVED, f"the aperture is at {position}, {off:.0f} units from where the daemon "
                                f"left it {left_at}: someone moved it")
