"""A correction, carried out: move the aperture, read it back, measure again, keep the move or
roll it back (docs/safety.md invariant 4), with every move journaled before and after it happens
(invariant 6) and its path told to the rate ledger.

The rules (did the motor get there, is the result worse) are decide/verify.py's; this module
does what they say and reports it as plain data (`Acted`). A failure that counts toward hold is
named in `Acted.failure`; the cycle counts it, since the run of failures is the service's state."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from temalign.clock import Clock
from temalign.config.schema import SafetySettings
from temalign.decide.envelope import RateLedger
from temalign.decide.verify import MOTOR_FAULT, ROLLED_BACK, is_worse, motor_fault
from temalign.estimate.combined import Measurement
from temalign.microscope import Microscope, Position
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal
from temalign.values import finite
from temalign.wobble.errors import C1RestoreFailed, SourceError, WobbleError, WobbleInterrupted

Pair = tuple[int, int]
CORRECTED = "corrected"
MOVE_FAILED = "move_failed"
ROLLBACK_FAILED = "rollback_failed"
C1_RESTORE_FAILED = "c1_restore_failed"
INTERRUPTED = "interrupted"
"""Acted.outcome when a pause or the busy file stopped the verification: the move stays, unverified."""


@dataclass(frozen=True)
class Acted:
    """What a correction did. `outcome`: corrected, rolled_back, error, hold (C1 could not be
    restored after the verification) or interrupted (a pause or busy stopped the verification).
    `failure`: the kind of failure toward hold it was, if any (motor, protocol, rollback).
    `position_after`: where the aperture reads now (None: unknown)."""

    outcome: str
    reason: str
    detail: str
    position_after: Pair | None
    applied: tuple[float, float] | None = None
    after: Measurement | None = None
    failure: str | None = None


class Mover:
    """Moves the aperture through the microscope, journaled on both ends, each path length told
    to the rate ledger."""

    def __init__(self, microscope: Microscope, journal: Journal, ledger: RateLedger, clock: Clock) -> None:
        self.microscope = microscope
        self.journal = journal
        self.ledger = ledger
        self.clock = clock
        self.last_read: Pair | None = None
        """The position the last move read back (None before one)."""

    def move(self, kind: str, origin: Pair, target: Pair) -> Pair:
        """Command a move to `target` and read the position back; ProtocolError passes through
        (journaled as a failed outcome)."""
        op = self.journal.intent(kind, origin=origin, target=target)
        try:
            self.microscope.move_aperture(Position(*target))
            where = self.microscope.aperture()
        except ProtocolError as error:
            self.journal.outcome(op, kind, ok=False, error=f"{type(error).__name__}: {error}")
            raise
        read = (int(where.x), int(where.y))
        self.last_read = read
        self.ledger.add(self.clock.now(), math.dist(origin, read))
        self.journal.outcome(op, kind, ok=True, read_back=read)
        return read

    def position(self) -> Pair | None:
        """Where the aperture reads now; None when the microscope does not answer."""
        return read_position(self.microscope)


def read_position(microscope: Microscope) -> Pair | None:
    """The aperture's position as whole motor units; None when the microscope does not answer."""
    try:
        where = microscope.aperture()
    except ProtocolError:
        return None
    return (int(where.x), int(where.y))


Interlock = Callable[[], tuple[str, str] | None]
"""A pause or the busy file that came on: (reason, sentence), or None (wobble/stack.py's too)."""


def correct(mover: Mover, *, position: Pair, target: Pair, before: Measurement,
            verify: Callable[[], Measurement], safety: SafetySettings,
            interlock: Interlock = lambda: None) -> Acted:
    """Move from `position` to `target`, read back, measure again with `verify`, keep or roll back.
    `interlock` is asked again before a move back or a rollback: during an exposure the aperture
    stays where it is (the next cycle measures it) rather than move under it."""
    try:
        read = mover.move("move", position, target)
    except ProtocolError as error:
        return Acted("error", MOVE_FAILED, str(error), mover.position(), failure="protocol")
    applied = (float(read[0] - position[0]), float(read[1] - position[1]))
    if motor_fault(target, read, safety):
        why = f"commanded {target}, the motor reads {read}"
        now_at: Pair | None = read
        if math.dist(read, position) > safety.motor_tolerance_units:
            stop = interlock()
            if stop is None:
                note, now_at = _move_back(mover, read, position)
            else:
                note = f"; not moved back: {stop[1]}"
            why += note
        return Acted("error", MOTOR_FAULT, why, now_at, applied, failure="motor")
    try:
        after = verify()
    except C1RestoreFailed as error:
        return Acted("hold", C1_RESTORE_FAILED, str(error), read, applied)
    except WobbleInterrupted as error:
        return Acted(INTERRUPTED, error.reason, f"{error}; the correction to {read} is kept unverified (a "
                     "rollback would move during the exposure): the next cycle measures it", read, applied)
    except (WobbleError, SourceError, ProtocolError) as error:
        return roll_back(mover, position, read, f"the verification wobble failed: {error}", safety, applied)
    m_before = before.misalignment or 0.0
    m_after = after.misalignment
    if m_after is None and after.model_delta is not None and finite(*after.model_delta):
        m_after = math.hypot(*after.model_delta)
    if m_after is None:
        why = f"the result could not be measured ({after.reason})"
    elif is_worse(m_before, m_after, safety):
        why = f"misalignment {m_before:.1f} -> {m_after:.1f} units: worse"
    else:
        return Acted(CORRECTED, CORRECTED, f"misalignment {m_before:.1f} -> {m_after:.1f} units", read,
                     applied, after)
    stop = interlock()
    if stop is not None:
        return Acted(INTERRUPTED, stop[0], f"{why}; not rolled back: {stop[1]} (the next cycle measures it)",
                     read, applied, after)
    return roll_back(mover, position, read, why, safety, applied, after)


def roll_back(mover: Mover, origin: Pair, now_at: Pair, why: str, safety: SafetySettings,
              applied: tuple[float, float] | None = None, after: Measurement | None = None) -> Acted:
    """Move back to `origin` (the position before the correction): a rollback is a failure toward
    hold, and so is a rollback that fails."""
    try:
        read = mover.move("rollback", now_at, origin)
    except ProtocolError as error:
        return Acted("error", ROLLBACK_FAILED, f"{why}; rollback failed: {error}", mover.position(), applied,
                     after, failure="protocol")
    if motor_fault(origin, read, safety):
        why += f"; the rollback to {origin} ended at {read}"
    return Acted(ROLLED_BACK, ROLLED_BACK, f"{why}; moved back to {read}", read, applied, after,
                 failure="rollback")


def _move_back(mover: Mover, now_at: Pair, origin: Pair) -> tuple[str, Pair | None]:
    """After a motor fault: back to where the cycle found it (a position nobody estimated)."""
    try:
        read = mover.move("rollback", now_at, origin)
    except ProtocolError as error:
        return f"; moving back failed: {error}", mover.position()
    return f"; moved back to {read}", read
