"""A cycle in one short line for a person: outcome, |m| before and after, the move.

The same line is the console log's per cycle (record.logs), the `summary` field of the JSON one,
the first line of `temalign once`, and each cycle in `status` and `history`: one wording, read
from the cycle's JSON (record.result.CycleResult.to_json, or a journal "cycle" entry)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DETAIL_CHARS = 120
"""Longer details are cut in the one-line forms; the JSON and `once` show them whole."""


def units(value: object) -> str | None:
    """A motor-unit figure to one decimal; None for a missing or non-finite one."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.1f}"
    return None


def pair(value: object, signed: bool = False) -> str | None:
    """(x, y) as `(120, -40)` (or `(+52, -41)` for a move); None for anything else."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    form = "{:+d}" if signed else "{:d}"
    return "(" + ", ".join(form.format(round(v)) for v in value) + ")"


def shorten(text: object, limit: int = DETAIL_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _m(measurement: object) -> str | None:
    return units(measurement.get("misalignment")) if isinstance(measurement, Mapping) else None


def cycle_summary(cycle: Mapping[str, object]) -> str:
    """`corrected: |m| 68.1 -> 4.0, moved (+52, -41)`, `checked: |m| 3.1 (two-frame check), no move`,
    `skipped (paused): ...`: what a person wants from a cycle, without its figures' plumbing."""
    outcome = str(cycle.get("outcome"))
    reason = str(cycle.get("reason") or "")
    before, after = _m(cycle.get("before")), _m(cycle.get("after"))
    moved = pair(cycle.get("applied"), signed=True)
    if outcome == "checked":
        check = cycle.get("check")
        size = units(check.get("misalignment")) if isinstance(check, Mapping) else None
        return f"checked: |m| {size or '?'} by the two-frame check, no move"
    if outcome == "corrected":
        return f"corrected: |m| {before or '?'} -> {after or '?'}, moved {moved or '?'}"
    if outcome == "rolled_back":
        return (f"rolled_back: |m| {before or '?'} -> {after or 'unknown'} after moving {moved or '?'}; "
                f"moved back ({reason})")
    if (before is not None and outcome in ("within_deadband", "dry_run")) or outcome.startswith("refused"):
        decision = cycle.get("decision")
        step = pair(decision.get("step"), signed=True) if isinstance(decision, Mapping) else None
        would = f", would move {step}" if outcome == "dry_run" and step else ""
        why = f" ({reason})" if outcome != "within_deadband" else ""
        estimate = f"|m| {before}" if before is not None else "no estimate"
        return f"{outcome}{why}: {estimate}{would}, no move"
    return f"{outcome} ({reason}): {shorten(cycle.get('detail'))}"
