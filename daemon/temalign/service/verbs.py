"""The control verbs (docs/safety.md invariant 5: a person is always in charge): what `temalign
status|pause|resume|once|dry-run|hold clear|calibrate|reference set|model ...` do to a running daemon, as a
dispatch table, whether they come over the control socket or the HTTP endpoint (one way to do
each thing). Each request is audited in the journal with its caller before it runs.

A verb returns its own result; or a `Said` sentence, which the reply carries as `message` beside
the status after it ("already paused until resumed; kept", "no hold to clear"), with `changed`
false when the request had nothing to do; or None for the status alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import structlog

from temalign.act.correct import read_position
from temalign.decide.column import aperture_moved, c1_changed, is_paused
from temalign.errors import TemalignError
from temalign.estimate.calibration import save_calibration
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal, JournalError
from temalign.record.state import RunState, StateChanges
from temalign.service import status as status_report
from temalign.service.calibrate import DEFAULT_STEP_UNITS, STEP_RANGE
from temalign.service.calibrate import calibrate as measure_calibration
from temalign.service.control import Caller
from temalign.timetext import format_duration, format_when, iso_time
from temalign.values import JsonObject, finite, finite_float

if TYPE_CHECKING:
    from temalign.service.daemon import Daemon

log = structlog.get_logger("temalign")
Reply = JsonObject
Pair = tuple[int, int]


class Said(NamedTuple):
    """What a verb tells its caller, and whether it changed anything (an acquisition script resumes
    only a pause it made: temalign.client.Client.paused)."""

    text: str
    changed: bool = True


Verb = Callable[["Daemon", JsonObject, Caller], "Reply | Said | None"]
LOOK_ONLY = frozenset({"status", "model-status"})
"""Verbs that change nothing: answered even when the disk refuses their audit record (the journal
keeps it in memory until the disk takes it), since status is how a person learns the disk is full."""
MAX_REASON_CHARS = 500
"""A pause reason is a few words shown by status; a longer one is a mistake (or an attack)."""


def handle(daemon: Daemon, verb: str, args: JsonObject, caller: Caller) -> Reply:
    """A control request, audited with its caller; raises ValueError to refuse it."""
    journal: Journal = daemon.journal
    try:
        journal.append("control", verb=verb, args=args, uid=caller.uid, via=caller.via)
    except JournalError:
        if verb not in LOOK_ONLY:
            raise
        # kept by the journal and written once the disk takes it; a person must be able to see
        # why the daemon is in hold when the disk is full
    run = VERBS.get(verb)
    if run is None:
        raise ValueError(f"unknown request {verb!r} (known: {', '.join(sorted(VERBS))})")
    reply = run(daemon, args, caller)
    if isinstance(reply, dict):
        return reply
    daemon.publish_state()
    report = status(daemon, {}, caller)
    return report if reply is None else {"message": reply.text, "changed": reply.changed, **report}


def status(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    """Everything `temalign status` shows (service.status)."""
    return status_report.status(daemon)


MAX_PAUSE_S = 366 * 86400.0
"""A timed pause longer than a year is a typo; an open-ended one is `pause` without a time."""


def _flag(args: JsonObject, name: str, verb: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{verb}: {name} must be true or false, got {value!r}")
    return value


def pause(daemon: Daemon, args: JsonObject, caller: Caller) -> Said:
    """Pause, until resumed or for `for_s`. A shorter pause does not replace a longer or an
    open-ended one unless `replace` is true: two people (or a person and an acquisition script)
    pausing for their own reasons must not cut each other's pause short."""
    seconds, reason = args.get("for_s"), args.get("reason")
    replace = _flag(args, "replace", "pause")
    if seconds is not None and not (finite(seconds) and 0 < float(seconds) <= MAX_PAUSE_S):
        raise ValueError(f"pause: for_s must be a number of seconds, more than 0 and at most "
                         f"{MAX_PAUSE_S:.0f} (a year), or absent for a pause until resumed; got {seconds!r}")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS):
        raise ValueError(f"pause: reason must be text of at most {MAX_REASON_CHARS} characters")
    now = daemon.wall()
    until = math.inf if seconds is None else now + float(seconds)
    asked = "until resumed" if seconds is None else f"for {format_duration(float(seconds))}"
    st = daemon.run_state()
    if is_paused(st.paused_until, now) and st.paused_until is not None and until < st.paused_until \
            and not replace:
        return Said(f"already paused {_until(st.paused_until)} ({st.pause_reason}): kept; a pause {asked} "
                    "would shorten it (`--replace` to do that)", changed=False)
    text = reason or f"paused by {caller.who}"
    daemon.store.update(paused_until=until, pause_reason=text)
    log.info("pause", until="resumed" if until == math.inf else iso_time(until), reason=text, by=caller.who)
    return Said(f"paused {'until resumed' if until == math.inf else asked + ', ' + _until(until)}"
                + (f": {reason}" if reason else ""))


