"""The aperture motor and the C1 lens as state machines in twin time.

They only compute: the caller (`Twin`) holds its lock around them and does the waiting on its
clock, so nothing here sleeps. Positions are physical (floats); what the protocol reports is
decided by the caller (the truth rounded, or the command echoed under a fault)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from temalign_twin.settings import LensSettings, MotorSettings

STREAM_MOTOR = 11


@dataclass(frozen=True)
class Motion:
    """One straight motion of the aperture from p0 at t0 to p1 at t1 (both axes together)."""

    t0: float
    t1: float
    p0: np.ndarray
    p1: np.ndarray

    def at(self, t: float) -> np.ndarray:
        if t <= self.t0 or self.t1 <= self.t0:
            return self.p0 if t < self.t1 else self.p1
        if t >= self.t1:
            return self.p1
        f = (t - self.t0) / (self.t1 - self.t0)
        position: np.ndarray = self.p0 + f * (self.p1 - self.p0)
        return position


@dataclass(frozen=True)
class MoveResult:
    """How long the caller must wait (travel + settle) and where the aperture really ends up."""

    wait_s: float
    travel_s: float
    end: np.ndarray


class Motor:
    """Integer commands, finite speed, backlash on reversal, settle time, position noise.

    Backlash: the drive and the aperture are coupled with `backlash_units` of play. Approaching
    from below (+) the aperture lands on the command; after a reversal to (-) the drive first
    takes up the play, so the aperture stays `backlash_units` short (above the command) until the
    next reversal. The start state is 'last approach from below'."""

    def __init__(self, settings: MotorSettings, start: np.ndarray, seed: int, now: float = 0.0) -> None:
        self.settings = settings
        self._seed = seed
        self._moves = 0
        self.drive = np.round(np.asarray(start, dtype=float))
        self.direction = np.ones(2)
        self.commanded = self.drive.copy()
        p = np.asarray(start, dtype=float)
        self._motion = Motion(now, now, p, p)

    def position(self, t: float) -> np.ndarray:
        """Physical aperture position at twin time t (interpolated during the latest motion)."""
        return self._motion.at(t)

    def moving(self, t: float) -> bool:
        return self._motion.t0 <= t < self._motion.t1

    def move(self, target: tuple[int, int], now: float, *, stuck: bool = False,
             overshoot: float | np.ndarray = 0.0) -> MoveResult:
        """Start a move to `target` at `now` and return where it ends and when; `overshoot`
        (units, per axis or both) carries the aperture past the target along the motion."""
        st = self.settings
        target_arr = np.asarray(target, dtype=float)
        start = self.position(now)
        step = target_arr - self.drive
        moving = step != 0
        new_dir = np.where(moving, np.sign(step), self.direction)
        reversed_axes = moving & (new_dir != self.direction)
        travel = float(np.max(np.abs(step) + reversed_axes * st.backlash_units)) / st.speed_units_per_s
        self.commanded = target_arr
        if stuck:
            end = start.copy()
        else:
            rng = np.random.default_rng([self._seed, STREAM_MOTOR, self._moves])
            noise = rng.normal(0.0, st.position_noise_units, 2) if st.position_noise_units else np.zeros(2)
            slack = np.where(new_dir < 0, st.backlash_units, 0.0)
            end = np.where(moving, target_arr + slack + noise + overshoot * new_dir, start)
            self.drive = target_arr
            self.direction = new_dir
        self._moves += 1
        self._motion = Motion(now, now + travel, start, end)
        return MoveResult(wait_s=travel + st.settle_s, travel_s=travel, end=end)


def _ramp(x: float) -> float:
    """Fraction of a lens change reached after a fraction x of the settle time: fast at first
    (eddy currents die away), exactly 1 at x = 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    return 1.0 - (1.0 - x) ** 3


class Lens:
    """C1: the value it was told (`commanded`), the value it took (`setpoint`, what `lens.get`
    reads) and the value acting on the beam (`effective(t)`, reaching the setpoint at settle_s)."""

    def __init__(self, settings: LensSettings, start: float) -> None:
        self.settings = settings
        self.commanded = float(start)
        self.setpoint = float(start)
        self._from = float(start)
        self._since = -float("inf")

    def effective(self, t: float) -> float:
        settle = self.settings.settle_s
        x = 1.0 if settle <= 0 else (t - self._since) / settle
        return self._from + (self.setpoint - self._from) * _ramp(x)

    def settled(self, t: float) -> bool:
        return t - self._since >= self.settings.settle_s

    def set(self, value: float, now: float, *, ignore: bool = False) -> None:
        """Take a new value at `now` (or, with `ignore`, acknowledge it and keep the old one)."""
        self.commanded = float(value)
        if ignore:
            return
        self._from = self.effective(now)
        self._since = now
        self.setpoint = float(value)
