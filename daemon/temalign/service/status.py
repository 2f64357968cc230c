"""What `temalign status` and `GET /v1/status` report: the live figures a person at the column
needs, as plain JSON with wall-clock times in ISO 8601.

Live means: the last cycle's estimate as it stood when the cycle ended (after a kept correction,
the verification's |m|, not the one before the move), and whether the column is still as the
daemon left it (the aperture and C1 are read now, unless a cycle is running), so a figure the
aperture has outgrown is said to be stale rather than shown as the present one."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from temalign import __version__
from temalign.decide.column import aperture_moved, c1_changed, is_paused
from temalign.protocol.errors import ProtocolError
from temalign.record.state import RunState
from temalign.record.summary import cycle_summary
from temalign.timetext import iso_time
from temalign.values import JsonObject

if TYPE_CHECKING:
    from temalign.service.daemon import Daemon


def status(daemon: Daemon) -> JsonObject:
    """Everything `temalign status` shows (`headline` is its first line, service.describe)."""
    from temalign.service.describe import headline

    st = daemon.run_state()
    s = daemon.settings
    now = daemon.wall()
    paused = is_paused(st.paused_until, now)
    parts = daemon.parts
    column = column_now(daemon, st)
    estimate = last_estimate(daemon.last)
    if estimate is not None:
        _judge(estimate, column, s.safety.motor_tolerance_units)
    next_at, next_look = daemon.next_cycle()
    timed_pause = paused and st.paused_until is not None and st.paused_until != math.inf
    reply: JsonObject = {
        "version": __version__, "pid": os.getpid(),
        "started_at": None if daemon.started_at is None else iso_time(daemon.started_at),
        "uptime_s": None if daemon.started_at is None else round(daemon.uptime_s(), 1),
        "state": daemon.state_name(), "mode": st.mode, "hold": st.hold,
        "paused": paused,
        "paused_until": iso_time(st.paused_until) if timed_pause and st.paused_until is not None else None,
        "pause_left_s": round(st.paused_until - now, 1) if timed_pause and st.paused_until is not None
        else None,
        "pause_reason": st.pause_reason if paused else None,
        "reference": st.reference, "reference_set_by": st.reference_set_by,
        "last_position": st.last_position, "session_start": parts.session_start,
        "column": column,
        "calibrated": daemon.estimator.calibration is not None,
        "calibration_note": daemon.calibration_note,
        "measures_only": (daemon.estimator.calibration is None
                          and s.estimator.without_calibration == "dry-run"),
        "model": {**daemon.estimator.model.identity,
                  **daemon.models.live_source(s, daemon.estimator.model),
                  "shadow": None if parts.shadow is None else parts.shadow.stored.name},
        "estimator_use": s.estimator.use,
        "limits": s.safety.model_dump(mode="json"),
        "interval_s": s.schedule.interval_s,
        "next_cycle_at": None if next_at is None else iso_time(next_at),
        "next_look": next_look,
        "moved_last_hour_units": round(parts.ledger.moved_since(daemon.clock.now()), 1),
        "failures_in_a_row": parts.failure_count.count,
        "stack_store": ({"enabled": False} if daemon.stacks is None
                        else {"enabled": True, **daemon.stacks.status()}),
        "misalignment": estimate,
        "last_cycles": [public_cycle(c) for c in daemon.last],
    }
    reply["headline"] = headline(reply)
    return reply


def _judge(estimate: JsonObject, column: JsonObject, tolerance: float) -> None:
    """Mark the estimate stale when the aperture read now is not where it was measured (a person
    moved it since), or C1 was changed: the figure then describes a column that is no more."""
    at, now = estimate.get("position"), column.get("aperture")
    if not column.get("read") or at is None or now is None:
        estimate["stale"] = None  # not known
        return
    moved = math.dist(now, at)
    estimate["moved_since_units"] = round(moved, 1)
    estimate["stale"] = moved > tolerance or bool(column.get("c1_changed"))


def public_cycle(cycle: JsonObject) -> JsonObject:
    """A cycle as status shows it: its wall-clock `time`, not the clock reading `started` (a
    monotonic clock's seconds, which mean nothing to a person), and its `summary` line."""
    shown = {key: value for key, value in cycle.items() if key != "started"}
    return {"summary": cycle_summary(cycle), **shown}


def last_estimate(cycles: list[JsonObject]) -> JsonObject | None:
    """The newest cycle's estimate as the cycle left the column: the verification's after a kept
    correction, the one before the move otherwise (a rolled-back move is undone); a cycle that
    stopped at the two-frame check has the classical estimator's alone. With the aperture
    `position` it holds for (where that cycle left it). None without one."""
    for cycle in cycles:
        when = {"time": cycle.get("time"), "position": cycle.get("position_after")}
        check = cycle.get("check")
        if cycle.get("outcome") == "checked" and check and check.get("misalignment") is not None:
            return {"misalignment": check["misalignment"], "delta": check["delta"], "model": None,
                    "classical": check["delta"], "confidence": None, "trusted": True,
                    "reason": "two-frame check", "stage": "check", **when}
        keys = ("misalignment", "delta", "model", "classical", "confidence", "trusted", "reason")
        after = cycle.get("after")
        if cycle.get("outcome") == "corrected" and after and after.get("misalignment") is not None:
            return {k: after.get(k) for k in keys} | {"stage": "after the correction", **when}
        before = cycle.get("before")
        if before and before.get("model") is not None:
            return {k: before.get(k) for k in keys} | {"stage": "before any move", **when}
    return None


def column_now(daemon: Daemon, st: RunState) -> JsonObject:
    """The aperture and C1 read now, against where the daemon left them: `changed` when a person
    moved the aperture (beyond the motor tolerance) or changed C1 since. Not read while a cycle
    runs (its own moves are no news) nor while the microscope is known to be unreachable (a
    status must not wait out a connection timeout)."""
    if not daemon.microscope_up:
        return {"read": False, "why": "the microscope did not answer at the last try"}
    if not daemon.lock.acquire(blocking=False):
        return {"read": False, "why": "a cycle is running"}
    try:
        where = daemon.microscope.aperture()
        c1 = float(daemon.microscope.c1())
    except ProtocolError as error:
        return {"read": False, "why": f"the microscope did not answer: {error}"}
    finally:
        daemon.lock.release()
    aperture = (int(where.x), int(where.y))
    safety = daemon.settings.safety
    moved = aperture_moved(aperture, st.last_position, safety.motor_tolerance_units) is not None
    changed_c1 = c1_changed(c1, st.last_c1, safety.c1_tolerance) is not None
    return {"read": True, "aperture": aperture, "c1": c1, "left_at": st.last_position,
            "moved_units": (None if st.last_position is None
                            else round(math.dist(aperture, st.last_position), 1)),
            "aperture_moved": moved, "c1_changed": changed_c1, "changed": moved or changed_c1}
