"""The digital twin of the column: state, time, faults and frames behind one thread-safe object.

Twin time (the clock's) is the single source of truth: a*(t) and s(t) come from the seeded
drift, the aperture and lens states are functions of t, and a frame is rendered at the middle of
its exposure. The lock guards state only; sleeping (motion, exposure) and rendering happen outside
it, so the live view and a slow move never block each other."""

from __future__ import annotations

import math
import threading

import numpy as np
from pydantic import ValidationError

from temalign import optics
from temalign.clock import Clock, SteppedClock
from temalign.protocol.errors import InvalidParams, OutOfRange
from temalign.values import JsonObject
from temalign_twin.columns import column
from temalign_twin.drift import DriftTrack
from temalign_twin.faults import Fault, FaultBoard, parse_fault
from temalign_twin.hardware import Lens, Motor
from temalign_twin.render import Beam, Specimen, render_frame
from temalign_twin.settings import TwinSettings
from temalign_twin.traced import Fringes, TracedDisc, stigmation_of, trace

STREAM_NOISE = 31
STREAM_LIVE = 32


def _trace(c: float, m: np.ndarray, shift: np.ndarray, settings: TwinSettings) -> TracedDisc:
    """The traced disc of the settings' column for C1 at `c`, misalignment `m` and beam shift."""
    col = column(settings.optics.column)
    stigmation = stigmation_of(settings.optics.ellipticity, settings.optics.ellipse_angle_deg, col)
    return trace(c, m, col, shift=shift, fringes=Fringes.of(settings.beam),
                 pixel_fov=1.0 / settings.camera.width, stigmation=stigmation)


class TwinError(ValueError):
    """A twin.* request that cannot be honoured (wrong clock mode, bad overrides, bad fault)."""


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                     for e in error.errors())


