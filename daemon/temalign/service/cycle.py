"""One cycle, the data's whole way: wobble, estimate, decide, act, record.

    gates (decide.column)      busy, hold, pause; then the column read and hands on it
    look                       the two-frame check (decide.envelope.check_aligned), or
    wobble + estimate          the full wobble, both estimators (estimate.combined, which asks
                               decide.stack and decide.trust)
    decide                     the motion envelope (decide.envelope.decide)
    act                        move, read back, verify, keep or roll back (act.correct)
    record                     the journal (before and after every action), the run state, the
                               CycleResult (record.result); every full wobble in the stack store
                               (record.stacks), labelled once the cycle has ended
    shadow                     a candidate model in shadow reads every full wobble beside the live
                               one and is scored on each verified outcome (service.shadow); it
                               never reaches a decision

Every safety rule is a pure function in decide/ (docs/safety.md lists them); this module only
sequences them and records what they said. Errors become outcomes: a cycle never raises for what
a microscope or an image can do, so the service keeps running (or goes to hold, which only a
person clears)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from temalign.act.correct import (
    C1_RESTORE_FAILED,
    CORRECTED,
    INTERRUPTED,
    Acted,
    Mover,
    correct,
    read_position,
)
from temalign.clock import Clock
from temalign.config.schema import Settings
from temalign.decide import column
from temalign.decide.envelope import Decision, RateLedger, check_aligned, decide
from temalign.decide.stack import narrower_wobble
from temalign.decide.verify import FailureCounter
from temalign.estimate.classical import ClassicalEstimate, classical_estimate
from temalign.estimate.combined import CombinedEstimator, Measurement
from temalign.estimate.spots import measure_stack
from temalign.frames import WobbleStack
from temalign.microscope import Microscope
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal, JournalError
from temalign.record.result import MICROSCOPE_UNREACHABLE, CycleResult
from temalign.record.stack_labels import (
    REFERENCE_SCAN_ENTRIES,
    TakenStack,
    cycle_labels,
    preferred,
    stack_meta,
)
from temalign.record.stacks import StackStore
from temalign.record.state import FIRST_CORRECTION, RunState, StateChanges, StateStore, StateWriteError
from temalign.service.shadow import Shadow, ShadowReading
from temalign.values import rounded_pair
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.errors import (
    C1RecordUnwritable,
    C1RestoreFailed,
    LensDidNotTake,
    SourceError,
    WobbleError,
    WobbleInterrupted,
    with_notes,
)
from temalign.wobble.sources import ImageSource
from temalign.wobble.stack import wobble

Pair = tuple[int, int]
CHECK_STEPS = (3, 6)
"""The check's frames: C1 as it is (nothing to settle), then the wobble's upper end: one settle
instead of seven, and the spot's walk between them is the misalignment through the calibration."""
CHECK_STEPS_BOTH_ENDS = (0, 6)
"""When the frame at C1 as it is shows no spot (an 8-bit display whose stretch turns the focused
spot's surroundings white, docs/wobble.md), the check takes both ends instead: two settles."""
CHECK_MIN_CONTRAST = 6.0
"""A check frame's spot counts only when its level stands this many noise sigmas above the
background: two frames leave no residual to judge a marginal spot by (a focused spot half hidden by
the display's stretch was found on one refresh in six, 1.5 units off), and when it cannot tell the
full wobble follows."""
MAX_CHECK_BIAS_UNITS = 30.0
"""The most the check may read beyond the full wobble at the same position and still be corrected
for it; a larger difference is not a scene's bias, and the check is then taken as it reads."""
LOOKS = ("full", "check")

