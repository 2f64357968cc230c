"""One cycle: wobble, estimate, decide, move, read back, verify, keep or roll back, record.

Every step's data is plain (WobbleStack, Measurement, Decision, CycleResult), every action on the
hardware is journaled before and after it happens (safety.md invariant 6), and nothing moves
unless the stack is clean, the estimators agree, the envelope allows it and the daemon is live
(invariants 1, 3, 5). Errors become outcomes: a cycle never raises for what a microscope or an
image can do, so the service keeps running (or goes to hold, which only a person clears)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from temalign.clock import Clock
from temalign.config.schema import Settings
from temalign.decide.envelope import Decision, FailureCounter, RateLedger, decide, is_worse, motor_fault
from temalign.estimate.classical import ClassicalEstimate, classical_estimate
from temalign.estimate.combined import CombinedEstimator, Measurement
from temalign.estimate.spots import measure_stack
from temalign.frames import WobbleStack
from temalign.microscope import Microscope, Position
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal
from temalign.record.state import RunState, StateStore, is_paused
from temalign.wobble.c1_memory import C1Memory, same_c1
from temalign.wobble.errors import C1RestoreFailed, LensDidNotTake, SourceError, WobbleError
from temalign.wobble.sources import ImageSource
from temalign.wobble.stack import wobble

Pair = tuple[int, int]
CHECK_STEPS = (3, 6)
"""The check's frames: C1 as it is (nothing to settle), then the wobble's upper end: one settle
instead of seven, and the spot's walk between them is the misalignment through the calibration."""
CHECK_STEPS_BOTH_ENDS = (0, 6)
"""When the frame at C1 as it is shows no spot (an 8-bit display whose stretch turns the focused
spot's surroundings white, docs/wobble.md), the check takes both ends instead: two settles."""
LOOKS = ("full", "check")


@dataclass
class Parts:
    """Everything a cycle touches, built once at start (service.daemon) or by a test or benchmark."""

    microscope: Microscope
    source: ImageSource
    estimator: CombinedEstimator
    settings: Settings
    clock: Clock
    memory: C1Memory
    journal: Journal
    state: StateStore
    session_start: Pair | None
    """Where the aperture was when the daemon started (the envelope's centre until a reference is
    set); None until the first successful read."""
    ledger: RateLedger = field(default_factory=RateLedger)
    failures: FailureCounter | None = None
    check_steps: tuple[int, ...] = CHECK_STEPS
    """The two-frame check's steps; CHECK_STEPS_BOTH_ENDS once the present value showed no spot."""
    wall: Any = time.time
    """Wall-clock epoch seconds, for pause deadlines (a person's time, not the twin's)."""

    def __post_init__(self) -> None:
        if self.failures is None:
            self.failures = FailureCounter(self.settings.safety.hold_after_failures)


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did; `outcome` is one of record.metrics.CYCLE_OUTCOMES."""

    outcome: str
    reason: str
    detail: str
    mode: str
    started: float
    duration_s: float
    position_before: Pair | None = None
    position_after: Pair | None = None
    c1: float | None = None
    before: Measurement | None = None
    after: Measurement | None = None
    decision: Decision | None = None
    applied: tuple[float, float] | None = None
    check: ClassicalEstimate | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (journal, `once --json`, `status --json`, the log line)."""
        return {"outcome": self.outcome, "reason": self.reason, "detail": self.detail, "mode": self.mode,
                "started": self.started, "duration_s": round(self.duration_s, 4),
                "position_before": self.position_before, "position_after": self.position_after,
                "c1": self.c1, "before": measurement_json(self.before), "after": measurement_json(self.after),
                "decision": decision_json(self.decision), "applied": self.applied,
                "check": check_json(self.check)}


def check_json(c: ClassicalEstimate | None) -> dict[str, Any] | None:
    """The two-frame check as plain JSON."""
    if c is None:
        return None
    size = None if c.delta is None else _num(math.hypot(*c.delta))
    return {"delta": _rounded(c.delta), "misalignment": size, "frames": c.frames_used, "reason": c.reason}


