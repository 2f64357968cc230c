"""Durations and wall-clock times as a person writes and reads them: `20s`, `10m`, `2h`, `1d`, `1h30m`;
"14:05:35" today, "2025-06-02 14:05:35" on another day; ISO 8601 with the UTC offset for programs.

A duration always carries its unit: a bare number is refused, not guessed (`pause --for 20` was
taken as seconds by someone who meant minutes). No library was worth a dependency for this:
pytimeparse is unmaintained and humanfriendly takes a bare number as seconds.

Standard library only, and Python 3.8 syntax: temalign.client imports it on acquisition PCs
(Windows, old Pythons) that have nothing else of temalign."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime

UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
"""Each unit and its seconds, longest first: the order a duration's parts must come in."""
_SECONDS = dict(UNITS)
_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)")
EXAMPLES = "20s, 10m, 2h, 1d or 1h30m"


def parse_duration(text: str) -> float:
    """`20s`, `10m`, `2h`, `1d`, `1h30m`, `1.5h` -> seconds (more than 0). ValueError naming the
    text otherwise: a bare number (no unit), an unknown unit, units out of order or repeated."""
    if not isinstance(text, str):
        raise ValueError(f"not a duration: {text!r} (examples: {EXAMPLES})")
    cleaned = text.strip().lower()
    if re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", cleaned):
        raise ValueError(f"{text.strip()!r} has no unit: write {cleaned}s, {cleaned}m, {cleaned}h or "
                         f"{cleaned}d (a bare number is not guessed)")
    total, position, last_rank = 0.0, 0, -1
    while position < len(cleaned):
        match = _PART.match(cleaned, position)
        if match is None or match.group(2) not in _SECONDS:
            raise ValueError(f"not a duration: {text!r} (examples: {EXAMPLES})")
        rank = [unit for unit, _ in UNITS].index(match.group(2))
        if rank <= last_rank:
            raise ValueError(f"not a duration: {text!r} (units from the longest to the shortest, each "
                             f"once, e.g. 1h30m)")
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        last_rank, position = rank, match.end()
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"not a duration: {text!r} (a time longer than 0, e.g. {EXAMPLES})")
    return total


def format_duration(seconds: float) -> str:
    """A duration in at most two units, in the form parse_duration reads: `45s`, `10m 5s`, `2h`,
    `1d 3h`."""
    if not math.isfinite(seconds):
        return "for ever"
    left = max(0, round(seconds))
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    counts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    first = next((i for i, (count, _) in enumerate(counts) if count), 3)
    shown = [f"{count}{unit}" for count, unit in counts[first:first + 2] if count]
    return " ".join(shown) or "0s"


def format_when(epoch: float, now: float | None = None) -> str:
    """A wall-clock time in the local zone: `14:05:35` today, `2025-06-02 14:05:35` on another day."""
    when = datetime.fromtimestamp(epoch)
    today = datetime.fromtimestamp(time.time() if now is None else now).date()
    return when.strftime("%H:%M:%S" if when.date() == today else "%Y-%m-%d %H:%M:%S")


def iso_time(epoch: float) -> str:
    """ISO 8601 with the local UTC offset, to the second: `2025-06-02T14:05:35+02:00`."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
