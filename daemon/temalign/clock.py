"""One clock under every wait (settle, interval, deadlines), so the same code runs in real time,
faster than real time (demo, tests over TCP) or stepped by hand (the session benchmark)."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds of the clock's own time (twin time for the twin's clocks)."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def wall_seconds(self, seconds: float) -> float:
        """How long `seconds` of this clock take on the wall clock: what a timer outside the clock
        (the scheduler's, a deadline) must wait for them."""
        ...


class RealClock:
    """Wall time; `now()` counts from the clock's creation."""

    def __init__(self) -> None:
        self._origin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._origin

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wall_seconds(self, seconds: float) -> float:
        return seconds


class ScaledClock:
    """Time that runs `scale` times faster than the wall clock (scale 1 is real time)."""

    def __init__(self, scale: float = 1.0, start: float = 0.0) -> None:
        if not scale > 0:
            raise ValueError(f"time scale must be > 0, got {scale}")
        self.scale = float(scale)
        self._start = float(start)
        self._origin = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._origin) * self.scale

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.scale)

    def wall_seconds(self, seconds: float) -> float:
        return seconds / self.scale


class SteppedClock:
    """Time that moves only when advanced; `sleep` advances it, so code that waits on this clock
    runs as fast as it computes and every run repeats exactly."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a stepped clock cannot go back ({seconds} s)")
        with self._lock:
            self._t += seconds
            return self._t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def wall_seconds(self, seconds: float) -> float:
        """A stepped clock has no rate against the wall: its seconds are taken as wall seconds."""
        return seconds


def clock_for_scale(scale: float | None) -> Clock:
    """The clock a time scale names: None or 0 is stepped, 1 is real time, anything else scaled."""
    if not scale:
        return SteppedClock()
    return ScaledClock(scale)
