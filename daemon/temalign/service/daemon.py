"""`temalign run`: the long-running service around `run_cycle`, and its wiring.

It builds the parts once (the model and its card checked against the config, the journal locked
for one writer, the run state that survives restarts), settles what a crash left
(service.recovery), then runs a cycle whenever the scheduling policy says (APScheduler, never two
at once; service.schedule) and serves the control socket (service.control, with the verbs of
service.verbs), the metrics (record.metrics, `Metrics.observe`) and systemd's notify protocol.
SIGTERM lets a running cycle finish (C1 restored by the wobble) and exits 0."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from temalign.clock import Clock, RealClock
from temalign.config.schema import Settings
from temalign.decide.column import is_paused
from temalign.errors import ConfigError, TemalignError
from temalign.estimate.calibration import load_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import open_model
from temalign.microscope import Microscope
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal
from temalign.record.logs import cycle_line
from temalign.record.metrics import Metrics
from temalign.record.result import CycleResult
from temalign.record.state import RunState, StateStore
from temalign.service import notify, recovery, verbs
from temalign.service.control import ControlServer
from temalign.service.cycle import Parts, can_check, run_cycle
from temalign.service.schedule import PlanState, observe, plan_next
from temalign.values import JsonObject
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import ImageSource, source_from_settings

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

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
            source = source or source_from_settings(settings.source, microscope, self.clock)
            model = open_model(settings, source.kind)
            calibration = load_calibration(state_dir)
        except (ValueError, TemalignError) as error:
            self.journal.close()
            raise ConfigError(str(error)) from None
        self.estimator = CombinedEstimator(model, calibration, settings.estimator, settings.quality)
        self.memory = C1Memory(state_dir)
        self.parts = Parts(microscope=microscope, source=source, estimator=self.estimator, settings=settings,
                           clock=self.clock, memory=self.memory, journal=self.journal, state=self.store,
                           session_start=None, wall=wall)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._plan_state = PlanState()
        self._next_look = "full"
        self._hup: threading.Event | None = None
        self._control: ControlServer | None = None
        self.last: list[JsonObject] = []
        self.started = False

    # ---- start-up ---------------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Settle what an earlier process left (service.recovery); returns its sentences."""
        return recovery.recover(microscope=self.microscope, memory=self.memory, journal=self.journal,
                                store=self.store, settings=self.settings)

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
        recovery.rebuild_ledger(self.journal, self.parts.ledger, self.clock, self.wall())
        self.metrics.set_model(self.estimator.model.identity)
        self.metrics.set_calibrated(self.estimator.calibration is not None)
        self.publish_state()
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
        with self.lock:
            if self.memory.exists():
                self.recover()
            result = run_cycle(self.parts, forced=forced, look=look)
        self._record(result)
        return result

    def _record(self, result: CycleResult) -> None:
        """The cycle in the metrics, the status, the log and systemd's status line."""
        self.metrics.observe(result, reference=self.run_state().reference, timestamp=self.wall())
        self.publish_state()
        summary = result.to_json()
        self.last = [summary, *self.last][:10]
        cycle_line(log, **summary)
        notify.status(self.status_line())

    # ---- state and control ------------------------------------------------------------------------

    def run_state(self) -> RunState:
        return self.store.load(self.settings.schedule.mode)

    def state_name(self) -> str:
        st = self.run_state()
        if st.hold is not None:
            return "hold"
        if is_paused(st.paused_until, self.wall()):
            return "paused"
        return "dry_run" if st.mode == "dry-run" else "running"

    def publish_state(self) -> None:
        self.metrics.set_state(self.state_name())

    def status_line(self) -> str:
        st = self.run_state()
        last = self.last[0] if self.last else None
        tail = f"; last cycle {last['outcome']} ({last['reason']})" if last else ""
        return f"{self.state_name()}{' (' + st.hold + ')' if st.hold else ''}{tail}"

    def status(self) -> JsonObject:
        """What `temalign status` shows (service.verbs.status)."""
        return verbs.status(self, {}, None)

    def handle(self, verb: str, args: JsonObject, uid: int | None) -> JsonObject:
        """A control request (service.verbs); raises ValueError to refuse it."""
        return verbs.handle(self, verb, args, uid)

    def calibrate(self, step_units: float = 60.0) -> JsonObject:
        """Measure and store the 2 x 2 calibration between cycles (service.verbs.calibrate)."""
        return verbs.calibrate(self, {"step_units": step_units}, None)

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
        with self.lock:
            self.settings = self.parts.settings = merged
            self.estimator.settings = merged.estimator
            self.estimator.quality_settings = merged.quality
            self.parts.failure_count.limit = merged.safety.hold_after_failures
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
        with self.lock:
            if self._control is not None:
                self._control.close()
                self._control = None
            if self.started:
                self.journal.append("stop")
                self.started = False
            self.metrics.set_state("stopping")
            self.metrics.shutdown()
            self.journal.close()