def measurement_json(m: Measurement | None) -> dict[str, Any] | None:
    """A measurement as plain JSON: each estimator's delta, the one used, the trust and why."""
    if m is None:
        return None
    classical = m.classical
    return {"model": _rounded(m.model_delta), "classical": _rounded(classical.delta) if classical else None,
            "classical_residual_px": None if classical is None else _num(classical.residual_px),
            "delta": _rounded(m.delta), "misalignment": _num(m.misalignment),
            "confidence": round(m.confidence, 3),
            "trusted": m.trusted, "reason": m.reason, "detail": m.detail,
            "quality": {"ok": m.quality.ok, "reasons": list(m.quality.reasons)},
            "preprocess_ms": round(m.preprocess_ms, 3), "inference_ms": round(m.inference_ms, 3),
            "classical_ms": round(m.classical_ms, 3)}


def decision_json(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"action": d.action, "reason": d.reason, "detail": d.detail, "target": d.target,
            "step": _rounded(d.step), "requested": _rounded(d.requested), "limits_hit": list(d.limits_hit)}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 3)


def _rounded(v: tuple[float, float] | None) -> list[float | None] | None:
    return None if v is None else [_num(x) for x in v]


def _pair(p: Position) -> Pair:
    return (int(p.x), int(p.y))


