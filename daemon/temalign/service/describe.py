"""The status and a cycle in words, for `temalign status`, `once` and `history`: what a person at
the column reads, with no Python values in it (no `None`, no tuples' reprs) and wall-clock times
in the local zone, with the date when it is not today."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from temalign.record.summary import cycle_summary, pair, units
from temalign.timetext import format_duration, format_when
from temalign.values import JsonObject

LAST_CYCLES_SHOWN = 5


def when(iso: object) -> str | None:
    """An ISO 8601 time from the daemon as `14:05:35` (today) or `2025-06-02 14:05:35`."""
    if not isinstance(iso, str):
        return None
    try:
        return format_when(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return None


def headline(s: Mapping[str, object]) -> str:
    """The first line: running or not moving, and why (hold, pause, dry-run)."""
    if s.get("hold"):
        line = f"temalign: in hold: {s['hold']} (`temalign hold clear` once the cause is fixed)"
        return line + ("; also paused" if s.get("paused") else "")
    if s.get("paused"):
        reason = s.get("pause_reason") or "paused"
        until = when(s.get("paused_until"))
        if until is None:
            return f"temalign: paused until resumed: {reason}"
        left = s.get("pause_left_s")
        rest = f" ({format_duration(float(left))} left)" if isinstance(left, int | float) else ""
        return f"temalign: paused until {until}{rest}: {reason}"
    if s.get("mode") == "dry-run":
        return "temalign: running in dry-run: measures and reports, never moves (`temalign dry-run off`)"
    if s.get("measures_only"):
        return f"temalign: running, live, but measures only: {s.get('calibration_note')}"
    return "temalign: running, live: corrects the aperture"


def describe_status(s: JsonObject) -> str:
    """The status as a few lines a person reads at the column."""
    lines = [str(s.get("headline") or headline(s))]
    uptime, started = s.get("uptime_s"), when(s.get("started_at"))
    if isinstance(uptime, int | float) and started:
        lines.append(f"pid {s.get('pid')}, up {format_duration(uptime)} (since {started}), "
                     f"temalign {s.get('version')}")
    cycles = s.get("last_cycles") or []
    if cycles:
        lines.append(f"last cycle {when(cycles[0].get('time')) or ''}: {cycle_summary(cycles[0])}")
    else:
        lines.append("last cycle: none yet")
    lines.append(_misalignment(s))
    lines.append(_next_cycle(s))
    lines.append(_model(s))
    lines.append(_reference(s))
    lines.append(_stack_store(s.get("stack_store")))
    lim = s.get("limits") or {}
    lines.append(f"limits: window ±{lim.get('window_units'):g}, "
                 f"excursion {lim.get('max_excursion_units'):g}, "
                 f"step {lim.get('max_step_units'):g}, deadband {lim.get('deadband_units'):g}, "
                 f"gain {lim.get('gain'):g}; moved {s.get('moved_last_hour_units'):g} of "
                 f"{lim.get('rate_limit_units_per_hour'):g} units this hour")
    if len(cycles) > 1:
        lines.append("last cycles:")
        lines.extend(f"  {when(c.get('time')) or '?'}  {cycle_summary(c)}"
                     for c in cycles[:LAST_CYCLES_SHOWN])
    return "\n".join(lines)


def _stack_store(store: object) -> str:
    """`stack store: 120 stacks, 0.81 of 2.00 GB` or `...; stopped: low disk space ...`."""
    if not isinstance(store, Mapping) or not store.get("enabled"):
        return "stack store: off (store.enabled: false)"
    size, limit = store.get("bytes"), store.get("max_bytes")
    figures = (f"{store.get('stacks')} stacks, {size / 1e9:.2f} of {limit / 1e9:.2f} GB in {store.get('dir')}"
               if isinstance(size, int) and isinstance(limit, int) else "?")
    stopped = store.get("stopped")
    return f"stack store: {figures}" + (f"; stopped: {stopped}" if stopped else "")


def _misalignment(s: Mapping[str, object]) -> str:
    est = s.get("misalignment")
    column = s.get("column") if isinstance(s.get("column"), Mapping) else {}
    assert isinstance(column, Mapping)
    if isinstance(est, Mapping):
        size = units(est.get("misalignment"))
        figures = [f"{name} {pair(est.get(name), signed=True)}" for name in ("model", "classical")
                   if pair(est.get(name)) is not None]
        line = (f"misalignment: {size + ' units' if size else 'unknown'} at {when(est.get('time')) or '?'} "
                f"({est.get('stage')}{'; ' + ', '.join(figures) if figures else ''})")
    else:
        line = "misalignment: no estimate yet"
    if not column.get("read"):
        return line + f"; the column was not read now ({column.get('why')})"
    if isinstance(est, Mapping) and est.get("stale"):
        moved = est.get("moved_since_units")
        why = [f"the aperture has moved {units(moved)} units since, to {pair(column.get('aperture'))}"
               ] if isinstance(moved, int | float) and moved > 0 else []
        why += ["C1 was changed since"] if column.get("c1_changed") else []
        line += "; stale: " + " and ".join(why)
    elif isinstance(est, Mapping):
        line += "; the aperture has not moved since"
    if column.get("aperture_moved") and not (isinstance(est, Mapping) and est.get("stale")):
        line += (f"; the aperture is at {pair(column.get('aperture'))}, {units(column.get('moved_units'))} "
                 "units from where the daemon left it")
    return line


def _next_cycle(s: Mapping[str, object]) -> str:
    at = s.get("next_cycle_at")
    if not isinstance(at, str):
        return "next cycle: none scheduled"
    try:
        seconds = datetime.fromisoformat(at).timestamp() - datetime.now().timestamp()
    except ValueError:
        seconds = math.nan
    look = "a two-frame check" if s.get("next_look") == "check" else "a full wobble"
    line = f"next cycle: {when(at)} (in {format_duration(max(seconds, 0.0))}), {look}"
    if s.get("hold"):
        line += "; skipped in hold"
    elif s.get("paused"):
        line += "; skipped while paused"
    return line


def _model(s: Mapping[str, object]) -> str:
    model = s.get("model") if isinstance(s.get("model"), Mapping) else {}
    assert isinstance(model, Mapping)
    trained = f", trained {model['trained']}" if model.get("trained") else ""
    promoted = f", {model['why']}" if model.get("source") == "promoted" else ""
    shadow = f"; {model['shadow']} in shadow" if model.get("shadow") else ""
    line = (f"model: {model.get('file')} ({model.get('preprocess')}{trained}{promoted}), "
            f"estimator.use {s.get('estimator_use')}{shadow}")
    return line + ("; calibrated" if s.get("calibrated") and not s.get("calibration_note")
                   else f"; {s.get('calibration_note') or 'not calibrated'}")


def _reference(s: Mapping[str, object]) -> str:
    where = pair(s.get("reference"))
    if where is None:
        return "reference: none yet (the first verified correction sets it, or `temalign reference set`)"
    return f"reference: {where}, set by {s.get('reference_set_by') or 'unknown'}"


def describe_cycle(c: JsonObject) -> str:
    """One cycle for `temalign once`: the summary line, then why, the estimates and the positions."""
    lines = [cycle_summary(c)]
    if c.get("detail"):
        lines.append(f"  why: {c['detail']}")
    for label, key in (("estimate", "before"), ("after the move", "after")):
        m = c.get(key)
        if not isinstance(m, Mapping):
            continue
        figures = [f"{name} {pair(m.get(name), signed=True)}" for name in ("model", "classical")
                   if pair(m.get(name)) is not None]
        confidence = m.get("confidence")
        conf = f", confidence {confidence:.2f}" if isinstance(confidence, int | float) else ""
        size = units(m.get("misalignment"))
        lines.append(f"  {label}: |m| {size or 'unknown'}"
                     f"{' (' + ', '.join(figures) + ')' if figures else ''}{conf}; "
                     f"{'trusted' if m.get('trusted') else 'not trusted: ' + str(m.get('reason'))}")
    start, end = pair(c.get("position_before")), pair(c.get("position_after"))
    if start:
        lines.append(f"  aperture: {start}" + (f" -> {end}" if end and end != start else ", not moved"))
    return "\n".join(lines)
