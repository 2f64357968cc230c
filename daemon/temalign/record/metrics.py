"""The daemon's Prometheus metrics, in a registry of their own.

A registry per `Metrics` (not prometheus_client's global one) lets tests and two daemons in one
process coexist. Names follow Prometheus conventions: base units (the aperture motor's units, seconds),
`_total` on counters, one `axis` label ("x", "y") instead of a metric per axis. Series whose value is
unknown until the first cycle (per-axis estimates, position, drift) are absent until then rather than
a misleading 0; unlabelled figures start as NaN. No counter or histogram exports a `_created`
series (prometheus_client's default): it doubles the series and no dashboard or alert reads it.
`temalign_build_info` names the version, the model in use and the runtimes, as Prometheus's own
build info does.
"""

from __future__ import annotations

import math
import platform
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)

from temalign import __version__
from temalign.decide.promotion import Evidence
from temalign.errors import TemalignError
from temalign.listeners import BoundedThreads, Serving
from temalign.record.result import MICROSCOPE_UNREACHABLE, OUTCOMES, CycleResult
from temalign.values import finite

STATES = ("running", "paused", "hold", "dry_run", "starting", "stopping")
"""The values of the `temalign_state` enum."""

ESTIMATORS = ("model", "classical")
SWAPS = ("promote", "rollback", "reset")
"""The kinds of `temalign_model_swaps_total` (service.lifecycle)."""
SHADOW_MODELS = ("live", "candidate")
LIMITS = ("max_step", "rate_limit", "window", "max_excursion", "hardware")
AXES = ("x", "y")

CYCLE_BUCKETS_S = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
"""A cycle is a wobble of 7 settles plus, after a move, a second wobble to verify: seconds to minutes."""

INFERENCE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""One estimate on a 7-frame stack: sub-millisecond for the classical one, up to ~1 s for a model."""

NAMESPACE = "temalign"
MAX_SCRAPERS = 8
"""Connections served at once: Prometheus scrapes with one, a person's curl with another."""
SCRAPE_TIMEOUT_S = 10.0
"""How long a client may take to send its request before the connection is closed."""


# Process-wide in prometheus_client (temalign is its only user in the daemon); the function is untyped.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _runtime_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape (a line every 15 s for years says nothing)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsError(TemalignError):
    """The metrics endpoint could not be started (typically: its port is taken)."""


def _gauge_value(value: float | None) -> float:
    """NaN for a figure that was not measured, so Grafana shows a gap instead of a false 0."""
    return float(value) if value is not None else math.nan