class _Cycle:
    """The steps of one cycle over shared parts; `run()` returns its CycleResult."""

    def __init__(self, parts: Parts, forced: bool, look: str) -> None:
        if look not in LOOKS:
            raise ValueError(f"look must be one of {LOOKS}, got {look!r}")
        self.p = parts
        self.s = parts.settings
        self.forced = forced
        self.look = look
        self.t0 = parts.clock.now()
        self.state: RunState = parts.state.load(self.s.schedule.mode)
        self.live = self.state.mode == "live" and self.state.hold is None
        self.fields: dict[str, Any] = {}

    def result(self, outcome: str, reason: str, detail: str, **fields: Any) -> CycleResult:
        merged = {**self.fields, **fields}
        mode = "hold" if self.state.hold else self.state.mode
        return CycleResult(outcome, reason, detail, mode, self.t0, self.p.clock.now() - self.t0, **merged)

    # ---- the steps ------------------------------------------------------------------------------

    def gate(self) -> CycleResult | None:
        """Paused, in hold, or busy: no wobble (a forced `once` runs paused or in hold, never busy)."""
        busy = self.s.safety.busy_file
        if busy is not None and busy.exists():
            return self.result("skipped", "busy", f"{busy} exists: an exposure is running")
        if self.forced:
            return None
        if self.state.hold is not None:
            return self.result("skipped", "hold", f"in hold: {self.state.hold} (temalign hold clear)")
        if is_paused(self.state, self.p.wall()):
            return self.result("skipped", "paused", self.state.pause_reason or "paused")
        return None

    def hands_on_the_column(self, position: Pair, c1: float) -> CycleResult | None:
        """A person moved the aperture or changed C1 since the last cycle: safety.md says stop."""
        st, safety = self.state, self.s.safety
        if st.last_c1 is not None and not same_c1(c1, st.last_c1, safety.c1_tolerance):
            why = f"C1 reads {c1:.6g}, the daemon left it at {st.last_c1:.6g}: someone changed the optics"
            self.p.journal.append("hands.c1", c1=c1, expected=st.last_c1)
            self.state = self.p.state.update(paused_until=math.inf, pause_reason=why, last_c1=c1)
            return self.result("skipped", "c1-changed", why + "; paused (temalign resume)")
        if st.last_position is not None:
            off = math.dist(position, st.last_position)
            if off > safety.motor_tolerance_units:
                why = (f"the aperture is at {position}, {off:.0f} units from where the daemon left it "
                       f"{st.last_position}: someone moved it")
                self.p.journal.append("hands.aperture", position=position, expected=st.last_position)
                if safety.on_aperture_moved == "new-reference":
                    self.state = self.p.state.update(reference=position, reference_set_by="person (moved it)",
                                                     last_position=position)
                    return None
                self.state = self.p.state.update(paused_until=math.inf, pause_reason=why,
                                                 last_position=position)
                return self.result("skipped", "aperture-moved", why + "; paused (temalign resume)")
        return None

    def _can_check(self) -> bool:
        """Live work only: dry-run reports both estimators every time."""
        return self.live and can_check(self.p)

    def check(self) -> ClassicalEstimate:
        """The cheap look (CHECK_STEPS): the classical estimator on two frames; journaled like any
        wobble. It never moves anything: at or above the deadband, or when it cannot tell, the full
        wobble follows and decides."""
        s = self.s
        calibration = self.p.estimator.calibration
        assert calibration is not None
        steps = self.p.check_steps
        op = self.p.journal.intent("wobble", label="check", fraction=s.wobble.fraction, steps=list(steps))
        try:
            stack: WobbleStack = wobble(
                self.p.microscope, self.p.source, fraction=s.wobble.fraction, settle_s=s.wobble.settle_s,
                clock=self.p.clock, memory=self.p.memory, restore_attempts=s.wobble.restore_attempts,
                saturation_abort_fraction=s.quality.saturation_abort_fraction, steps=steps)
        except BaseException as error:
            self.p.journal.outcome(op, "wobble", ok=False, error=f"{type(error).__name__}: {error}")
            raise
        try:
            spots = measure_stack(stack)
            estimate = classical_estimate(stack, calibration, spots=spots, min_frames=len(steps))
        except ValueError as error:
            spots, estimate = [], ClassicalEstimate(None, None, math.nan, 0, str(error))
        self.p.journal.outcome(op, "wobble", ok=True, c1=stack.c1_before, delta=_rounded(estimate.delta),
                               reason=estimate.reason)
        if steps == CHECK_STEPS and len(spots) == 2 and not spots[0].found and spots[1].found:
            self.p.check_steps = CHECK_STEPS_BOTH_ENDS
            self.p.journal.append("check.steps", steps=list(CHECK_STEPS_BOTH_ENDS),
                                  reason="the frame at C1 as it is shows no spot: later checks take both "
                                         "ends of the wobble")
        return estimate

    def measure(self, label: str) -> Measurement:
        """One wobble and both estimators; journaled before and after (C1 is restored by wobble())."""
        s = self.s
        op = self.p.journal.intent("wobble", label=label, fraction=s.wobble.fraction)
        try:
            stack: WobbleStack = wobble(
                self.p.microscope, self.p.source, fraction=s.wobble.fraction, settle_s=s.wobble.settle_s,
                clock=self.p.clock, memory=self.p.memory, restore_attempts=s.wobble.restore_attempts,
                saturation_abort_fraction=s.quality.saturation_abort_fraction)
        except BaseException as error:
            self.p.journal.outcome(op, "wobble", ok=False, error=f"{type(error).__name__}: {error}")
            raise
        m = self.p.estimator.measure(stack)
        self.p.journal.outcome(op, "wobble", ok=True, c1=stack.c1_before, trusted=m.trusted, reason=m.reason,
                               delta=_rounded(m.delta), model=_rounded(m.model_delta),
                               classical=_rounded(m.classical.delta) if m.classical else None)
        return m

    def move(self, kind: str, origin: Pair, target: Pair) -> Pair:
        """Command a move and read the position back; both ends journaled."""
        op = self.p.journal.intent(kind, origin=origin, target=target)
        try:
            self.p.microscope.move_aperture(Position(*target))
            read = _pair(self.p.microscope.aperture())
        except ProtocolError as error:
            self.p.journal.outcome(op, kind, ok=False, error=f"{type(error).__name__}: {error}")
            raise
        self.p.ledger.add(self.p.clock.now(), math.dist(origin, read))
        self.p.journal.outcome(op, kind, ok=True, read_back=read)
        return read

    def fail(self, kind: str, why: str) -> bool:
        """A failure toward hold (safety.md); True when it put the daemon in hold."""
        assert self.p.failures is not None
        if self.p.failures.failure(kind):
            reason = f"{self.p.failures.count} failures in a row (last: {why})"
            self.state = self.p.state.update(hold=reason)
            self.p.journal.append("hold", reason=reason)
            return True
        return False

    def run(self) -> CycleResult:
        return self._remember(self._run())

    def _run(self) -> CycleResult:
        gated = self.gate()
        if gated is not None:
            return gated
        mic = self.p.microscope
        try:
            position, c1 = _pair(mic.aperture()), float(mic.c1())
        except ProtocolError as error:
            return self.result("error", "microscope", f"cannot read the column: {error}")
        self.fields.update(position_before=position, position_after=position, c1=c1)
        if self.p.session_start is None:
            self.p.session_start = position
        stopped = self.hands_on_the_column(position, c1)
        if stopped is not None:
            return stopped
        try:
            if self.look == "check" and self._can_check():
                check = self.check()
                self.fields["check"] = check
                deadband = self.s.safety.deadband_units
                seen = math.hypot(*check.delta) if check.delta is not None else None
                if seen is not None and seen < deadband:
                    return self.result("checked", "check", f"two-frame check: |m| about {seen:.1f} units, "
                                       f"inside the deadband ({deadband:g})")
            before = self.measure("before")
        except C1RestoreFailed as error:
            self.state = self.p.state.update(hold=f"C1 could not be restored: {error}")
            return self.result("hold", "c1-restore-failed", str(error))
        except LensDidNotTake as error:
            held = self.fail("lens", str(error))
            return self.result("hold" if held else "error", "lens-did-not-take", str(error))
        except (WobbleError, SourceError, ProtocolError) as error:
            return self.result("error", "wobble", str(error))
        self.fields["before"] = before
        if not before.trusted:
            outcome = {"doubtful-stack": "refused_doubtful_stack", "no-calibration": "dry_run"}.get(
                before.reason, "refused_low_confidence")
            return self.result(outcome, before.reason, before.detail)
        assert before.delta is not None
        reference = self.state.reference
        assert self.p.session_start is not None
        decision = decide(position=position, estimate=before.delta, reference=reference,
                          session_start=self.p.session_start,
                          moved_last_hour=self.p.ledger.moved_since(self.p.clock.now()),
                          settings=self.s.safety, hardware=mic.limits)
        self.fields["decision"] = decision
        self.p.journal.append("decision", action=decision.action, reason=decision.reason,
                              detail=decision.detail, target=decision.target, live=self.live)
        if not self.live:
            return self.result("dry_run", decision.reason, decision.detail)
        if decision.action == "none":
            return self.result("within_deadband", decision.reason, decision.detail)
        if decision.action == "refuse":
            return self.result("refused_limit", decision.reason, decision.detail)
        if decision.action == "hold":
            self.state = self.p.state.update(hold=decision.detail)
            self.p.journal.append("hold", reason=decision.detail)
            return self.result("hold", decision.reason, decision.detail)
        return self.correct(position, before, decision)

    def correct(self, position: Pair, before: Measurement, decision: Decision) -> CycleResult:
        """Move, read back, measure again, keep or roll back."""
        assert decision.target is not None
        target: Pair = (int(decision.target[0]), int(decision.target[1]))
        try:
            read = self.move("move", position, target)
        except ProtocolError as error:
            held = self.fail("protocol", f"move failed: {error}")
            self.fields["position_after"] = self._read_position()
            return self.result("hold" if held else "error", "move-failed", str(error))
        self.fields.update(position_after=read, applied=(read[0] - position[0], read[1] - position[1]))
        if motor_fault(target, read, self.s.safety):
            why = f"commanded {target}, the motor reads {read}"
            if math.dist(read, position) > self.s.safety.motor_tolerance_units:
                why += self._move_back(read, position)
            held = self.fail("motor", why)
            return self.result("hold" if held else "error", "motor-fault", why)
        try:
            after = self.measure("verify")
        except C1RestoreFailed as error:
            self.state = self.p.state.update(hold=f"C1 could not be restored: {error}")
            return self.result("hold", "c1-restore-failed", str(error))
        except (WobbleError, SourceError, ProtocolError) as error:
            return self.rollback(position, read, f"the verification wobble failed: {error}")
        self.fields["after"] = after
        m_before = before.misalignment or 0.0
        m_after = after.misalignment
        if m_after is None and after.model_delta is not None and all(map(math.isfinite, after.model_delta)):
            m_after = math.hypot(*after.model_delta)
        if m_after is None:
            return self.rollback(position, read, f"the result could not be measured ({after.reason})")
        if is_worse(m_before, m_after, self.s.safety):
            return self.rollback(position, read, f"misalignment {m_before:.1f} -> {m_after:.1f} units: worse")
        assert self.p.failures is not None
        self.p.failures.success()
        if self.state.reference is None:
            self.state = self.p.state.update(reference=read, reference_set_by="first verified correction")
            self.p.journal.append("reference", position=read, set_by="first verified correction")
        return self.result("corrected", decision.reason,
                           f"{decision.detail}; misalignment {m_before:.1f} -> {m_after:.1f} units")

    def rollback(self, origin: Pair, now_at: Pair, why: str) -> CycleResult:
        try:
            read = self.move("rollback", now_at, origin)
        except ProtocolError as error:
            self.fields["position_after"] = self._read_position()
            held = self.fail("protocol", f"rollback failed: {error}")
            return self.result("hold" if held else "error", "rollback-failed",
                               f"{why}; rollback failed: {error}")
        self.fields["position_after"] = read
        if motor_fault(origin, read, self.s.safety):
            why += f"; the rollback to {origin} ended at {read}"
        held = self.fail("rollback", why)
        return self.result("hold" if held else "rolled_back", "rolled-back", f"{why}; moved back to {read}")

    def _move_back(self, now_at: Pair, origin: Pair) -> str:
        """After a motor fault: back to where the cycle found it (a position nobody estimated)."""
        try:
            read = self.move("rollback", now_at, origin)
        except ProtocolError as error:
            self.fields["position_after"] = self._read_position()
            return f"; moving back failed: {error}"
        self.fields["position_after"] = read
        return f"; moved back to {read}"

    def _read_position(self) -> Pair | None:
        try:
            return _pair(self.p.microscope.aperture())
        except ProtocolError:
            return None

    def _remember(self, result: CycleResult) -> CycleResult:
        """Where the daemon leaves the column, for the next cycle's hands-on check."""
        changes: dict[str, Any] = {}
        if result.position_after is not None:
            changes["last_position"] = result.position_after
        if result.c1 is not None:
            changes["last_c1"] = result.c1
        if changes:
            self.state = self.p.state.update(**changes)
        return result


def can_check(parts: Parts) -> bool:
    """Whether these parts can look with the two-frame check: it is the classical estimator's, so
    it needs the calibration and an `estimator.use` that trusts it (the scheduling policy caps the
    wait at `check_interval_s` only when it can)."""
    return parts.estimator.calibration is not None and parts.settings.estimator.use != "model"


def run_cycle(parts: Parts, *, forced: bool = False, look: str = "full") -> CycleResult:
    """One cycle; `forced` (temalign once) runs even when paused (moving if the mode is live) or in
    hold (measuring only: a hold never moves). `look` "check" starts with the two-frame check and
    stops there when it sees the column aligned (outcome "checked"); when the check sees a
    misalignment or cannot tell, the full wobble follows in the same cycle. Without a calibration,
    with `estimator.use: model`, and when not live, the look is always full."""
    cycle = _Cycle(parts, forced, look)
    result = cycle.run()
    parts.journal.append("cycle", **result.to_json())
    return result