class Twin:
    """One simulated column: condenser aperture, C1 lens, camera, drift and injectable faults."""

    def __init__(self, settings: TwinSettings, clock: Clock, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise TwinError(f"seed must be an integer >= 0, got {seed!r}")
        self.clock = clock
        self.seed = seed
        self.viewer_region: tuple[int, int, int, int] | None = None
        self._lock = threading.RLock()
        self._settings = settings
        self._faults = FaultBoard()
        self._specimen = Specimen(seed)
        self._frames = 0
        self._live = 0
        now = clock.now()
        self._drift = DriftTrack(settings.drift, seed)
        start = np.round(self._drift.aligned(now) + np.asarray(settings.motor.start_offset))
        self._motor = Motor(settings.motor, start, seed, now=now)
        self._lens = Lens(settings.lens, settings.lens.start_over_cf * settings.optics.c_f)

    @property
    def settings(self) -> TwinSettings:
        return self._settings

    # ---- the six protocol methods (hello is the server's) --------------------------------------

    def limits(self) -> JsonObject:
        """The `limits` of the hello reply."""
        st = self._settings
        return {"aperture": {"x": list(st.motor.limits_x), "y": list(st.motor.limits_y)},
                "lens": {"C1": list(st.lens.limits)}}

    def aperture(self) -> tuple[int, int]:
        """Read-back: where the aperture physically is now, rounded (mid-motion while moving)."""
        with self._lock:
            p = self._motor.position(self.clock.now())
        return round(float(p[0])), round(float(p[1]))

    def move_aperture(self, x: int, y: int) -> tuple[int, int]:
        """Absolute move; returns once the motion and settling are over in twin time.

        Replies where the aperture ended up; under a stuck or overshoot fault it echoes the command
        (as a faulty column would) and only `aperture()` tells the truth."""
        for name, v in (("x", x), ("y", y)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise InvalidParams(f"{name} must be an integer (motor units), got {v!r}")
        with self._lock:
            st = self._settings.motor
            for name, v, (lo, hi) in (("x", x, st.limits_x), ("y", y, st.limits_y)):
                if not lo <= v <= hi:
                    raise OutOfRange(f"aperture {name}={v} is outside [{lo}, {hi}]; nothing moved",
                                     data={"axis": name, "value": int(v), "limits": [lo, hi]})
            stuck = self._faults.take("stuck")
            over = None if stuck else self._faults.take("overshoot")
            result = self._motor.move((int(x), int(y)), self.clock.now(), stuck=stuck is not None,
                                      overshoot=np.asarray(over.units) if over else 0.0)
        self.clock.sleep(result.wait_s)
        if stuck or over:
            return int(x), int(y)
        return round(float(result.end[0])), round(float(result.end[1]))

    def c1(self) -> float:
        """Read-back: the value the lens holds (not the one last asked for, if it ignored it)."""
        with self._lock:
            return self._lens.setpoint

    def set_c1(self, value: float) -> float:
        """Set C1; the beam follows over the lens settle time. Echoes the value (also when the
        lens ignores it under the `lens_ignore` fault)."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidParams(f"C1 value must be a finite number, got {value!r}")
        with self._lock:
            lo, hi = self._settings.lens.limits
            if not lo <= value <= hi:
                raise OutOfRange(f"C1={value} is outside [{lo}, {hi}]; nothing changed",
                                 data={"value": value, "limits": [lo, hi]})
            ignore = self._faults.take("lens_ignore") is not None
            self._lens.set(float(value), self.clock.now(), ignore=ignore)
        return float(value)

    def acquire(self, exposure_s: float | None = None) -> np.ndarray:
        """One frame (uint16, height x width); takes the exposure time in twin time and shows the
        column as it was at the middle of the exposure."""
        if exposure_s is not None and (isinstance(exposure_s, bool) or not 0 < exposure_s <= 60):
            raise InvalidParams(f"exposure_s must be in (0, 60], got {exposure_s!r}")
        with self._lock:
            settings = self._settings
            exposure = float(exposure_s or settings.camera.exposure_s)
            start = self.clock.now()
            blank = self._faults.take("blank") is not None
            index = self._frames
            self._frames += 1
        self.clock.sleep(exposure)
        beam = self._beam(start + exposure / 2, settings, exposure, blank)
        rng = np.random.default_rng([self.seed, STREAM_NOISE, index])
        return render_frame(beam, settings, rng, self._specimen)

    def live_frame(self) -> np.ndarray:
        """What the camera shows now (default exposure), without advancing time or using up the
        noise of `acquire`, so a live view never changes a seeded run."""
        with self._lock:
            settings = self._settings
            now = self.clock.now()
            blank = self._faults.peek("blank") is not None
            index = self._live
            self._live += 1
        beam = self._beam(now, settings, settings.camera.exposure_s, blank)
        rng = np.random.default_rng([self.seed, STREAM_LIVE, index])
        return render_frame(beam, settings, rng, self._specimen)

    # ---- truth, time, faults, settings (twin.* methods) ----------------------------------------

    def _beam(self, t: float, settings: TwinSettings, exposure: float, blank: bool) -> Beam:
        with self._lock:
            a = self._motor.position(t)
            c = self._lens.effective(t)
        m = a - self._drift.aligned(t)
        electrons = 0.0 if blank else settings.beam.electrons_per_s * exposure
        if settings.optics.model == "traced":
            disc = _trace(c, m, self._drift.beam_shift(t), settings)
            return Beam(disc.centroid, disc.equivalent_radius, electrons * disc.transmission, disc)
        c_f = settings.optics.c_f
        centre = optics.spot_centre(c, c_f, m, self._drift.beam_shift(t))
        return Beam((float(centre[0]), float(centre[1])), optics.spot_radius(c, c_f), electrons)

    def aligned(self, t: float | None = None) -> np.ndarray:
        """a*(t), motor units (now by default)."""
        return self._drift.aligned(self.clock.now() if t is None else t)

    def truth(self) -> JsonObject:
        """Everything a test or benchmark may compare against, at the current twin time."""
        with self._lock:
            t = self.clock.now()
            a = self._motor.position(t)
            settings = self._settings
            c_eff = self._lens.effective(t)
            lens = self._lens
            truth: JsonObject = {
                "time": t,
                "seed": self.seed,
                "aperture": a.tolist(),
                "aperture_commanded": self._motor.commanded.tolist(),
                "moving": self._motor.moving(t),
                "c1": lens.commanded,
                "c1_setpoint": lens.setpoint,
                "c1_effective": c_eff,
                "lens_settled": lens.settled(t),
                "faults": self._faults.snapshot(),
            }
        aligned = self._drift.aligned(t)
        shift = self._drift.beam_shift(t)
        c_f = settings.optics.c_f
        if settings.optics.model == "traced":
            disc = _trace(c_eff, a - aligned, shift, settings)
            spot: JsonObject = {"centre": list(disc.centroid), "radius": disc.equivalent_radius,
                                "outline_centre": list(disc.outline_centre),
                                "transmission": disc.transmission}
        else:
            centre = optics.spot_centre(c_eff, c_f, a - aligned, shift)
            spot = {"centre": centre.tolist(), "radius": optics.spot_radius(c_eff, c_f)}
        truth.update({
            "aligned": aligned.tolist(),
            "misalignment": (a - aligned).tolist(),
            "beam_shift": shift.tolist(),
            "c_f": c_f,
            "spot": spot,
            "injected_jumps": [{"time": when, "units": d} for when, d in self._drift.injected()],
        })
        if settings.optics.model == "traced":
            truth["optics"] = {"model": "traced", "column": settings.optics.column}
        return truth

    def advance(self, seconds: float) -> float:
        """Move a stepped clock on by `seconds`; returns the new twin time."""
        if not isinstance(self.clock, SteppedClock):
            raise TwinError("twin.advance needs a stepped clock (start the twin with --time-scale 0); "
                            f"this one runs on {type(self.clock).__name__}")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
                math.isfinite(seconds) and seconds >= 0):
            raise TwinError(f"seconds must be a finite number >= 0, got {seconds!r}")
        return self.clock.advance(float(seconds))

    def wall_seconds(self, twin_seconds: float) -> float:
        """Wall time that `twin_seconds` of twin time take on this clock (stepped: taken as wall)."""
        return self.clock.wall_seconds(twin_seconds)

    def inject(self, kind: str, **params: object) -> JsonObject:
        """Start a fault (faults.py lists kinds and parameters); a `jump` happens at once."""
        try:
            fault = parse_fault(kind, **params)
        except ValueError as error:
            raise TwinError(str(error)) from error
        if fault.kind == "jump":
            t = self.clock.now()
            self._drift.inject_jump(t, fault.units)
            return {"kind": "jump", "time": t, "units": list(fault.units)}
        return self._faults.add(fault).to_json()

    def clear_faults(self) -> int:
        """End every active fault (injected jumps stay: they moved the optic axis); returns how many."""
        return self._faults.clear()

    def take_transport_fault(self, method: str) -> Fault | None:
        """The transport fault that hits this request of `method`, one use consumed."""
        return self._faults.take_transport(method)

    def configure(self, overrides: JsonObject) -> TwinSettings:
        """Apply TwinSettings overrides from now on. Drift changes are continuous at now; start
        positions (motor.start_offset, lens.start_over_cf) only matter at construction."""
        if not isinstance(overrides, dict):
            raise TwinError(f"overrides must be a nested object of settings, got {overrides!r}")
        with self._lock:
            try:
                new = self._settings.updated(overrides)
            except ValidationError as error:
                raise TwinError(f"bad twin settings: {_describe(error)}") from error
            now = self.clock.now()
            self._drift.reconfigure(new.drift, now)
            self._motor.settings = new.motor
            self._lens.settings = new.lens
            self._settings = new
            return new