CHECKED = "check"
WOBBLE_FAILED = "wobble"
LENS_DID_NOT_TAKE = "lens_did_not_take"
STATE_UNWRITABLE = "state_unwritable"
UNTRUSTED_OUTCOMES = {"doubtful_stack": "refused_doubtful_stack", "no_calibration": "dry_run"}
"""The outcome of a cycle whose estimate is not trusted, by the measurement's reason (anything
else is refused_low_confidence)."""
DECISION_OUTCOMES = {"none": "within_deadband", "refuse": "refused_limit", "hold": "hold"}


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
    check_bias: tuple[float, float] = (0.0, 0.0)
    """What the check's two frames read beyond the trusted full wobble they are part of, at the
    last such wobble: subtracted from every check. Seven frames cancel a fixed pull on the spots
    (a specimen edge dims half of every wide disc) that two frames do not: on the traced reference
    column with an edge in the beam the check read 15 to 20 units where the wobble read 4 to 6."""
    wall: Callable[[], float] = time.time
    """Wall-clock epoch seconds, for pause deadlines (a person's time, not the twin's)."""
    stacks: StackStore | None = None
    """Where every full wobble is kept (record.stacks); None keeps none. Never fatal to a cycle."""
    shadow: Shadow | None = None
    """The candidate model in shadow (service.lifecycle), or None."""

    def __post_init__(self) -> None:
        if self.failures is None:
            self.failures = FailureCounter(self.settings.safety.hold_after_failures)

    @property
    def failure_count(self) -> FailureCounter:
        assert self.failures is not None
        return self.failures


class CycleFields(TypedDict, total=False):
    """What a cycle has found out so far, for its CycleResult (record.result) whenever it ends."""

    position_before: Pair | None
    position_after: Pair | None
    c1: float | None
    before: Measurement | None
    after: Measurement | None
    decision: Decision | None
    applied: tuple[float, float] | None
    check: ClassicalEstimate | None
    stacks: tuple[str, ...]


