"""`temalign run`: the long-running service around `run_cycle`, and its wiring.

It builds the parts once (the model and its card checked against the config, the journal locked
for one writer, the run state that survives restarts), settles what a crash left
(service.recovery), then runs a cycle whenever the scheduling policy says (APScheduler, never two
at once; service.schedule) and serves the control socket (service.control, with the verbs of
service.verbs), the metrics (record.metrics, `Metrics.observe`) and systemd's notify protocol.
SIGTERM lets a running cycle finish (C1 restored by the wobble) and exits 0."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from temalign import __version__
from temalign.clock import Clock, RealClock
from temalign.config.schema import Settings
from temalign.decide.column import Asked, is_paused
from temalign.errors import ConfigError, TemalignError
from temalign.estimate.calibration import Calibration, load_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelError, check_configured_card
from temalign.microscope import Microscope
from temalign.protocol.errors import ProtocolError
from temalign.record.logs import cycle_line
from temalign.record.metrics import Metrics
from temalign.record.result import MICROSCOPE_UNREACHABLE, CycleResult
from temalign.record.stacks import StackStore
from temalign.record.state import RunState, StateStore
from temalign.service import notify, recovery, verbs
from temalign.service.calibrate import DEFAULT_STEP_UNITS
from temalign.service.control import Caller, ControlServer
from temalign.service.cycle import Parts, can_check, run_cycle
from temalign.service.http_control import HttpControlServer
from temalign.service.lifecycle import ModelLifecycle
from temalign.service.progress import ObservedJournal, progress_observer
from temalign.service.schedule import PlanState, observe, plan_next
from temalign.timetext import iso_time
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
                 wall: Callable[[], float] = time.time, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.microscope = microscope
        self.clock = clock or RealClock()
        self.wall = wall
        self.metrics = metrics or Metrics()
        state_dir = settings.paths.ensure_state_dir()
        try:
            self.journal = ObservedJournal(state_dir, max_bytes=settings.journal.max_bytes,
                                           keep_files=settings.journal.keep_files, clock=self.clock)
        except OSError as error:
            raise ConfigError(f"paths.state_dir: {state_dir}: the journal cannot be opened "
                              f"({error.strerror or error}: {error.filename})") from None
        try:
            self.store = StateStore(state_dir)
            self.store.load(settings.schedule.mode)
            source = source or source_from_settings(settings.source, microscope, self.clock)
            self.models = ModelLifecycle(settings, source.kind, self.metrics)
            model = self.models.open_live(settings)
            calibration = load_calibration(state_dir)
        except (ValueError, TemalignError) as error:
            self.journal.close()
            raise ConfigError(str(error)) from None
        self.stored_calibration = calibration
        """The calibration in the state directory; the estimator uses it only while it fits the
        configured wobble (`use_calibration`)."""
        self.estimator = CombinedEstimator(model, None, settings.estimator, settings.quality)
        self.calibration_note: str | None = None
        self.use_calibration(calibration)
        self.memory = C1Memory(state_dir)
        kept = settings.store
        self.stacks = (StackStore(settings.store_dir, max_bytes=kept.max_bytes,
                                  min_free_bytes=kept.min_free_bytes, wall=wall) if kept.enabled else None)
        """The stack store (record.stacks; None when `store.enabled` is false)."""
        if self.stacks is not None:
            self.metrics.watch_stack_store(self.stacks.status)
        self.parts = Parts(microscope=microscope, source=source, estimator=self.estimator, settings=settings,
                           clock=self.clock, memory=self.memory, journal=self.journal, state=self.store,
                           session_start=None, wall=wall, stacks=self.stacks)
        self.shadow_note = self.models.resume_shadow(self.parts)
        """Why the candidate in shadow before the restart is no longer (None: it is, or there was none)."""
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._plan_state = PlanState()
        self._next_look = "full"
        self._hup = threading.Event()
        self._signals = False
        self._metrics_served = False
        self._control: ControlServer | None = None
        self._http: HttpControlServer | None = None
        self.last: list[JsonObject] = []
        """The last cycles, newest first (CycleResult.to_json, with their wall-clock `time`)."""
        self.started = False
        self.started_at: float | None = None
        """Wall-clock epoch seconds of `start()`, for status and the stop line."""
        self._started_monotonic = 0.0
        self.cycles_run = 0
        self.microscope_up = True
        """Whether the microscope answered at the last try (status reads the column only then)."""

    # ---- start-up ---------------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Settle what an earlier process left (service.recovery); returns its sentences."""
        return recovery.recover(microscope=self.microscope, memory=self.memory, journal=self.journal,
                                store=self.store, settings=self.settings)

    def start(self, *, serve_control: bool = True, serve_metrics: bool = True, schedule: bool = True) -> None:
        """Recover, then start the metrics endpoint, the control socket and the scheduler."""
        s = self.settings
        model, shadow = self.estimator.model, self.parts.shadow
        self.journal.append("start", mode=s.schedule.mode, model=str(model.path),
                            model_fingerprint=model.fingerprint,
                            model_source=self.models.live_source(s, model)["source"],
                            shadow=None if shadow is None else shadow.stored.fingerprint,
                            calibrated=self.estimator.calibration is not None)
        self.started_at, self._started_monotonic = self.wall(), time.monotonic()
        try:
            where = self.microscope.aperture()
            self.parts.session_start = (int(where.x), int(where.y))
            self.metrics.set_connection(True)
        except ProtocolError as error:
            self.metrics.set_connection(False)
            self.microscope_up = False
            log.warning("microscope unreachable at start", error=str(error))
        self.recover()
        if self.shadow_note is not None:
            log.warning("shadow", note=self.shadow_note)
        recovery.rebuild_ledger(self.journal, self.parts.ledger, self.clock, self.wall())
        self.metrics.set_model(self.estimator.model.identity)
        self.metrics.set_calibrated(self.estimator.calibration is not None)
        self.publish_state()
        if serve_metrics and s.metrics.enabled:
            self.metrics.serve(s.metrics.host, s.metrics.port)
            self._metrics_served = True
        if serve_control:
            self._control = ControlServer(s.control.socket, self.handle, s.control.group)
            self._control.start()
            listen, token = s.control.http_host_port, s.control.http_token
            if listen is not None and token is not None:
                self._http = HttpControlServer(listen[0], listen[1], token, self.handle)
                self._http.start()
        if schedule:
            self._start_scheduler()
        self.started = True
        self._log_start()
        notify.ready(self.status_line())

    def _log_start(self) -> None:
        """The start line: what this daemon runs with and where to reach it."""
        s = self.settings
        address = self.metrics.address if self._metrics_served else None
        metrics = "off" if address is None else f"http://{_host(address[0])}:{address[1]}/metrics"
        log.info("start", version=__version__, pid=os.getpid(),
                 config=None if self.config_path is None else str(self.config_path),
                 microscope=s.microscope.address, mode=self.run_state().mode, state=self.state_name(),
                 model=str(self.estimator.model.path), calibrated=self.estimator.calibration is not None,
                 metrics=metrics, control=str(s.control.socket) if self._control is not None else "off",
                 http_control=self.http_url or "off")

    def _start_scheduler(self) -> None:
        """One cycle job: first run a second after start; each cycle then moves the job's next run to
        the policy's wait (service.schedule). The job's own interval (`interval_s`) is only the
        fallback, should a cycle end without planning (and after a reload, until the next cycle)."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        wall = self.clock.wall_seconds
        sch = self.settings.schedule
        self._scheduler = BackgroundScheduler(timezone="UTC", executors={
            "default": {"type": "threadpool", "max_workers": 1}})  # one cycle at a time: one thread
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

    def cycle(self, *, asked: Asked = "schedule", look: str = "full",
              progress: Callable[[str], None] | None = None) -> CycleResult:
        """One cycle under the lock (a scheduled one and `once` never overlap), then the record.
        `progress` gets each step as it happens (service.progress)."""
        return self.cycle_reported(asked=asked, look=look, progress=progress)[0]

    def cycle_reported(self, *, asked: Asked = "schedule", look: str = "full",
                       progress: Callable[[str], None] | None = None) -> tuple[CycleResult, JsonObject]:
        """`cycle`, with the cycle as `last` has it (its wall-clock `time`): what `once` shows."""
        started_at = self.wall()
        with self.lock:
            watching = (self.journal.observed(progress_observer(progress)) if progress is not None
                        else contextlib.nullcontext())
            with watching:
                if self.memory.exists():
                    self.recover()
                result = run_cycle(self.parts, asked=asked, look=look)
        return result, self._record(result, started_at)

    def _record(self, result: CycleResult, started_at: float) -> JsonObject:
        """The cycle in the metrics, the status, the log and systemd's status line."""
        self.metrics.observe(result, reference=self.run_state().reference, timestamp=self.wall())
        self.microscope_up = result.reason != MICROSCOPE_UNREACHABLE
        self.publish_state()
        summary = {**result.to_json(), "time": iso_time(started_at)}
        self.last = [summary, *self.last][:10]
        self.cycles_run += 1
        cycle_line(log, **summary)
        if result.outcome == "hold":
            log.warning("hold", reason=self.run_state().hold or result.detail,
                        then="nothing moves until `temalign hold clear`")
        notify.status(self.status_line())
        return summary

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
        """What `temalign status` shows (service.status)."""
        return verbs.status(self, {}, Caller(None, "daemon"))

    def handle(self, verb: str, args: JsonObject, caller: Caller) -> JsonObject:
        """A control request (service.verbs); raises ValueError to refuse it."""
        return verbs.handle(self, verb, args, caller)

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where the HTTP control endpoint listens, or None when it is off."""
        return self._http.address if self._http is not None else None

    @property
    def http_url(self) -> str | None:
        """`http://HOST:PORT` of the HTTP control endpoint, or None when it is off."""
        return self._http.url if self._http is not None else None

    def uptime_s(self) -> float:
        """Seconds since `start()` (0 before it)."""
        return time.monotonic() - self._started_monotonic if self.started_at is not None else 0.0

    def next_cycle(self) -> tuple[float | None, str]:
        """When the next cycle is due (wall-clock epoch seconds, None when none is scheduled) and
        its look ("check" or "full")."""
        job = self._scheduler.get_job("cycle") if self._scheduler is not None else None
        when = None if job is None or job.next_run_time is None else float(job.next_run_time.timestamp())
        return when, self._next_look

    def use_calibration(self, calibration: Calibration | None) -> str | None:
        """Store `calibration` and give it to the estimator if it fits the wobble as configured (a
        calibration measured at another settle time is kept, not used); returns the note that
        status shows when there is none in use."""
        self.stored_calibration = calibration
        unfit = calibration.unfit_for(self.settings.wobble.settle_s) if calibration is not None else None
        self.estimator.calibration = calibration if unfit is None else None
        if calibration is None:
            note: str | None = (f"no calibration: {self.settings.estimator.without_calibration} until "
                                "`temalign calibrate` runs")
        else:
            note = unfit
        self.calibration_note = note
        self.metrics.set_calibrated(self.estimator.calibration is not None)
        return unfit

    def calibrate(self, step_units: float = DEFAULT_STEP_UNITS) -> JsonObject:
        """Measure and store the 2 x 2 calibration between cycles (service.verbs.calibrate)."""
        return verbs.calibrate(self, {"step_units": step_units}, Caller(None, "daemon"))

    # ---- running and stopping ---------------------------------------------------------------------

    def reload(self, new: Settings) -> list[str]:
        """SIGHUP: take the new limits, thresholds, schedule, logging and promotion rule at once;
        sections that need new connections or files (microscope, source, paths, control, metrics,
        journal, the model) are kept until a restart, and the returned sentences say which. A file
        whose model's card is missing or invalid, or which the model gate refuses (not evaluated,
        or over `estimator.max_model_rmse_percent`), is refused as a whole, ConfigError: the running
        config and model stay, as that file would not survive the restart it asks for."""
        old = self.settings
        try:
            check_configured_card(new)
        except ModelError as error:
            raise ConfigError(f"{error}; the running model {old.estimator.model} and config stay") from None
        live = ("wobble", "quality", "safety", "schedule", "logging", "models")
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
            unfit = self.use_calibration(self.stored_calibration)
        if merged.logging != old.logging:
            from temalign.record.logs import configure_logging

            configure_logging(merged.logging.level, merged.logging.format)
        if self._scheduler is not None and merged.schedule != old.schedule:
            from apscheduler.triggers.interval import IntervalTrigger

            wall = self.clock.wall_seconds
            self._scheduler.reschedule_job("cycle", trigger=IntervalTrigger(
                seconds=wall(merged.schedule.interval_s), jitter=wall(merged.schedule.jitter_s) or None))
        notes = ["reloaded: wobble, quality, safety, schedule, logging, models and the estimator's "
                 "thresholds"]
        if kept:
            notes.append("kept until a restart: " + ", ".join(sorted(kept)))
        if unfit is not None:
            notes.append(f"the stored calibration is not used: {unfit}")
        self.journal.append("reload", notes=notes)
        return notes

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads. Call before `start()`: systemd may send SIGTERM as
        soon as READY is out, and the default action would kill a cycle mid-wobble."""
        if not self._signals:
            self._signals = True
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._hup.set())

    def run_forever(self, read_config: Callable[[], Settings] | None = None) -> int:
        """Until SIGTERM or SIGINT: `watch`, then a clean stop. Returns the exit status."""
        self.install_signal_handlers()
        self.watch(read_config)
        self.stop()
        return 0

    def watch(self, read_config: Callable[[], Settings] | None = None) -> None:
        """The service's own loop until stopped: the watchdog pinged while every listener is served
        (a dead one stops the pings, so systemd restarts the daemon), a reload on SIGHUP."""
        ping = notify.watchdog_interval_s()
        said: str | None = None
        while not self._stop.wait(min(ping / 2, 1.0) if ping else 1.0):
            problem = self.healthy()
            if problem is None:
                if ping:
                    notify.watchdog_ping()
            elif problem != said:
                self.journal.append("unhealthy", why=problem)
                log.error("unhealthy: the watchdog is no longer pinged, systemd restarts the daemon",
                          why=problem)
            said = problem
            if self._hup.is_set():
                self._hup.clear()
                self.apply_reload(read_config)

    def healthy(self) -> str | None:
        """None while the service does its job; else what died."""
        if self._control is not None and not self._control.alive():
            return "the control socket's listener died"
        if self._metrics_served and not self.metrics.alive():
            return "the metrics endpoint's listener died"
        if self._http is not None and not self._http.alive():
            return "the HTTP control endpoint's listener died"
        if self._scheduler is not None and not self._scheduler.running:
            return "the scheduler stopped"
        return None

    def apply_reload(self, read_config: Callable[[], Settings] | None) -> None:
        """SIGHUP: read and validate the file, then take it (`reload`); a bad file keeps the running
        config, and the refusal is journaled without the file's values (the file may be one a
        person reading the journal must not see: ConfigError.summary)."""
        notify.reloading()
        try:
            if read_config is None:
                raise ConfigError("no config file to reload")
            for note in self.reload(read_config()):
                log.info("reload", note=note)
        except ConfigError as error:
            self.journal.append("reload", refused=error.summary)
            log.error("reload refused; the running config stays", error=error.summary)
        notify.ready(self.status_line())

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
            if self._http is not None:
                self._http.close()
                self._http = None
            if self.started:
                self.journal.append("stop")
                self.started = False
                log.info("stop", uptime=round(self.uptime_s(), 1), cycles=self.cycles_run)
            self.metrics.set_state("stopping")
            self.metrics.shutdown()
            self.journal.close()


def _host(host: str) -> str:
    """A host as a URL has it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