def _until(epoch: float) -> str:
    return "until resumed" if epoch == math.inf else f"until {format_when(epoch)}"


def resume(daemon: Daemon, args: JsonObject, caller: Caller) -> Said:
    """The person who resumes accepts the column as it is now (after moving it by hand). With no
    pause in place it changes nothing: accepting the column then would hide a person's move from
    the next cycle."""
    st = daemon.run_state()
    in_hold = f"; still in hold ({st.hold}): `temalign hold clear`" if st.hold else ""
    if not is_paused(st.paused_until, daemon.wall()):
        return Said("not paused: nothing to resume" + in_hold, changed=False)
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
    _hands_while_paused(daemon, st, where, c1)
    daemon.store.update(**changes)
    log.info("resume", by=caller.who, was=st.pause_reason)
    return Said("resumed: the aperture and C1 are taken as they are now" + in_hold)


def _hands_while_paused(daemon: Daemon, st: RunState, where: Pair | None, c1: float | None) -> None:
    """A column a person changed while paused is journaled as a cycle would have seen it
    (hands.aperture, hands.c1), though the resume accepts it: what was true of the column before,
    a person's reference among it, may no longer be (record.stack_labels)."""
    safety = daemon.settings.safety
    moved = where is not None and aperture_moved(where, st.last_position, safety.motor_tolerance_units)
    if moved:
        daemon.journal.append("hands.aperture", position=where, expected=st.last_position, via="resume")
    if c1 is not None and c1_changed(c1, st.last_c1, safety.c1_tolerance) is not None:
        daemon.journal.append("hands.c1", c1=c1, expected=st.last_c1, via="resume")


MODES = {True: "on: measures and reports, never moves", False: "off: live, corrects the aperture"}


def dry_run(daemon: Daemon, args: JsonObject, caller: Caller) -> Said:
    """Switch dry-run on or off; without `on`, say which it is."""
    on = args.get("on")
    now_on = daemon.run_state().mode == "dry-run"
    if on is None:
        return Said("dry-run is " + MODES[now_on], changed=False)
    if not isinstance(on, bool):
        raise ValueError("dry-run needs on: true or false (or nothing, to show the mode)")
    if on == now_on:
        return Said("dry-run is already " + MODES[on], changed=False)
    daemon.store.update(mode="dry-run" if on else "live")
    log.info("dry-run", on=on, by=caller.who)
    return Said("dry-run " + MODES[on])


def hold_clear(daemon: Daemon, args: JsonObject, caller: Caller) -> Said:
    hold = daemon.run_state().hold
    if hold is None:
        return Said("no hold to clear", changed=False)
    daemon.store.update(hold=None)
    daemon.parts.failure_count.success()
    log.info("hold cleared", was=hold, by=caller.who)
    return Said(f"hold cleared (it was: {hold})")


