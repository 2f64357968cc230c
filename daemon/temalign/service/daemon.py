"""`temalign run`: the long-running service around `run_cycle`.

It builds the parts once (the model and its card checked against the config, the journal locked
for one writer, the run state that survives restarts), settles what a crash left (a wobble in
flight: C1 put back if it still holds a value the daemon set; a move in flight: the position read
and recorded), then runs a cycle every `schedule.interval_s` (APScheduler, never two at once) and
serves the control socket, the metrics and systemd's notify protocol. SIGTERM lets a running
cycle finish (C1 restored by the wobble) and exits 0."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from temalign.clock import Clock, RealClock
from temalign.config.schema import Settings
from temalign.errors import ConfigError, TemalignError
from temalign.estimate.calibration import load_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelEstimator, check_compatible
from temalign.microscope import Microscope
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal
from temalign.record.logs import cycle_line
from temalign.record.metrics import Metrics
from temalign.record.state import StateStore, is_paused
from temalign.service import notify
from temalign.service.control import ControlServer
from temalign.service.cycle import CycleResult, Parts, can_check, run_cycle
from temalign.service.schedule import PlanState, observe, plan_next
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.errors import C1RestoreFailed
from temalign.wobble.sources import ImageSource, source_from_settings

log = structlog.get_logger("temalign")


class Daemon:
    """The service: parts, scheduler, control socket, metrics; one cycle at a time."""

    def __init__(self, settings: Settings, microscope: Microscope, *, clock: Clock | None = None,
                 source: ImageSource | None = None, metrics: Metrics | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.microscope = microscope
        self.clock = clock or RealClock()
        self.wall = wall
        self.metrics = metrics or Metrics()
        state_dir = settings.paths.ensure_state_dir()
        self.journal = Journal(state_dir, max_bytes=settings.journal.max_bytes,
                               keep_files=settings.journal.keep_files, clock=self.clock)
        try:
            self.store = StateStore(state_dir)
            self.store.load(settings.schedule.mode)
            model = ModelEstimator(settings.estimator.model, num_threads=settings.estimator.threads)
            source = source or source_from_settings(settings.source, microscope, self.clock)
            check_compatible(model.card, wobble_fraction=settings.wobble.fraction, frames=source.kind)
            calibration = load_calibration(state_dir)
        except (ValueError, TemalignError) as error:
            self.journal.close()
            raise ConfigError(str(error)) from None
        self.estimator = CombinedEstimator(model, calibration, settings.estimator, settings.quality)
        self.memory = C1Memory(state_dir)
        self.parts = Parts(microscope=microscope, source=source, estimator=self.estimator, settings=settings,
                           clock=self.clock, memory=self.memory, journal=self.journal, state=self.store,
                           session_start=None, wall=wall)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._scheduler: Any = None
        self._plan_state = PlanState()
        self._next_look = "full"
        self._hup: threading.Event | None = None
        self._control: ControlServer | None = None
        self.last: list[dict[str, Any]] = []
        self.started = False

    # ---- start-up ---------------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Settle what an earlier process left: C1 mid-wobble, a move in flight. Returns sentences."""
        notes = []
        try:
            if self.memory.exists():
                notes.append(self.memory.recover(self.microscope))
        except C1RestoreFailed as error:
            self.store.update(hold=f"C1 could not be restored at start: {error}")
            notes.append(str(error))
        except ProtocolError as error:
            notes.append(f"C1 record pending; the microscope cannot be reached yet ({error}); retried "
                         "before the first wobble")
        for entry in self.journal.pending():
            if entry.get("kind") in ("move", "rollback"):
                try:
                    where = self.microscope.aperture()
                    position: Any = (int(where.x), int(where.y))
                except ProtocolError as error:
                    position = f"unknown ({error})"
                self.journal.outcome(entry["op"], entry["kind"], ok=False, recovered=True, read_back=position)
                notes.append(f"a {entry['kind']} to {entry.get('target')} was in flight when the daemon "
                             f"stopped; the aperture now reads {position}")
                if isinstance(position, tuple):
                    self.store.update(last_position=position)
            elif entry.get("kind") == "wobble":
                self.journal.outcome(entry["op"], "wobble", ok=False, recovered=True)
        note = self._settle_last_position()
        if note:
            notes.append(note)
        for note in notes:
            self.journal.append("recovery", note=note)
            log.warning("recovery", note=note)
        return notes

    def _rebuild_ledger(self, entries: int = 5000) -> None:
        """The last hour's moves from the journal, so a restart does not reset the rate limit."""
        now_wall, now_clock = self.wall(), self.clock.now()
        origins: dict[int, Any] = {}
        for e in self.journal.tail(entries):
            if e.get("kind") not in ("move", "rollback"):
                continue
            if e.get("phase") == "intent":
                origins[e["seq"]] = e.get("origin")
            elif e.get("phase") == "done" and e.get("ok") and e.get("op") in origins:
                origin, read = origins[e["op"]], e.get("read_back")
                try:
                    when = datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00")).timestamp()
                    length = math.dist(origin, read)
                except (TypeError, ValueError, KeyError):
                    continue
                age = now_wall - when
                if 0 <= age < 3600.0:
                    self.parts.ledger.add(now_clock - age / self.clock.wall_seconds(1.0), length)

    def _settle_last_position(self) -> str | None:
        """A process killed after a move but before its cycle ended left `last_position` at the old
        place: take the journal's last completed move when the aperture is still there, so the next
        cycle does not take the daemon's own move for a person's."""
        last = None
        for e in self.journal.tail(500):
            if e.get("kind") in ("move", "rollback") and e.get("phase") == "done" and e.get("ok"):
                last = e
        if last is None or not isinstance(last.get("read_back"), list | tuple):
            return None
        moved = (int(last["read_back"][0]), int(last["read_back"][1]))
        state = self.store.load(self.settings.schedule.mode)
        where = self._read_position()
        if state.last_position == moved or where is None:
            return None
        if math.dist(where, moved) > self.settings.safety.motor_tolerance_units:
            return None  # moved since: the hands-on check will see it
        self.store.update(last_position=moved)
        return (f"the last move (to {moved}) finished before the daemon stopped but its cycle did not; "
                "the aperture is still there: taken as where the daemon left it")

    def start(self, *, serve_control: bool = True, serve_metrics: bool = True, schedule: bool = True) -> None:
        """Recover, then start the metrics endpoint, the control socket and the scheduler."""
        s = self.settings
        self.journal.append("start", mode=s.schedule.mode, model=str(s.estimator.model),
                            calibrated=self.estimator.calibration is not None)
        try:
            where = self.microscope.aperture()
            self.parts.session_start = (int(where.x), int(where.y))
            self.metrics.set_connection(True)
        except ProtocolError as error:
            self.metrics.set_connection(False)
            log.warning("microscope unreachable at start", error=str(error))
        self.recover()
        self._rebuild_ledger()
        self.metrics.set_model(self.estimator.model.identity)
        self.metrics.set_calibrated(self.estimator.calibration is not None)
        self._publish_state()
        if serve_metrics and s.metrics.enabled:
            self.metrics.serve(s.metrics.host, s.metrics.port)
        if serve_control:
            self._control = ControlServer(s.control.socket, self.handle, s.control.group)
            self._control.start()
        if schedule:
            self._start_scheduler()
        self.started = True
        notify.ready(self.status_line())

    def _start_scheduler(self) -> None:
        """One cycle job: first run a second after start; each cycle then moves the job's next run to
        the policy's wait (service.schedule). The job's own interval (`interval_s`) is only the
        fallback, should a cycle end without planning (and after a reload, until the next cycle)."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        wall = self.clock.wall_seconds
        sch = self.settings.schedule
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_job(self._scheduled, IntervalTrigger(seconds=wall(sch.interval_s),
                                                                 jitter=wall(sch.jitter_s) or None),
                                id="cycle", max_instances=1, coalesce=True,
                                next_run_time=datetime.now(UTC) + timedelta(seconds=wall(1.0)))
        self._scheduler.start()

    def _plan_at(self, delay_s: float) -> None:
        """Move the cycle job's next run to `delay_s` clock seconds from now, plus the jitter."""
        from apscheduler.jobstores.base import JobLookupError

        if self._scheduler is None or self._stop.is_set():
            return
        jitter = random.uniform(0.0, self.settings.schedule.jitter_s)
        when = datetime.now(UTC) + timedelta(seconds=self.clock.wall_seconds(delay_s + jitter))
        with contextlib.suppress(JobLookupError):
            self._scheduler.modify_job("cycle", next_run_time=when)

    # ---- cycles -----------------------------------------------------------------------------------

    def _scheduled(self) -> None:
        """A scheduled cycle, then the policy's wait until the next."""
        if self._stop.is_set():
            return
        result = self.cycle(look=self._next_look)
        plan = plan_next(self._plan_state, observe(result), self.settings.schedule,
                         can_check=can_check(self.parts))
        self._plan_state = plan.state
        self._next_look = plan.look
        log.debug("next cycle", delay_s=round(plan.delay_s, 1), look=plan.look, why=plan.reason)
        self._plan_at(plan.delay_s)

    def cycle(self, *, forced: bool = False, look: str = "full") -> CycleResult:
        """One cycle under the lock (a scheduled one and `once` never overlap), then the record."""
        with self._lock:
            if self.memory.exists():
                self.recover()
            result = run_cycle(self.parts, forced=forced, look=look)
        self._record(result)
        return result

    def _record(self, result: CycleResult) -> None:
        m = self.metrics
        before, after = result.before, result.after
        position = result.position_after
        drift = None
        state = self.store.load(self.settings.schedule.mode)
        estimate = before.delta if before is not None else None
        if result.outcome == "checked" and result.check is not None:
            estimate = result.check.delta
        if estimate is not None and result.position_before and state.reference:
            drift = (result.position_before[0] + estimate[0] - state.reference[0],
                     result.position_before[1] + estimate[1] - state.reference[1])
        m.observe_cycle(outcome=result.outcome, duration_s=result.duration_s,
                        estimate=estimate, applied=result.applied, position=position,
                        drift=drift,
                        misalignment_after=after.misalignment if after else None,
                        confidence=before.confidence if before else None, timestamp=self.wall())
        for meas in (before, after):
            if meas is not None and meas.inference_ms:
                m.observe_inference("model", (meas.preprocess_ms + meas.inference_ms) / 1e3)
            if meas is not None and meas.classical_ms:
                m.observe_inference("classical", meas.classical_ms / 1e3)
        if result.decision is not None:
            for limit in result.decision.limits_hit:
                m.limit_hit(limit)
        m.set_connection(result.reason != "microscope")
        self._publish_state()
        summary = result.to_json()
        self.last = [summary, *self.last][:10]
        cycle_line(log, **summary)
        notify.status(self.status_line())

    # ---- state and control ------------------------------------------------------------------------

    def state_name(self) -> str:
        st = self.store.load(self.settings.schedule.mode)
        if st.hold is not None:
            return "hold"
        if is_paused(st, self.wall()):
            return "paused"
        return "dry_run" if st.mode == "dry-run" else "running"

    def _publish_state(self) -> None:
        self.metrics.set_state(self.state_name())

    def status_line(self) -> str:
        st = self.store.load(self.settings.schedule.mode)
        last = self.last[0] if self.last else None
        tail = f"; last cycle {last['outcome']} ({last['reason']})" if last else ""
        return f"{self.state_name()}{' (' + st.hold + ')' if st.hold else ''}{tail}"

    def status(self) -> dict[str, Any]:
        st = self.store.load(self.settings.schedule.mode)
        s = self.settings
        paused = is_paused(st, self.wall())
        return {
            "state": self.state_name(), "mode": st.mode, "hold": st.hold,
            "paused": paused, "paused_until": None if not paused or st.paused_until == math.inf
            else st.paused_until, "pause_reason": st.pause_reason if paused else None,
            "reference": st.reference, "reference_set_by": st.reference_set_by,
            "last_position": st.last_position, "session_start": self.parts.session_start,
            "calibrated": self.estimator.calibration is not None,
            "calibration_note": None if self.estimator.calibration is not None else
            f"no calibration: {s.estimator.without_calibration} until `temalign calibrate` runs",
            "model": self.estimator.model.identity,
            "limits": s.safety.model_dump(mode="json"),
            "interval_s": s.schedule.interval_s,
            "moved_last_hour_units": round(self.parts.ledger.moved_since(self.clock.now()), 1),
            "failures_in_a_row": self.parts.failures.count if self.parts.failures else 0,
            "misalignment": self._last_estimate(),
            "last_cycles": self.last,
        }

    def _last_estimate(self) -> dict[str, Any] | None:
        """The newest cycle's estimate (each estimator's, the one used, |m|), or None. A cycle that
        stopped at the two-frame check has the classical estimator's alone."""
        for cycle in self.last:
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

    def handle(self, verb: str, args: dict[str, Any], uid: int | None) -> dict[str, Any]:
        """A control request (audited with the peer's uid); raises ValueError to refuse it."""
        self.journal.append("control", verb=verb, args=args, uid=uid)
        mode = self.settings.schedule.mode
        if verb == "status":
            return self.status()
        if verb == "pause":
            seconds = args.get("for_s")
            until = math.inf if seconds is None else self.wall() + float(seconds)
            reason = str(args.get("reason") or ("paused by a person" if seconds is None
                                                else f"paused for {float(seconds):.0f} s"))
            self.store.update(paused_until=until, pause_reason=reason)
        elif verb == "resume":
            # the person who resumes accepts the column as it is now (after moving it by hand)
            where, c1 = self._read_position(), self._read_c1()
            self.store.update(paused_until=None, pause_reason=None,
                              **({"last_position": where} if where else {}),
                              **({"last_c1": c1} if c1 is not None else {}))
        elif verb == "dry-run":
            on = args.get("on")
            if not isinstance(on, bool):
                raise ValueError("dry-run needs on: true or false")
            self.store.update(mode="dry-run" if on else "live")
        elif verb == "hold-clear":
            self.store.update(hold=None)
            if self.parts.failures is not None:
                self.parts.failures.success()
        elif verb == "once":
            return self.cycle(forced=True).to_json()
        elif verb == "calibrate":
            return self.calibrate(step_units=float(args.get("step_units", 60.0)))
        elif verb == "reference-set":
            where = self._read_position()
            if where is None:
                raise ValueError("cannot read the aperture position from the microscope")
            self.store.update(reference=where, reference_set_by=f"person (uid {uid})", last_position=where)
            self.journal.append("reference", position=where, set_by=f"person (uid {uid})")
        else:
            raise ValueError(f"unknown request {verb!r}")
        self.store.load(mode)
        self._publish_state()
        return self.status()

    def calibrate(self, step_units: float = 60.0) -> dict[str, Any]:
        """Measure and store the 2 x 2 calibration between cycles (never during one)."""
        from temalign.estimate.calibration import save_calibration
        from temalign.service.calibrate import calibrate

        s = self.settings
        with self._lock:
            op = self.journal.intent("calibration", step_units=step_units)
            try:
                cal = calibrate(self.microscope, self.parts.source, wobble_settings=s.wobble,
                                quality_settings=s.quality, clock=self.clock, memory=self.memory,
                                step_units=step_units)
            except (TemalignError, ProtocolError) as error:
                self.journal.outcome(op, "calibration", ok=False, error=str(error))
                where = self._read_position()
                if where is not None:
                    self.store.update(last_position=where)
                raise TemalignError(f"calibration failed: {error}") from None
            save_calibration(s.paths.state_dir, cal)
            self.estimator.calibration = cal
            self.journal.outcome(op, "calibration", ok=True, calibration=cal.to_json())
            where = self._read_position()
            if where is not None:
                self.store.update(last_position=where)
        self.metrics.set_calibrated(True)
        return cal.to_json()

    def _read_position(self) -> tuple[int, int] | None:
        try:
            p = self.microscope.aperture()
            return (int(p.x), int(p.y))
        except ProtocolError:
            return None

    def _read_c1(self) -> float | None:
        try:
            return float(self.microscope.c1())
        except ProtocolError:
            return None

    # ---- running and stopping ---------------------------------------------------------------------

    def reload(self, new: Settings) -> list[str]:
        """SIGHUP: take the new limits, thresholds, schedule and logging at once; sections that need
        new connections or files (microscope, source, paths, control, metrics, journal, the model)
        are kept until a restart, and the returned sentences say which."""
        old = self.settings
        live = ("wobble", "quality", "safety", "schedule", "logging")
        kept = [name for name in type(old).model_fields if name not in live
                and getattr(old, name) != getattr(new, name)]
        changes = {name: getattr(new, name) for name in live}
        estimator = old.estimator.model_copy(update={
            k: getattr(new.estimator, k) for k in ("agreement_units", "classical_max_residual_px",
                                                   "without_calibration")})
        if new.wobble.fraction != old.wobble.fraction:
            kept.append("wobble.fraction (the model's card fixes it)")
            changes["wobble"] = new.wobble.model_copy(update={"fraction": old.wobble.fraction})
        merged = old.model_copy(update={**changes, "estimator": estimator})
        with self._lock:
            self.settings = self.parts.settings = merged
            self.estimator.settings = merged.estimator
            self.estimator.quality_settings = merged.quality
            if self.parts.failures is not None:
                self.parts.failures.limit = merged.safety.hold_after_failures
        if merged.logging != old.logging:
            from temalign.record.logs import configure_logging

            configure_logging(merged.logging.level, merged.logging.format)
        if self._scheduler is not None and merged.schedule != old.schedule:
            from apscheduler.triggers.interval import IntervalTrigger

            wall = self.clock.wall_seconds
            self._scheduler.reschedule_job("cycle", trigger=IntervalTrigger(
                seconds=wall(merged.schedule.interval_s), jitter=wall(merged.schedule.jitter_s) or None))
        notes = ["reloaded: wobble, quality, safety, schedule, logging and the estimator's thresholds"]
        if kept:
            notes.append("kept until a restart: " + ", ".join(sorted(kept)))
        self.journal.append("reload", notes=notes)
        return notes

    def install_signal_handlers(self) -> threading.Event:
        """SIGTERM/SIGINT stop, SIGHUP reloads. Call before `start()`: systemd may send SIGTERM as
        soon as READY is out, and the default action would kill a cycle mid-wobble."""
        if self._hup is None:
            self._hup = threading.Event()
            hup = self._hup
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: hup.set())
        return self._hup

    def run_forever(self, reload: Callable[[], Settings] | None = None) -> int:
        """Until SIGTERM or SIGINT: watchdog pings, SIGHUP reloads (`reload()` reads and validates the
        file: a bad file keeps the running config); then a clean stop. Returns the exit status."""
        hup = self.install_signal_handlers()
        ping = notify.watchdog_interval_s()
        while not self._stop.wait(min(ping / 2, 1.0) if ping else 1.0):
            if ping:
                notify.watchdog_ping()
            if hup.is_set():
                hup.clear()
                notify.reloading()
                try:
                    if reload is None:
                        raise ConfigError("no config file to reload")
                    for note in self.reload(reload()):
                        log.info("reload", note=note)
                except TemalignError as error:
                    self.journal.append("reload", refused=str(error))
                    log.error("reload refused; the running config stays", error=str(error))
                notify.ready(self.status_line())
        self.stop()
        return 0

    def stop(self) -> None:
        """Let a running cycle finish, then close everything (idempotent)."""
        self._stop.set()
        notify.stopping()
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.shutdown(wait=True)
            self._scheduler = None
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
            if self.started:
                self.journal.append("stop")
                self.started = False
            self.metrics.set_state("stopping")
            self.metrics.shutdown()
            self.journal.close()
