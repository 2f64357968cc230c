"""Drift of the aligned position a*(t) and of the beam shift s(t): pure functions of (seed, t).

Every strategy a benchmark compares must meet the same drift whatever it asks and when, so
nothing here depends on the order of queries: the random walk and the jumps are generated in
fixed one-hour blocks, each from a generator seeded by (seed, stream, block). A block's end value
is drawn first from its own generator, so reaching hour 1000 costs one draw per earlier hour; the
path inside a block is a Brownian bridge to that end value, sampled every second and interpolated."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from temalign_twin.settings import DriftSettings

HOUR_S = 3600.0
BLOCK_S = 3600.0
STEP_S = 1.0
_STEPS = int(BLOCK_S / STEP_S)
_CACHED_BLOCKS = 8

# Generator streams; the numbers are part of the seeded behaviour, never reuse one.
STREAM_APERTURE_WALK = 1
STREAM_SHIFT_WALK = 2
STREAM_JUMPS = 3


class BrownianPath:
    """A standard 2-D Brownian motion W(t) (variance t in hours per axis), W(0) = 0, t >= 0."""

    def __init__(self, seed: int, stream: int) -> None:
        self._seed = seed
        self._stream = stream
        self._ends = [np.zeros(2)]  # W at the start of block k
        self._paths: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _rng(self, block: int, part: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, self._stream, block, part])

    def _start(self, block: int) -> np.ndarray:
        while len(self._ends) <= block:
            k = len(self._ends) - 1
            total = self._rng(k, 0).standard_normal(2) * math.sqrt(BLOCK_S / HOUR_S)
            self._ends.append(self._ends[-1] + total)
        return self._ends[block]

    def _path(self, block: int) -> np.ndarray:
        path = self._paths.get(block)
        if path is not None:
            self._paths.move_to_end(block)
            return path
        start, end = self._start(block), self._start(block + 1)
        steps = self._rng(block, 1).standard_normal((_STEPS, 2)) * math.sqrt(STEP_S / HOUR_S)
        walk = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        frac = np.linspace(0.0, 1.0, _STEPS + 1)[:, None]
        bridge: np.ndarray = start + walk - frac * walk[-1] + frac * (end - start)
        self._paths[block] = bridge
        if len(self._paths) > _CACHED_BLOCKS:
            self._paths.popitem(last=False)
        return bridge

    def __call__(self, t: float) -> np.ndarray:
        t = max(0.0, float(t))
        block = int(t // BLOCK_S)
        with self._lock:
            path = self._path(block)
        x = (t - block * BLOCK_S) / STEP_S
        i = min(int(x), _STEPS - 1)
        f = x - i
        point: np.ndarray = path[i] * (1.0 - f) + path[i + 1] * f
        return point


class JumpProcess:
    """Sudden jumps of a* (gun flashes): Poisson in time, normal per axis; sum of jumps up to t."""

    def __init__(self, seed: int, rate_per_hour: float, sigma: float) -> None:
        self._seed = seed
        self._rate = rate_per_hour
        self._sigma = sigma
        self._ends = [np.zeros(2)]
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        found = self._blocks.get(block)
        if found is None:
            rng = np.random.default_rng([self._seed, STREAM_JUMPS, block])
            n = int(rng.poisson(self._rate * BLOCK_S / HOUR_S))
            times = block * BLOCK_S + np.sort(rng.uniform(0.0, BLOCK_S, n))
            sizes = rng.normal(0.0, 1.0, (n, 2)) * self._sigma
            found = (times, sizes)
            if len(self._blocks) > 4096:
                self._blocks.clear()
            self._blocks[block] = found
        return found

    def _start(self, block: int) -> np.ndarray:
        while len(self._ends) <= block:
            k = len(self._ends) - 1
            self._ends.append(self._ends[-1] + self._block(k)[1].sum(axis=0))
        return self._ends[block]

    def total(self, t: float) -> np.ndarray:
        """Sum of all jumps at times <= t."""
        t = max(0.0, float(t))
        block = int(t // BLOCK_S)
        with self._lock:
            times, sizes = self._block(block)
            total: np.ndarray = self._start(block) + sizes[times <= t].sum(axis=0)
            return total

    def events(self, t0: float, t1: float) -> list[tuple[float, float, float]]:
        """(time, dx, dy) of the jumps in (t0, t1]."""
        out: list[tuple[float, float, float]] = []
        with self._lock:
            for block in range(int(max(t0, 0.0) // BLOCK_S), int(max(t1, 0.0) // BLOCK_S) + 1):
                times, sizes = self._block(block)
                for t, (dx, dy) in zip(times, sizes, strict=True):
                    if t0 < t <= t1:
                        out.append((float(t), float(dx), float(dy)))
        return out


class Drift:
    """a*(t) and s(t) for one seed and one set of drift knobs."""

    def __init__(self, settings: DriftSettings, seed: int) -> None:
        self.settings = settings
        self._walk_a = BrownianPath(seed, STREAM_APERTURE_WALK)
        self._walk_s = BrownianPath(seed, STREAM_SHIFT_WALK)
        self.jumps = JumpProcess(seed, settings.jump_rate_per_hour, settings.jump_sigma)

    def aligned(self, t: float) -> np.ndarray:
        """a*(t), motor units: start + linear + random walk + jumps."""
        st = self.settings
        hours = max(0.0, t) / HOUR_S
        out = np.asarray(st.aligned_start) + np.asarray(st.linear_per_hour) * hours
        if st.random_walk_per_sqrt_hour:
            out = out + st.random_walk_per_sqrt_hour * self._walk_a(t)
        if st.jump_rate_per_hour and st.jump_sigma:
            out = out + self.jumps.total(t)
        return out

    def beam_shift(self, t: float) -> np.ndarray:
        """s(t), FOV: start + linear + random walk."""
        st = self.settings
        hours = max(0.0, t) / HOUR_S
        out = np.asarray(st.beam_shift_start) + np.asarray(st.beam_shift_linear_per_hour) * hours
        if st.beam_shift_random_walk_per_sqrt_hour:
            out = out + st.beam_shift_random_walk_per_sqrt_hour * self._walk_s(t)
        return out


@dataclass(frozen=True)
class _Segment:
    since: float
    drift: Drift
    offset_a: np.ndarray
    offset_s: np.ndarray


class DriftTrack:
    """The drift one twin lives through: the seeded drift, plus jumps injected as faults, plus
    re-anchoring when drift knobs change at run time (so a change never makes the truth jump)."""

    def __init__(self, settings: DriftSettings, seed: int) -> None:
        self._seed = seed
        self._segments = [_Segment(0.0, Drift(settings, seed), np.zeros(2), np.zeros(2))]
        self._injected: list[tuple[float, np.ndarray]] = []
        self._lock = threading.Lock()

    def _segment(self, t: float) -> _Segment:
        for seg in reversed(self._segments):
            if t >= seg.since:
                return seg
        return self._segments[0]

    def aligned(self, t: float) -> np.ndarray:
        """a*(t) including injected jumps, motor units."""
        with self._lock:
            seg = self._segment(t)
            injected = [d for when, d in self._injected if when <= t]
        out: np.ndarray = seg.drift.aligned(t) + seg.offset_a
        for d in injected:
            out = out + d
        return out

    def beam_shift(self, t: float) -> np.ndarray:
        """s(t), FOV."""
        with self._lock:
            seg = self._segment(t)
        shift: np.ndarray = seg.drift.beam_shift(t) + seg.offset_s
        return shift

    def inject_jump(self, t: float, delta: tuple[float, float]) -> None:
        """A jump of a* by delta at time t (the `jump` fault)."""
        with self._lock:
            self._injected.append((float(t), np.asarray(delta, dtype=float)))

    def injected(self) -> list[tuple[float, list[float]]]:
        with self._lock:
            return [(t, d.tolist()) for t, d in self._injected]

    def reconfigure(self, settings: DriftSettings, t: float) -> None:
        """Drift by `settings` from time t on, continuous at t."""
        with self._lock:
            old = self._segment(t)
            if settings == old.drift.settings:
                return
            new = Drift(settings, self._seed)
            offset_a = old.drift.aligned(t) + old.offset_a - new.aligned(t)
            offset_s = old.drift.beam_shift(t) + old.offset_s - new.beam_shift(t)
            self._segments = [s for s in self._segments if s.since < t]
            self._segments.append(_Segment(float(t), new, offset_a, offset_s))

    def jump_events(self, t0: float, t1: float) -> list[tuple[float, float, float]]:
        """Scheduled (seeded) jumps in (t0, t1] of the drift in force at t1."""
        with self._lock:
            seg = self._segment(t1)
        return seg.drift.jumps.events(t0, t1)
