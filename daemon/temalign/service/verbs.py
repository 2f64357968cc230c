"""The control verbs (docs/safety.md invariant 5: a person is always in charge): what `temalign
status|pause|resume|once|dry-run|hold clear|calibrate|reference set` do to a running daemon, as a
dispatch table. Each request is audited in the journal with the peer's uid before it runs.

A verb returns its own result, or None for "the status after it" (what the CLI shows)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from temalign.act.correct import read_position
from temalign.decide.column import is_paused
from temalign.errors import TemalignError
from temalign.estimate.calibration import save_calibration
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal
from temalign.record.state import StateChanges
from temalign.service.calibrate import STEP_RANGE
from temalign.service.calibrate import calibrate as measure_calibration
from temalign.values import JsonObject, finite, finite_float

if TYPE_CHECKING:
    from temalign.service.daemon import Daemon

Reply = JsonObject
Verb = Callable[["Daemon", JsonObject, "int | None"], "Reply | None"]


def handle(daemon: Daemon, verb: str, args: JsonObject, uid: int | None) -> Reply:
    """A control request, audited with the peer's uid; raises ValueError to refuse it."""
    journal: Journal = daemon.journal
    journal.append("control", verb=verb, args=args, uid=uid)
    run = VERBS.get(verb)
    if run is None:
        raise ValueError(f"unknown request {verb!r} (known: {', '.join(sorted(VERBS))})")
    reply = run(daemon, args, uid)
    if reply is not None:
        return reply
    daemon.publish_state()
    return status(daemon, {}, uid)


def status(daemon: Daemon, args: JsonObject, uid: int | None) -> Reply:
    """Everything `temalign status` shows."""
    st = daemon.run_state()
    s = daemon.settings
    paused = is_paused(st.paused_until, daemon.wall())
    parts = daemon.parts
    return {
        "state": daemon.state_name(), "mode": st.mode, "hold": st.hold,
        "paused": paused, "paused_until": None if not paused or st.paused_until == math.inf
        else st.paused_until, "pause_reason": st.pause_reason if paused else None,
        "reference": st.reference, "reference_set_by": st.reference_set_by,
        "last_position": st.last_position, "session_start": parts.session_start,
        "calibrated": daemon.estimator.calibration is not None,
        "calibration_note": daemon.calibration_note,
        "model": daemon.estimator.model.identity,
        "limits": s.safety.model_dump(mode="json"),
        "interval_s": s.schedule.interval_s,
        "moved_last_hour_units": round(parts.ledger.moved_since(daemon.clock.now()), 1),
        "failures_in_a_row": parts.failure_count.count,
        "misalignment": last_estimate(daemon.last),
        "last_cycles": daemon.last,
    }


def last_estimate(cycles: list[JsonObject]) -> JsonObject | None:
    """The newest cycle's estimate (each estimator's, the one used, |m|), or None. A cycle that
    stopped at the two-frame check has the classical estimator's alone."""
    for cycle in cycles:
        check = cycle.get("check")
        if cycle.get("outcome") == "checked" and check and check.get("misalignment") is not None:
            return {"misalignment": check["misalignment"], "delta": check["delta"], "model": None,
                    "classical": check["delta"], "confidence": None, "trusted": True,
                    "reason": "two-frame check", "at_cycle_start": cycle["started"]}
        before = cycle.get("before")
        if before and before.get("model") is not None:
            keys = ("misalignment", "delta", "model", "classical", "confidence", "trusted", "reason")
            return {k: before.get(k) for k in keys} | {"at_cycle_start": cycle["started"]}
    return None


MAX_PAUSE_S = 366 * 86400.0
"""A timed pause longer than a year is a typo; an open-ended one is `pause` without a time."""