class Metrics:
    """All figures the daemon exports; the daemon calls one method per event."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._serving: Serving | None = None
        self._address: tuple[str, int] | None = None
        self._lock = threading.Lock()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        self.misalignment_estimate = Gauge(
            "misalignment_estimate_units",
            "Estimated misalignment of the condenser aperture, per axis, in motor units (the combined "
            "estimate of the last cycle)",
            ["axis"], namespace=NAMESPACE, registry=r)
        self.misalignment = Gauge(
            "misalignment_units",
            "Magnitude |m| of the estimated misalignment before the last cycle's correction, motor units",
            namespace=NAMESPACE, registry=r)
        self.misalignment_after = Gauge(
            "misalignment_after_units",
            "Magnitude |m| measured after the last correction (the verify wobble), motor units",
            namespace=NAMESPACE, registry=r)
        self.correction_applied = Gauge(
            "correction_applied_units",
            "Correction moved in the last cycle that moved, per axis, motor units",
            ["axis"], namespace=NAMESPACE, registry=r)
        self.correction_path = Counter(
            "correction_path_units",
            "Euclidean path length of all corrections moved since start, motor units",
            namespace=NAMESPACE, registry=r)
        self.aperture_position = Gauge(
            "aperture_position_units",
            "Aperture position read back at the end of the last cycle, per axis, motor units",
            ["axis"], namespace=NAMESPACE, registry=r)
        self.drift = Gauge(
            "drift_units",
            "Aligned aperture position relative to the session's reference, per axis, motor units",
            ["axis"], namespace=NAMESPACE, registry=r)
        self.cycles = Counter(
            "cycles",
            "Cycles by outcome",
            ["outcome"], namespace=NAMESPACE, registry=r)
        self.cycle_duration = Histogram(
            "cycle_duration_seconds",
            "Wall time of one cycle: wobble(s), estimates, move, verify",
            namespace=NAMESPACE, registry=r, buckets=CYCLE_BUCKETS_S)
        self.inference_duration = Histogram(
            "inference_duration_seconds",
            "Time of one estimate on one stack, by estimator",
            ["estimator"], namespace=NAMESPACE, registry=r, buckets=INFERENCE_BUCKETS_S)
        self.state = Enum(
            "state",
            "The daemon's state",
            namespace=NAMESPACE, registry=r, states=list(STATES))
        self.limit_hits = Counter(
            "safety_limit_hits",
            "Corrections clipped or refused by a limit of the safety envelope, by limit",
            ["limit"], namespace=NAMESPACE, registry=r)
        self.model_info = Info(
            "model",
            "Identity of the estimator model in use",
            namespace=NAMESPACE, registry=r)
        self.build_info = Info(
            "build",
            "The daemon's version, the model file in use and the runtimes it runs on",
            namespace=NAMESPACE, registry=r)
        self._build = {"version": __version__, "model": "", "python": platform.python_version(),
                       "litert": _runtime_version("ai-edge-litert"),
                       "prometheus_client": _runtime_version("prometheus-client")}
        self.build_info.info(self._build)
        self.last_success = Gauge(
            "last_success_timestamp_seconds",
            "Unix time of the last cycle that ended without error (set to the start time at start)",
            namespace=NAMESPACE, registry=r)
        self.last_cycle = Gauge(
            "last_cycle_timestamp_seconds",
            "Unix time of the last cycle, whatever its outcome",
            namespace=NAMESPACE, registry=r)
        self.confidence = Gauge(
            "confidence",
            "Confidence (0 to 1) of the last cycle's estimate",
            namespace=NAMESPACE, registry=r)
        self.microscope_up = Gauge(
            "microscope_up",
            "1 while the microscope connection answers, else 0",
            namespace=NAMESPACE, registry=r)
        self.calibrated = Gauge(
            "calibrated",
            "1 when a calibration for the classical estimator is loaded, else 0",
            namespace=NAMESPACE, registry=r)
        self.stack_store_bytes = Gauge(
            "stack_store_bytes",
            "Bytes the stack store holds (stacks and their labels); absent value (NaN) without a store",
            namespace=NAMESPACE, registry=r)
        self.stack_store_stacks = Gauge(
            "stack_store_stacks",
            "Wobble stacks the stack store holds",
            namespace=NAMESPACE, registry=r)
        self.stack_store_stopped = Gauge(
            "stack_store_stopped",
            "1 while the stack store does not store (low disk space, an unwritable directory), else 0",
            namespace=NAMESPACE, registry=r)

        self.shadow_verified = Gauge(
            "shadow_verified_cycles",
            "Verified cycles the candidate in shadow has been scored on (NaN: no candidate in shadow)",
            namespace=NAMESPACE, registry=r)
        self.shadow_rms = Gauge(
            "shadow_rms_error_units",
            "RMS error against the verified outcomes in shadow, by model (the live one, the candidate), "
            "motor units",
            ["model"], namespace=NAMESPACE, registry=r)
        self.shadow_failures = Counter(
            "shadow_failures",
            "Stacks the candidate in shadow failed on, or shadow records that failed, since start",
            namespace=NAMESPACE, registry=r)
        self.model_swaps = Counter(
            "model_swaps",
            "Swaps of the live model since start, by kind (promote, rollback, reset)",
            ["kind"], namespace=NAMESPACE, registry=r)

        for kind in SWAPS:
            self.model_swaps.labels(kind=kind)
        self.set_shadow(None)
        for outcome in OUTCOMES:
            self.cycles.labels(outcome=outcome)
        for limit in LIMITS:
            self.limit_hits.labels(limit=limit)
        for estimator in ESTIMATORS:
            self.inference_duration.labels(estimator=estimator)
        self.misalignment.set(math.nan)
        for gauge in (self.stack_store_bytes, self.stack_store_stacks, self.stack_store_stopped):
            gauge.set(math.nan)
        self.misalignment_after.set(math.nan)
        self.confidence.set(math.nan)
        self.last_cycle.set(math.nan)
        # The start counts as the last good news: "no success for 15 min" then also catches a daemon
        # that never succeeds, without firing the moment it starts.
        self.last_success.set(time.time())
        self.state.state("starting")

    @property
    def address(self) -> tuple[str, int] | None:
        """Host and port the endpoint listens on (port 0 at `serve` picks a free one), or None."""
        return self._address if self._serving is not None else None

    def serve(self, host: str, port: int, *, max_connections: int = MAX_SCRAPERS,
              request_timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        """Serve this registry over HTTP from a daemon thread: at most `max_connections` at once,
        each with `request_timeout_s` to send its request (temalign.listeners); MetricsError if the
        port cannot be bound."""
        if self._serving is not None:
            raise MetricsError(f"metrics endpoint already serving on {self.address}")

        class Server(BoundedThreads, WSGIServer):
            pass

        class Handler(_QuietHandler):
            timeout = request_timeout_s

        Server.max_connections = max_connections
        Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            server = make_server(host, port, make_wsgi_app(self.registry), Server, handler_class=Handler)
        except OSError as error:
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: {error.strerror or error} "
                "(another process holds the port? change metrics.port or set metrics.enabled: false)"
            ) from error
        bound = server.socket.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        self._serving = Serving(server, "metrics")

    def alive(self) -> bool:
        """Whether the endpoint is served (the watchdog's question; False when not serving)."""
        return self._serving is not None and self._serving.alive()

    def shutdown(self) -> None:
        """Stop the endpoint and free its port; harmless when not serving."""
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()

    def observe(self, result: CycleResult, *, reference: tuple[int, int] | None,
                timestamp: float | None = None) -> None:
        """Everything one finished cycle says: its outcome and figures, each estimator's time, the
        limits its decision hit, and whether the microscope answered. The drift is where the
        aperture should be (position + estimate) against the session's `reference`."""
        before, after = result.before, result.after
        estimate = result.estimate
        drift = None
        if estimate is not None and result.position_before and reference:
            drift = (result.position_before[0] + estimate[0] - reference[0],
                     result.position_before[1] + estimate[1] - reference[1])
        self.observe_cycle(outcome=result.outcome, duration_s=result.duration_s, estimate=estimate,
                           applied=result.applied, position=result.position_after, drift=drift,
                           misalignment_after=after.misalignment if after else None,
                           confidence=before.confidence if before else None, timestamp=timestamp)
        for measurement in (before, after):
            if measurement is not None and measurement.inference_ms:
                self.observe_inference("model", (measurement.preprocess_ms + measurement.inference_ms) / 1e3)
            if measurement is not None and measurement.classical_ms:
                self.observe_inference("classical", measurement.classical_ms / 1e3)
        if result.decision is not None:
            for limit in result.decision.limits_hit:
                self.limit_hit(limit)
        self.set_connection(result.reason != MICROSCOPE_UNREACHABLE)

    def observe_cycle(
        self,
        *,
        outcome: str,
        duration_s: float,
        estimate: tuple[float, float] | None = None,
        applied: tuple[float, float] | None = None,
        position: tuple[int, int] | None = None,
        drift: tuple[float, float] | None = None,
        misalignment_before: float | None = None,
        misalignment_after: float | None = None,
        confidence: float | None = None,
        timestamp: float | None = None,
    ) -> None:
        """Record one finished cycle; figures left None were not measured in it.

        `misalignment_before` defaults to |estimate|. `applied` is the correction actually moved (its
        length adds to the path counter); a cycle that did not move leaves the last one shown. Every
        outcome but "error" counts as success for `temalign_last_success_timestamp_seconds`, so a
        paused daemon that records its "skipped" cycles does not look dead.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        when = time.time() if timestamp is None else float(timestamp)
        with self._lock:
            self.cycles.labels(outcome=outcome).inc()
            if finite(duration_s) and duration_s >= 0:
                self.cycle_duration.observe(float(duration_s))
            if estimate is not None:
                self._per_axis(self.misalignment_estimate, estimate)
                if misalignment_before is None:
                    misalignment_before = math.hypot(float(estimate[0]), float(estimate[1]))
            if applied is not None:
                self._per_axis(self.correction_applied, applied)
                length = math.hypot(float(applied[0]), float(applied[1]))
                if math.isfinite(length):
                    self.correction_path.inc(length)
            if position is not None:
                self._per_axis(self.aperture_position, position)
            if drift is not None:
                self._per_axis(self.drift, drift)
            self.misalignment.set(_gauge_value(misalignment_before))
            self.misalignment_after.set(_gauge_value(misalignment_after))
            self.confidence.set(_gauge_value(confidence))
            self.last_cycle.set(when)
            if outcome != "error":
                self.last_success.set(when)

    @staticmethod
    def _per_axis(gauge: Gauge, values: tuple[float, float] | tuple[int, int]) -> None:
        if len(values) != 2:
            raise ValueError(f"expected (x, y), got {values!r}")
        for axis, value in zip(AXES, values, strict=True):
            gauge.labels(axis=axis).set(float(value))

    def observe_inference(self, estimator: str, seconds: float) -> None:
        """Time of one estimate by `estimator` ("model" or "classical")."""
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
        self.inference_duration.labels(estimator=estimator).observe(float(seconds))

    def set_state(self, state: str) -> None:
        """The daemon's state; one of STATES ("dry-run" is accepted for "dry_run")."""
        state = state.replace("-", "_")
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        self.state.state(state)

    def limit_hit(self, limit: str) -> None:
        """A correction was clipped or refused by `limit` (one of LIMITS)."""
        if limit not in LIMITS:
            raise ValueError(f"unknown limit {limit!r}; expected one of {', '.join(LIMITS)}")
        self.limit_hits.labels(limit=limit).inc()

    def set_model(self, identity: Mapping[str, str]) -> None:
        """Identity of the model (name, sha256, card date...) as `temalign_model_info` labels.

        Keys are made valid label names (other characters become "_"), values strings.
        """
        labels: dict[str, str] = {}
        for key, value in identity.items():
            name = re.sub(r"[^a-zA-Z0-9_]", "_", str(key))
            if not name or name[0].isdigit() or name.startswith("__"):
                name = f"k_{name.lstrip('_')}"
            labels[name] = str(value)
        self.model_info.info(labels)
        self._build["model"] = str(identity.get("file", identity.get("name", "")))
        self.build_info.info(self._build)

    def set_shadow(self, evidence: Evidence | None) -> None:
        """The shadow's evidence so far (None: no candidate in shadow, every figure NaN)."""
        self.shadow_verified.set(math.nan if evidence is None else evidence.verified)
        for name in SHADOW_MODELS:
            score = None if evidence is None else getattr(evidence, name)
            self.shadow_rms.labels(model=name).set(_gauge_value(None if score is None else score.rms))

    def shadow_failed(self) -> None:
        """The candidate failed on a stack, or a shadow record failed."""
        self.shadow_failures.inc()

    def model_swapped(self, kind: str) -> None:
        """The live model was swapped (`kind`: one of SWAPS)."""
        if kind not in SWAPS:
            raise ValueError(f"unknown swap {kind!r}; expected one of {', '.join(SWAPS)}")
        self.model_swaps.labels(kind=kind).inc()

    def set_connection(self, up: bool) -> None:
        """Whether the microscope answers (`temalign_microscope_up`)."""
        self.microscope_up.set(1 if up else 0)

    def set_calibrated(self, calibrated: bool) -> None:
        """Whether the classical estimator has a calibration (`temalign_calibrated`)."""
        self.calibrated.set(1 if calibrated else 0)

    def watch_stack_store(self, status: Callable[[], Mapping[str, object]]) -> None:
        """Read the stack store's `status()` (record.stacks) at every scrape: its bytes, stacks, and
        whether it stopped storing."""
        def figure(key: str) -> float:
            value = status().get(key)
            return float(value) if isinstance(value, int | float) else math.nan

        self.stack_store_bytes.set_function(lambda: figure("bytes"))
        self.stack_store_stacks.set_function(lambda: figure("stacks"))
        self.stack_store_stopped.set_function(lambda: 0.0 if status().get("stopped") is None else 1.0)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, as the endpoint serves it."""
        return generate_latest(self.registry)