class _Cycle:
    """The steps of one cycle over shared parts; `run()` returns its CycleResult."""

    def __init__(self, parts: Parts, asked: column.Asked, look: str) -> None:
        if look not in LOOKS:
            raise ValueError(f"look must be one of {LOOKS}, got {look!r}")
        self.p = parts
        self.s = parts.settings
        self.asked = asked
        self.look = look
        self.t0 = parts.clock.now()
        self.state: RunState = parts.state.load(self.s.schedule.mode)
        self.live = self.state.mode == "live" and self.state.hold is None
        self.fields: CycleFields = {}
        self.at: Pair | None = None
        """Where the aperture is for the next wobble: read at the start, then each move's read-back."""
        self.taken: list[tuple[TakenStack, ShadowReading | None]] = []
        """Each full wobble of this cycle, and what the candidate in shadow said of it."""

    def result(self, outcome: str, reason: str, detail: str) -> CycleResult:
        mode = "hold" if self.state.hold else self.state.mode
        duration = self.p.clock.now() - self.t0
        return CycleResult(outcome, reason, detail, mode, self.t0, duration, **self.fields)

    def run(self) -> CycleResult:
        try:
            return self._remember(self._run())
        except (JournalError, StateWriteError, C1RecordUnwritable) as error:
            return self._unwritable(error)

    def _unwritable(self, error: Exception) -> CycleResult:
        """The state directory refused a write mid-cycle (a full disk). What the daemon did is its
        own doing and stays so: where it left the aperture and C1 is kept (in memory until the disk
        takes it: record.state, record.journal), so no later cycle blames a person for the
        daemon's own move; and it goes to hold, since it cannot keep its record, until a person
        clears it once there is room."""
        where = read_position(self.p.microscope)
        try:
            c1: float | None = float(self.p.microscope.c1())
        except ProtocolError:
            c1 = None
        why = (f"the state directory could not be written during a cycle ({error}); the daemon's own "
               "position and C1 are kept and written when the disk takes them: make room, then temalign "
               "hold clear")
        changes: StateChanges = {"hold": why}
        if where is not None:
            changes["last_position"] = where
            self.fields["position_after"] = where
        if c1 is not None:
            changes["last_c1"] = c1
        try:
            self.state = self.p.state.update(**changes)
        except StateWriteError:
            self.state = self.p.state.load(self.s.schedule.mode)
        with contextlib.suppress(JournalError):
            self.p.journal.append("hold", reason=why)
        return self.result("hold", STATE_UNWRITABLE, why)

    def _run(self) -> CycleResult:
        stop = self.gates()
        if stop is not None:
            return stop
        try:
            position, c1 = self.read_column()
        except ProtocolError as error:
            return self.result("error", MICROSCOPE_UNREACHABLE, f"cannot read the column: {error}")
        stop = self.hands_on_the_column(position, c1)
        if stop is not None:
            return stop
        try:
            if self.look == "check" and self.live and can_check(self.p):
                check = self.check()
                self.fields["check"] = check
                aligned = check_aligned(check.delta, self.s.safety.deadband_units)
                if aligned is not None:
                    return self.result("checked", CHECKED, aligned)
            before = self.measure("before")
        except C1RestoreFailed as error:
            return self.hold(C1_RESTORE_FAILED, str(error), f"C1 could not be restored: {error}")
        except LensDidNotTake as error:
            held = self.fail("lens", str(error))
            return self.result("hold" if held else "error", LENS_DID_NOT_TAKE, str(error))
        except WobbleInterrupted as error:
            return self.result("skipped", error.reason, with_notes(error))
        except (WobbleError, SourceError, ProtocolError) as error:
            return self.result("error", WOBBLE_FAILED, with_notes(error))
        self.fields["before"] = before
        if not before.trusted:
            outcome = UNTRUSTED_OUTCOMES.get(before.reason, "refused_low_confidence")
            return self.result(outcome, before.reason, before.detail)
        decision = self.decide(position, before)
        if not self.live:
            return self.result("dry_run", decision.reason, decision.detail)
        if decision.action == "hold":
            return self.hold(decision.reason, decision.detail, decision.detail)
        if decision.action != "move":
            return self.result(DECISION_OUTCOMES[decision.action], decision.reason, decision.detail)
        return self.act(position, before, decision)

    # ---- the steps ------------------------------------------------------------------------------

    def gates(self) -> CycleResult | None:
        """Busy, in hold, or paused: no wobble (decide.column.may_wobble)."""
        busy = self.s.safety.busy_file
        st = self.state
        stop = column.may_wobble(busy_file=busy, busy_file_exists=busy is not None and busy.exists(),
                                 hold=st.hold, paused_until=st.paused_until, pause_reason=st.pause_reason,
                                 now_epoch=self.p.wall(), asked=self.asked)
        return None if stop is None else self.result("skipped", stop.reason, stop.detail)

    def interlock(self) -> tuple[str, str] | None:
        """The gates again, mid-cycle: a pause or the busy file that came on after the cycle
        started stops it before its next C1 step or its correction (decide.column.may_wobble),
        since the acquisition software sets them just before an exposure."""
        busy = self.s.safety.busy_file
        st = self.p.state.load(self.s.schedule.mode)
        stop = column.may_wobble(busy_file=busy, busy_file_exists=busy is not None and busy.exists(),
                                 hold=None, paused_until=st.paused_until, pause_reason=st.pause_reason,
                                 now_epoch=self.p.wall(), asked=self.asked)
        return None if stop is None else (stop.reason, stop.detail)

    def read_column(self) -> tuple[Pair, float]:
        """The aperture and C1 as they are at the cycle's start."""
        where = self.p.microscope.aperture()
        position, c1 = (int(where.x), int(where.y)), float(self.p.microscope.c1())
        self.fields.update({"position_before": position, "position_after": position, "c1": c1})
        self.at = position
        if self.p.session_start is None:
            self.p.session_start = position
        return position, c1

    def hands_on_the_column(self, position: Pair, c1: float) -> CycleResult | None:
        """A person moved the aperture or changed C1 since the last cycle (decide.column): recorded,
        and the daemon pauses (or, for the aperture, takes it as the new reference if configured)."""
        st, safety = self.state, self.s.safety
        stop = column.c1_changed(c1, st.last_c1, safety.c1_tolerance)
        if stop is not None:
            self.p.journal.append("hands.c1", c1=c1, expected=st.last_c1)
            self.state = self.p.state.update(paused_until=math.inf, pause_reason=stop.detail, last_c1=c1)
            return self.result("skipped", stop.reason, stop.detail + "; paused (temalign resume)")
        stop = column.aperture_moved(position, st.last_position, safety.motor_tolerance_units)
        if stop is None:
            return None
        self.p.journal.append("hands.aperture", position=position, expected=st.last_position)
        if safety.on_aperture_moved == "new-reference":
            self.state = self.p.state.update(reference=position, reference_set_by="person (moved it)",
                                             last_position=position)
            return None
        self.state = self.p.state.update(paused_until=math.inf, pause_reason=stop.detail,
                                         last_position=position)
        return self.result("skipped", stop.reason, stop.detail + "; paused (temalign resume)")

    def _wobble(self, label: str, steps: tuple[int, ...] | None = None,
                fraction: float | None = None) -> tuple[int, WobbleStack]:
        """One wobble (C1 restored by wobble()), its intent journaled first; a failure journaled."""
        s = self.s
        fraction = s.wobble.fraction if fraction is None else fraction
        extra = {} if steps is None else {"steps": list(steps)}
        op = self.p.journal.intent("wobble", label=label, fraction=fraction, **extra)
        try:
            stack = wobble(self.p.microscope, self.p.source, fraction=fraction,
                           settle_s=s.wobble.settle_s, clock=self.p.clock, memory=self.p.memory,
                           restore_attempts=s.wobble.restore_attempts,
                           saturation_abort_fraction=s.quality.saturation_abort_fraction, steps=steps,
                           interlock=self.interlock)
        except BaseException as error:
            self.p.journal.outcome(op, "wobble", ok=False, error=f"{type(error).__name__}: {error}")
            raise
        return op, stack

    def check(self) -> ClassicalEstimate:
        """The cheap look (CHECK_STEPS): the classical estimator on two frames; journaled like any
        wobble. It never moves anything: at or above the deadband, or when it cannot tell, the full
        wobble follows and decides."""
        calibration = self.p.estimator.calibration
        assert calibration is not None
        steps = self.p.check_steps
        op, stack = self._wobble("check", steps)
        try:
            spots = measure_stack(stack)
            clear = [spot.found and spot.level >= CHECK_MIN_CONTRAST * spot.noise for spot in spots]
            estimate = classical_estimate(stack, calibration, usable=clear, spots=spots,
                                          min_frames=len(steps))
        except ValueError as error:
            spots, clear = [], []
            estimate = ClassicalEstimate(None, None, math.nan, 0, str(error))
        read = estimate.delta
        if read is not None:
            bias = self.p.check_bias
            estimate = dataclasses.replace(estimate, delta=(read[0] - bias[0], read[1] - bias[1]))
        self.p.journal.outcome(op, "wobble", ok=True, c1=stack.c1_before, delta=rounded_pair(estimate.delta),
                               read=rounded_pair(read), bias=rounded_pair(self.p.check_bias),
                               reason=estimate.reason)
        if steps == CHECK_STEPS and len(spots) == 2 and not clear[0] and clear[1]:
            self.p.check_steps = CHECK_STEPS_BOTH_ENDS
            self.p.journal.append("check.steps", steps=list(CHECK_STEPS_BOTH_ENDS),
                                  reason="the frame at C1 as it is shows no spot: later checks take both "
                                         "ends of the wobble")
        return estimate

    def measure(self, label: str) -> Measurement:
        """One wobble and both estimators; journaled before and after. A stack doubtful only
        because its wide discs left the detector is taken again, narrower (decide.stack.
        narrower_wobble), when the model was made for that wobble too."""
        m = self._measure(label, None)
        narrower = narrower_wobble(m.quality.discs_lost_only, self.s.wobble.fraction,
                                   self.p.estimator.model.lowest_wobble)
        if narrower is not None:
            m = self._measure(f"{label}, narrower", narrower)
        return m

    def _measure(self, label: str, fraction: float | None) -> Measurement:
        op, stack = self._wobble(label, fraction=fraction)
        m = self.p.estimator.measure(stack)
        sid = self._keep(label, stack, m)
        if fraction is None:
            self._learn_check_bias(stack, m)
        self.p.journal.outcome(op, "wobble", ok=True, c1=stack.c1_before, trusted=m.trusted, reason=m.reason,
                               delta=rounded_pair(m.delta), model=rounded_pair(m.model_delta),
                               classical=rounded_pair(m.classical.delta) if m.classical else None)
        reading = None if self.p.shadow is None else self.p.shadow.read(self.p.estimator, stack, m, label)
        taken = float(stack.times[0]) if stack.times else math.nan
        self.taken.append((TakenStack(sid, label, self.at, taken, m), reading))
        return m

    def _keep(self, label: str, stack: WobbleStack, m: Measurement) -> str | None:
        """The wobble into the stack store, if there is one; its id (never fatal: record.stacks)."""
        store = self.p.stacks
        if store is None:
            return None
        try:
            meta = stack_meta(stack, m, wobble=label, cycle_started=self.t0, position=self.at,
                              wall=self.p.wall(), estimator=self.p.estimator)
        except OSError:  # the model file, read for its fingerprint, gone from under the daemon
            return None
        sid = store.put(stack, meta)
        if sid is not None:
            self.fields["stacks"] = (*self.fields.get("stacks", ()), sid)
        return sid

    def label_stacks(self, result: CycleResult) -> None:
        """What the cycle's end says was right on each of its stacks (record.stack_labels), once:
        beside each stored stack with the outcome, and as the score of the candidate in shadow and
        the live model, by the label a learner would go by (a person's reference before a verified
        one: no estimator's bias reaches the person's)."""
        store, shadow = self.p.stacks, self.p.shadow
        stored = store is not None and any(t.id is not None for t, _ in self.taken)
        if not (stored or (shadow is not None and self.taken)):
            return
        try:
            journal = self.p.journal.tail(REFERENCE_SCAN_ENTRIES)
        except (JournalError, OSError):
            journal = []  # no person's reference to be found: no reference labels
        labels = cycle_labels([t for t, _ in self.taken], outcome=result.outcome, before=result.before,
                              applied=result.applied, after=result.after, journal=journal,
                              window_s=self.s.store.reference_label_s)
        for (t, reading), said in zip(self.taken, labels, strict=True):
            if store is not None and t.id is not None:
                store.label(t.id, result.outcome, said)
            best = preferred(said)
            if shadow is not None and reading is not None and best is not None:
                shadow.verified(t.measurement, reading, best[1], by=best[0])

    def _learn_check_bias(self, stack: WobbleStack, m: Measurement) -> None:
        """What the check would have read on this trusted wobble's own frames, less what the
        wobble says: the check's bias at this position (Parts.check_bias)."""
        calibration = self.p.estimator.calibration
        spots = m.quality.spots
        measured = len(spots) == len(stack.images)
        if not (m.trusted and m.delta is not None and calibration is not None and measured):
            return
        steps = self.p.check_steps
        usable = [k in steps and spot.found and spot.level >= CHECK_MIN_CONTRAST * spot.noise
                  for k, spot in enumerate(spots)]
        try:
            would = classical_estimate(stack, calibration, usable=usable, spots=spots, min_frames=len(steps))
        except ValueError:
            return
        if would.delta is None:
            return
        bias = (would.delta[0] - m.delta[0], would.delta[1] - m.delta[1])
        self.p.check_bias = bias if math.hypot(*bias) <= MAX_CHECK_BIAS_UNITS else (0.0, 0.0)

    def decide(self, position: Pair, before: Measurement) -> Decision:
        """The motion envelope's decision on a trusted estimate; journaled."""
        assert before.delta is not None and self.p.session_start is not None
        decision = decide(position=position, estimate=before.delta, reference=self.state.reference,
                          session_start=self.p.session_start,
                          moved_last_hour=self.p.ledger.moved_since(self.p.clock.now()),
                          settings=self.s.safety, hardware=self.p.microscope.limits)
        self.fields["decision"] = decision
        self.p.journal.append("decision", action=decision.action, reason=decision.reason,
                              detail=decision.detail, target=decision.target, live=self.live)
        return decision

    def act(self, position: Pair, before: Measurement, decision: Decision) -> CycleResult:
        """Carry out the move (act.correct), then count what it did toward hold or reset the run."""
        assert decision.target is not None
        target: Pair = (int(decision.target[0]), int(decision.target[1]))
        stop = self.interlock()
        if stop is not None:
            return self.result("skipped", stop[0], f"{stop[1]}: the correction to {target} was not made")
        mover = Mover(self.p.microscope, self.p.journal, self.p.ledger, self.p.clock)

        def verify() -> Measurement:
            self.at = mover.last_read
            return self.measure("verify")

        acted: Acted = correct(mover, position=position, target=target, before=before, verify=verify,
                               safety=self.s.safety, interlock=self.interlock)
        self.fields.update({"position_after": acted.position_after, "applied": acted.applied,
                            "after": acted.after})
        if acted.reason == C1_RESTORE_FAILED:
            return self.hold(acted.reason, acted.detail, f"C1 could not be restored: {acted.detail}")
        if acted.failure is not None:
            held = self.fail(acted.failure, acted.detail)
            return self.result("hold" if held else acted.outcome, acted.reason, acted.detail)
        if acted.outcome == INTERRUPTED:
            return self.result("skipped", acted.reason, acted.detail)
        assert acted.outcome == CORRECTED
        self.p.failure_count.success()
        if self.state.reference is None and acted.position_after is not None:
            self.state = self.p.state.update(reference=acted.position_after,
                                             reference_set_by=FIRST_CORRECTION)
            self.p.journal.append("reference", position=acted.position_after, set_by=FIRST_CORRECTION)
        return self.result(CORRECTED, decision.reason, f"{decision.detail}; {acted.detail}")

    # ---- state ----------------------------------------------------------------------------------

    def hold(self, reason: str, detail: str, why: str) -> CycleResult:
        """Go to hold at once (C1 could not be restored, drift past the envelope), recorded."""
        self.state = self.p.state.update(hold=why)
        self.p.journal.append("hold", reason=why)
        return self.result("hold", reason, detail)

    def fail(self, kind: str, why: str) -> bool:
        """A failure toward hold (docs/safety.md); True when it put the daemon in hold."""
        failures = self.p.failure_count
        if failures.failure(kind):
            reason = f"{failures.count} failures in a row (last: {why})"
            self.state = self.p.state.update(hold=reason)
            self.p.journal.append("hold", reason=reason)
            return True
        return False

    def _remember(self, result: CycleResult) -> CycleResult:
        """Where the daemon leaves the column, for the next cycle's hands-on check."""
        changes: StateChanges = {}
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