def pause(daemon: Daemon, args: JsonObject, uid: int | None) -> None:
    seconds, reason = args.get("for_s"), args.get("reason")
    if seconds is not None and not (finite(seconds) and 0 < float(seconds) <= MAX_PAUSE_S):
        raise ValueError(f"pause: for_s must be a number of seconds, more than 0 and at most "
                         f"{MAX_PAUSE_S:.0f} (a year), or absent for a pause until resumed; got {seconds!r}")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"pause: reason must be text, got {reason!r}")
    until = math.inf if seconds is None else daemon.wall() + float(seconds)
    text = reason or ("paused by a person" if seconds is None else f"paused for {float(seconds):.0f} s")
    daemon.store.update(paused_until=until, pause_reason=text)


def resume(daemon: Daemon, args: JsonObject, uid: int | None) -> None:
    """The person who resumes accepts the column as it is now (after moving it by hand)."""
    where = read_position(daemon.microscope)
    try:
        c1: float | None = float(daemon.microscope.c1())
    except ProtocolError:
        c1 = None
    changes: StateChanges = {"paused_until": None, "pause_reason": None}
    if where:
        changes["last_position"] = where
    if c1 is not None:
        changes["last_c1"] = c1
    daemon.store.update(**changes)


def dry_run(daemon: Daemon, args: JsonObject, uid: int | None) -> None:
    on = args.get("on")
    if not isinstance(on, bool):
        raise ValueError("dry-run needs on: true or false")
    daemon.store.update(mode="dry-run" if on else "live")


def hold_clear(daemon: Daemon, args: JsonObject, uid: int | None) -> None:
    daemon.store.update(hold=None)
    daemon.parts.failure_count.success()


def once(daemon: Daemon, args: JsonObject, uid: int | None) -> Reply:
    force = args.get("force", False)
    if not isinstance(force, bool):
        raise ValueError(f"once: force must be true or false, got {force!r}")
    return daemon.cycle(asked="force" if force else "once").to_json()


def reference_set(daemon: Daemon, args: JsonObject, uid: int | None) -> None:
    where = read_position(daemon.microscope)
    if where is None:
        raise ValueError("cannot read the aperture position from the microscope")
    who = f"person (uid {uid})"
    daemon.store.update(reference=where, reference_set_by=who, last_position=where)
    daemon.journal.append("reference", position=where, set_by=who)


def calibrate(daemon: Daemon, args: JsonObject, uid: int | None) -> Reply:
    """Measure and store the 2 x 2 calibration between cycles (never during one)."""
    asked = args.get("step_units", 60.0)
    step_units = finite_float(asked)
    if step_units is None or not STEP_RANGE[0] <= step_units <= STEP_RANGE[1]:
        raise ValueError(f"calibrate: step_units must be a number of units in [{STEP_RANGE[0]:g}, "
                         f"{STEP_RANGE[1]:g}], got {asked!r}")
    s = daemon.settings
    with daemon.lock:
        op = daemon.journal.intent("calibration", step_units=step_units)
        try:
            cal = measure_calibration(daemon.microscope, daemon.parts.source, wobble_settings=s.wobble,
                                      quality_settings=s.quality, clock=daemon.clock, memory=daemon.memory,
                                      step_units=step_units, model=daemon.estimator.model)
        except (TemalignError, ProtocolError) as error:
            daemon.journal.outcome(op, "calibration", ok=False, error=str(error))
            _remember_position(daemon)
            raise TemalignError(f"calibration failed: {error}") from None
        save_calibration(s.paths.state_dir, cal)
        daemon.use_calibration(cal)
        daemon.journal.outcome(op, "calibration", ok=True, calibration=cal.to_json())
        _remember_position(daemon)
    return cal.to_json()


def _remember_position(daemon: Daemon) -> None:
    """The calibration moved the aperture on purpose and put it back: where it is now is where
    the daemon left it."""
    where = read_position(daemon.microscope)
    if where is not None:
        daemon.store.update(last_position=where)


VERBS: dict[str, Verb] = {
    "status": status,
    "pause": pause,
    "resume": resume,
    "dry-run": dry_run,
    "hold-clear": hold_clear,
    "once": once,
    "calibrate": calibrate,
    "reference-set": reference_set,
}