def once(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    force = _flag(args, "force", "once")
    _, summary = daemon.cycle_reported(asked="force" if force else "once", progress=caller.progress)
    return status_report.public_cycle(summary)


def reference_set(daemon: Daemon, args: JsonObject, caller: Caller) -> Said:
    where = read_position(daemon.microscope)
    if where is None:
        raise ValueError("cannot read the aperture position from the microscope")
    who = caller.who
    daemon.store.update(reference=where, reference_set_by=who, last_position=where)
    daemon.journal.append("reference", position=where, set_by=who)
    log.info("reference set", position=where, by=who)
    return Said(f"reference set to ({where[0]}, {where[1]}), where the aperture is now")


def calibrate(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    """Measure and store the 2 x 2 calibration between cycles (never during one)."""
    asked = args.get("step_units", DEFAULT_STEP_UNITS)
    step_units = finite_float(asked)
    if step_units is None or not STEP_RANGE[0] <= step_units <= STEP_RANGE[1]:
        raise ValueError(f"calibrate: step_units must be a number of units in [{STEP_RANGE[0]:g}, "
                         f"{STEP_RANGE[1]:g}], got {asked!r}")
    s = daemon.settings

    def step(text: str) -> None:
        log.info("calibrate", step=text)
        caller.say(text)

    with daemon.lock:
        op = daemon.journal.intent("calibration", step_units=step_units)
        log.info("calibrate", step_units=step_units, by=caller.who)
        try:
            cal = measure_calibration(daemon.microscope, daemon.parts.source, wobble_settings=s.wobble,
                                      quality_settings=s.quality, clock=daemon.clock, memory=daemon.memory,
                                      step_units=step_units, model=daemon.estimator.model, progress=step)
        except (TemalignError, ProtocolError) as error:
            daemon.journal.outcome(op, "calibration", ok=False, error=str(error))
            _remember_position(daemon)
            log.error("calibration failed", error=str(error))
            raise TemalignError(f"calibration failed: {error}") from None
        save_calibration(s.paths.state_dir, cal)
        daemon.use_calibration(cal)
        daemon.journal.outcome(op, "calibration", ok=True, calibration=cal.to_json())
        _remember_position(daemon)
    log.info("calibrated", matrix=[[float(f"{v:.4g}") for v in row] for row in cal.array.tolist()])
    return cal.to_json()


def _remember_position(daemon: Daemon) -> None:
    """The calibration moved the aperture on purpose and put it back: where it is now is where
    the daemon left it."""
    where = read_position(daemon.microscope)
    if where is not None:
        daemon.store.update(last_position=where)


def _models(daemon: Daemon, text: str | None, unchanged: str) -> Reply:
    """A model verb's reply: what it did (or `unchanged`, when it had nothing to do) beside
    `temalign model status`."""
    changed = text is not None
    if changed:
        log.info("model", said=text)
    return {"message": text if text is not None else unchanged, "changed": changed,
            **daemon.models.status(daemon.parts)}


def model_status(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    """`temalign model status`: the live model and why, the candidate and its evidence, the previous."""
    return daemon.models.status(daemon.parts)


def model_shadow(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    """`temalign model shadow PATH`: a candidate read beside the live model on every stack."""
    with daemon.lock:
        text = daemon.models.start_shadow(daemon.parts, args.get("path"), daemon.wall())
    return _models(daemon, text, "that candidate is in shadow already: kept")


def model_shadow_stop(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    with daemon.lock:
        text = daemon.models.stop_shadow(daemon.parts)
    return _models(daemon, text, "no candidate in shadow: nothing to stop")


def model_promote(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    """`temalign model promote`: refused unless the shadow's evidence allows (decide.promotion)."""
    with daemon.lock:
        text = daemon.models.promote(daemon.parts, daemon.wall(), caller.who)
    return _models(daemon, text, "")


def model_rollback(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    with daemon.lock:
        text = daemon.models.rollback(daemon.parts, daemon.wall(), caller.who)
    return _models(daemon, text, "")


def model_reset(daemon: Daemon, args: JsonObject, caller: Caller) -> Reply:
    with daemon.lock:
        text = daemon.models.reset(daemon.parts, daemon.wall(), caller.who)
    return _models(daemon, text, "the config's estimator.model is live already: nothing to reset")


VERBS: dict[str, Verb] = {
    "status": status,
    "pause": pause,
    "resume": resume,
    "dry-run": dry_run,
    "hold-clear": hold_clear,
    "once": once,
    "calibrate": calibrate,
    "reference-set": reference_set,
    "model-status": model_status,
    "model-shadow": model_shadow,
    "model-shadow-stop": model_shadow_stop,
    "model-promote": model_promote,
    "model-rollback": model_rollback,
    "model-reset": model_reset,
}