def run_cycle(parts: Parts, *, asked: column.Asked = "schedule", look: str = "full") -> CycleResult:
    """One cycle, `asked` by the schedule, by `temalign once` (which runs in hold, measuring only:
    a hold never moves) or by `temalign once --force` (which also runs during a pause; nothing
    runs while the busy file exists). `look` "check" starts with the two-frame check and
    stops there when it sees the column aligned (outcome "checked"); when the check sees a
    misalignment or cannot tell, the full wobble follows in the same cycle. Without a calibration,
    with `estimator.use: model`, and when not live, the look is always full."""
    cycle = _Cycle(parts, asked, look)
    result = cycle.run()
    cycle.label_stacks(result)
    try:
        parts.journal.append("cycle", **result.to_json())
    except JournalError as error:  # kept by the journal, written once the disk takes it
        if result.reason != STATE_UNWRITABLE:
            _hold_for_the_disk(parts, error)
    return result


def _hold_for_the_disk(parts: Parts, error: JournalError) -> None:
    """The cycle's own record did not reach the disk (everything before it did): the cycle stands
    as it was, and the daemon goes to hold until a person has made room (docs/safety.md)."""
    why = (f"the state directory could not be written at the end of a cycle ({error}); the record is "
           "kept and written when the disk takes it: make room, then temalign hold clear")
    with contextlib.suppress(StateWriteError):
        parts.state.update(hold=why)
    with contextlib.suppress(JournalError):
        parts.journal.append("hold", reason=why)
