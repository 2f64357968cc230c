"""Metrics, logs, systemd notify and the unit, Prometheus and Grafana configuration.

The Prometheus checks run the real tools from Debian's `prometheus` package (installed by .ci/run):
`promtool` on the exposition, rules and config, and a `prometheus` server on loopback that scrapes a
live Metrics endpoint.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import yaml
from prometheus_client.parser import text_string_to_metric_families

from temalign.record.logs import configure_logging, cycle_line
from temalign.record.metrics import LIMITS, STATES, Metrics, MetricsError
from temalign.record.result import OUTCOMES as CYCLE_OUTCOMES
from temalign.service import notify

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "temalign.json"
UNIT = ROOT / "systemd" / "temalign.service"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool absent (Debian package prometheus)")


def populated() -> Metrics:
    """A Metrics with every family holding samples, as after a few cycles."""
    metrics = Metrics()
    metrics.set_state("running")
    metrics.set_connection(True)
    metrics.set_calibrated(True)
    metrics.set_model({"name": "wobble_physics", "sha256": "0123abcd", "card-date": "2025-01-01"})
    metrics.observe_inference("model", 0.004)
    metrics.observe_inference("classical", 0.0007)
    metrics.limit_hit("max_step")
    metrics.observe_cycle(outcome="corrected", duration_s=31.5, estimate=(30.0, -40.0), applied=(24.0, -32.0),
                          position=(123, -7), drift=(24.0, -32.0), misalignment_after=9.5, confidence=0.93)
    metrics.observe_cycle(outcome="within_deadband", duration_s=16.0, estimate=(2.0, 1.0), position=(123, -7),
                          confidence=0.97)
    return metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: Metrics, metric: str, /, **labels: str) -> float:
    return samples(metrics)[(metric, tuple(sorted(labels.items())))]


# --- metrics -------------------------------------------------------------------------------------

@needs_promtool
def test_exposition_passes_promtool_check_metrics() -> None:
    text = populated().exposition()
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_figures_of_a_cycle_reach_the_exposition() -> None:
    metrics = populated()
    assert value(metrics, "temalign_misalignment_estimate_units", axis="y") == 1.0
    assert value(metrics, "temalign_misalignment_units") == pytest.approx(math.hypot(2.0, 1.0))
    assert value(metrics, "temalign_correction_applied_units", axis="x") == 24.0
    assert value(metrics, "temalign_correction_path_units_total") == pytest.approx(40.0)
    assert value(metrics, "temalign_aperture_position_units", axis="x") == 123.0
    assert value(metrics, "temalign_drift_units", axis="y") == -32.0
    assert value(metrics, "temalign_confidence") == 0.97
    assert math.isnan(value(metrics, "temalign_misalignment_after_units"))
    assert value(metrics, "temalign_cycles_total", outcome="corrected") == 1.0
    assert value(metrics, "temalign_cycle_duration_seconds_count") == 2.0
    assert value(metrics, "temalign_cycle_duration_seconds_bucket", le="30.0") == 1.0
    assert value(metrics, "temalign_inference_duration_seconds_count", estimator="model") == 1.0
    assert value(metrics, "temalign_state", temalign_state="running") == 1.0
    assert value(metrics, "temalign_state", temalign_state="starting") == 0.0
    assert value(metrics, "temalign_safety_limit_hits_total", limit="max_step") == 1.0
    assert value(metrics, "temalign_microscope_up") == 1.0
    assert value(metrics, "temalign_calibrated") == 1.0
    assert value(metrics, "temalign_model_info", card_date="2025-01-01", name="wobble_physics",
                 sha256="0123abcd") == 1.0


def test_no_created_series_and_a_build_info() -> None:
    text = populated().exposition().decode()
    assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]
    build = {dict(labels)["version"]: (dict(labels), v) for (name, labels), v in samples(populated()).items()
             if name == "temalign_build_info"}
    labels, one = build["0.1.0"]
    assert one == 1.0 and labels["model"] == "wobble_physics" and labels["python"]
    assert labels["litert"] != "absent"
    metrics = Metrics()
    metrics.set_model({"file": "mine.tflite", "preprocess": "p", "trained": "2026-01-01"})
    assert value(metrics, "temalign_build_info", **{**labels, "model": "mine.tflite"}) == 1.0


def test_every_outcome_and_limit_is_there_from_the_start() -> None:
    fresh = samples(Metrics())
    for outcome in CYCLE_OUTCOMES:
        assert fresh[("temalign_cycles_total", (("outcome", outcome),))] == 0.0
    for limit in LIMITS:
        assert fresh[("temalign_safety_limit_hits_total", (("limit", limit),))] == 0.0
    assert fresh[("temalign_state", (("temalign_state", "starting"),))] == 1.0
    states = {dict(labels)["temalign_state"] for (name, labels) in fresh if name == "temalign_state"}
    assert states == set(STATES)


def test_only_an_error_leaves_the_last_success_time() -> None:
    metrics = Metrics()
    metrics.observe_cycle(outcome="skipped", duration_s=0.0, timestamp=1000.0)
    metrics.observe_cycle(outcome="error", duration_s=3.0, timestamp=2000.0)
    assert value(metrics, "temalign_last_success_timestamp_seconds") == 1000.0
    assert value(metrics, "temalign_last_cycle_timestamp_seconds") == 2000.0


def test_unknown_names_are_refused() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="outcome"):
        metrics.observe_cycle(outcome="corected", duration_s=1.0)
    with pytest.raises(ValueError, match="estimator"):
        metrics.observe_inference("tensorflow", 0.1)
    with pytest.raises(ValueError, match="limit"):
        metrics.limit_hit("max_speed")
    with pytest.raises(ValueError, match="state"):
        metrics.set_state("sleeping")
    metrics.set_state("dry-run")
    assert value(metrics, "temalign_state", temalign_state="dry_run") == 1.0
    assert value(metrics, "temalign_cycles_total", outcome="error") == 0.0


def test_two_instances_keep_separate_registries() -> None:
    first, second = Metrics(), Metrics()
    first.observe_cycle(outcome="corrected", duration_s=10.0)
    assert value(first, "temalign_cycles_total", outcome="corrected") == 1.0
    assert value(second, "temalign_cycles_total", outcome="corrected") == 0.0


def test_serve_answers_and_a_busy_port_is_a_clear_error() -> None:
    metrics, other = Metrics(), Metrics()
    metrics.serve("127.0.0.1", 0)
    try:
        assert metrics.address is not None
        host, port = metrics.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
            assert b"temalign_cycles_total" in reply.read()
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}"):
            other.serve("127.0.0.1", port)
    finally:
        metrics.shutdown()
    assert metrics.address is None
    other.serve("127.0.0.1", port)
    other.shutdown()


# --- Prometheus configuration, alert rules, Grafana dashboard -------------------------------------

@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    for args in (["check", "rules", str(PROMETHEUS_DIR / "temalign-alerts.yml")],
                 ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")]):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "temalign")
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9641"]
    assert job["scrape_interval"] == "15s"


@needs_promtool
def test_promtool_test_rules_passes_and_covers_every_alert() -> None:
    """The shipped unit tests of the rules (config/prometheus/temalign-alerts.test.yml): every alert
    quiet before its time, firing after it, with its labels and rendered annotations."""
    result = subprocess.run([PROMTOOL, "test", "rules", "temalign-alerts.test.yml"], cwd=PROMETHEUS_DIR,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for group in yaml.safe_load((PROMETHEUS_DIR / "temalign-alerts.yml").read_text())
              ["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "temalign-alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert firing == alerts and quiet == alerts, (alerts, firing, quiet)
    assert all("exp_annotations" in alert for case in cases for alert in case["exp_alerts"])


@needs_promtool
def test_promtool_test_rules_fails_when_a_rule_breaks(tmp_path: Path) -> None:
    """The rule tests can fail: a threshold moved past the test's time is caught."""
    for name in ("temalign-alerts.yml", "temalign-alerts.test.yml"):
        (tmp_path / name).write_text((PROMETHEUS_DIR / name).read_text())
    rules = tmp_path / "temalign-alerts.yml"
    rules.write_text(rules.read_text().replace("> 1800", "> 3600"))
    result = subprocess.run([PROMTOOL, "test", "rules", "temalign-alerts.test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "TemalignNoSuccessfulCycle" in result.stdout + result.stderr


def test_the_rules_comment_names_the_schedule_keys_and_their_defaults() -> None:
    from temalign.config.schema import ScheduleSettings

    text = (PROMETHEUS_DIR / "temalign-alerts.yml").read_text()
    assert "cycle.interval_s" not in text and "300 s" not in text
    defaults = ScheduleSettings()
    assert f"schedule.interval_s ({defaults.interval_s:g} s by default)" in text
    assert f"schedule.max_interval_s\n# ({defaults.max_interval_s:g} s by default)" in text
    threshold = re.search(r"temalign_last_success_timestamp_seconds > (\d+)", text)
    assert threshold is not None and int(threshold.group(1)) == 3 * defaults.interval_s


def test_prometheus_sends_alerts_to_a_local_alertmanager() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = [t for manager in config["alerting"]["alertmanagers"] for sc in manager["static_configs"]
               for t in sc["targets"]]
    assert targets == ["127.0.0.1:9093"]
    assert config["rule_files"] == ["temalign-alerts.yml"]


def dashboard_expressions(instance: str | None = None) -> list[str]:
    """The panels' queries; with `instance`, the `$instance` variable set to it, as Grafana does."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    return exprs if instance is None else [expr.replace("$instance", instance) for expr in exprs]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "temalign-alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


PROMQL_WORDS = {"sum", "by", "without", "rate", "increase", "histogram_quantile", "time", "sqrt", "and", "or",
                "unless", "max", "min", "avg", "count", "on", "ignoring", "bool", "offset", "le", "outcome",
                "estimator", "instance", "job", "abs"}


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression outside label matchers, strings, durations and grouping lists."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {name for name in names if name not in PROMQL_WORDS}


def test_the_dashboard_shows_one_instance_at_a_time_and_hold_in_red() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "instance" in variables and "label_values(" in variables["instance"]["query"]["query"]
    for expr in dashboard_expressions():
        selectors = re.findall(r"(temalign_[a-z_]+)(\{[^}]*\})?", expr)
        assert selectors, expr
        for name, matchers in selectors:
            assert 'instance=~"$instance"' in matchers, f"{name} in {expr!r} is not per instance"
        for grouping in re.findall(r"\b(?:sum|avg|max|min|count)\s+by\s*\(([^)]*)\)", expr):
            assert "instance" in grouping, f"{expr!r} adds up several microscopes"
        assert not re.search(r"\b(?:sum|avg|max|min|count)\s*\(", expr), f"{expr!r} aggregates all instances"
    state = next(p for p in dashboard["panels"] if p["title"] == "State")
    shown = {o["matcher"]["options"]: o["properties"][0]["value"][0]["options"]["1"]
             for o in state["fieldConfig"]["overrides"]}
    assert shown["hold"] == {"text": "hold", "color": "red"} and shown["running"]["color"] == "green"
    assert "active" not in json.dumps(state)


def test_every_metric_in_the_dashboard_and_rules_exists() -> None:
    exported = {name for (name, _labels) in samples(populated())}
    dash, rules = dashboard_expressions(), rule_expressions()
    assert len(dash) >= 12 and len(rules) == 5
    used = set().union(*(metric_names(expr) for expr in dash + rules))
    assert {"temalign_drift_units", "temalign_misalignment_after_units", "temalign_cycles_total",
            "temalign_state", "temalign_confidence", "temalign_inference_duration_seconds_bucket",
            "temalign_last_success_timestamp_seconds", "up"} <= used
    missing = sorted(name for name in used - {"up"} if name not in exported)
    assert not missing, f"dashboard/rules use metrics the daemon does not export: {missing}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def prometheus_scraping(tmp_path: Path) -> Iterator[tuple[int, Metrics]]:
    """A live Metrics endpoint and a real Prometheus on loopback scraping it every second."""
    if PROMETHEUS is None:
        pytest.skip("prometheus absent (Debian package prometheus)")
    metrics = populated()
    metrics.serve("127.0.0.1", 0)
    assert metrics.address is not None
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "temalign",
                                  "static_configs": [{"targets": ["{}:{}".format(*metrics.address)]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield port, metrics
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        metrics.shutdown()


def test_a_real_prometheus_scrapes_the_endpoint(prometheus_scraping: tuple[int, Metrics]) -> None:
    """Prometheus sees the target up and the values set here, and every dashboard query has data."""
    port, metrics = prometheus_scraping
    metrics.observe_cycle(outcome="corrected", duration_s=12.0, position=(123, 456), drift=(3.0, 4.0))
    deadline = time.monotonic() + 30.0
    up = position = drift = None
    while time.monotonic() < deadline:
        try:
            up = query(port, 'up{job="temalign"}')
            position = query(port, 'temalign_aperture_position_units{axis="x"}')
            drift = query(port, "sqrt(sum(temalign_drift_units ^ 2))")
        except OSError:
            pass
        else:
            if up and up[0]["value"][1] == "1" and position and drift:
                break
        time.sleep(0.3)
    assert up and up[0]["value"][1] == "1", f"Prometheus never saw the target up: {up}"
    assert position and float(position[0]["value"][1]) == 123.0
    assert drift and float(drift[0]["value"][1]) == pytest.approx(5.0)
    state = query(port, 'temalign_state{temalign_state="running"}')
    assert float(state[0]["value"][1]) == 1.0
    empty = dashboard_expressions("{}:{}".format(*metrics.address or ("", 0)))
    assert all("$instance" not in expr for expr in empty)
    while empty and time.monotonic() < deadline + 10.0:
        empty = [expr for expr in empty if not query(port, expr)]
        time.sleep(0.5)
    assert not empty, f"dashboard expressions without data from a live daemon: {empty}"


# --- logs ----------------------------------------------------------------------------------------

@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_logs_one_object_per_line_with_the_cycle_figures(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = structlog.get_logger("temalign.test")
    cycle_line(log, outcome="corrected", cycle=np.int64(7), estimate=(np.float32(1.5), np.float64("nan")),
               position=np.array([120, -4]), confidence=np.float64(0.91), before=float("inf"), reason="ok")
    log.debug("not shown at info")
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %r was missed", "cycle")
    logging.getLogger("apscheduler.executors.default").info("Job ran")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    line = json.loads(lines[0])
    assert line["event"] == "cycle" and line["level"] == "info" and line["logger"] == "temalign.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", line["timestamp"])
    assert line["cycle"] == 7 and line["estimate"] == [1.5, "NaN"] and line["position"] == [120, -4]
    assert line["confidence"] == 0.91 and line["before"] == "Infinity" and line["outcome"] == "corrected"
    foreign = json.loads(lines[1])
    assert foreign["logger"] == "apscheduler.scheduler" and foreign["level"] == "warning"
    assert foreign["event"] == "Run time of job 'cycle' was missed"


def test_a_failed_cycle_logs_at_error_level(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    cycle_line(structlog.get_logger("temalign"), outcome="within_deadband")
    cycle_line(structlog.get_logger("temalign"), outcome="error", error="timeout")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["level"], line["outcome"]) for line in lines] == [("error", "error")]


def test_console_on_a_terminal_and_json_elsewhere_in_auto(restore_logging: None) -> None:
    tty = FakeTty()
    configure_logging("info", "auto", tty)
    cycle_line(structlog.get_logger("temalign"), outcome="corrected", misalignment=12.5)
    text = tty.getvalue()
    assert "\x1b[" in text and "cycle corrected" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    pipe = io.StringIO()
    configure_logging("info", "auto", pipe)
    cycle_line(structlog.get_logger("temalign"), outcome="corrected", misalignment=12.5)
    assert json.loads(pipe.getvalue())["misalignment"] == 12.5
    assert tty.getvalue() == text


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("verbose", "json", io.StringIO())
    with pytest.raises(ValueError):
        configure_logging("info", "xml", io.StringIO())


# --- systemd notify ------------------------------------------------------------------------------

def receive(sock: socket.socket) -> str:
    sock.settimeout(2.0)
    return sock.recv(4096).decode()


def test_notify_sends_the_documented_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.ready("watching 127.0.0.1:7801")
        assert receive(sock) == "READY=1\nSTATUS=watching 127.0.0.1:7801"
        assert notify.status("cycle 3: corrected\nby 12 units")
        assert receive(sock) == "STATUS=cycle 3: corrected by 12 units"
        assert notify.watchdog_ping()
        assert receive(sock) == "WATCHDOG=1"
        assert notify.stopping()
        assert receive(sock) == "STOPPING=1"
        assert notify.reloading()
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", receive(sock))


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"temalign-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.notify("READY=1")
        assert receive(sock) == "READY=1"


def test_notify_without_systemd_is_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert notify.watchdog_ping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert notify.notify("READY=1") is False


def test_watchdog_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert notify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    assert notify.watchdog_interval_s() == 120.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval_s() == 120.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    for bad in ("0", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert notify.watchdog_interval_s() is None


# --- the unit ------------------------------------------------------------------------------------

@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart on an executable that exists here: verify checks it, and
    /opt/temalign is not installed on a CI machine."""
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze absent")
    text = UNIT.read_text()
    assert "\nExecStart=/opt/temalign/.venv/bin/temalign run --config /etc/temalign/temalign.yaml\n" in text
    copy = tmp_path / "temalign.service"
    copy.write_text(text.replace("ExecStart=/opt/temalign/.venv/bin/temalign", f"ExecStart={sys.executable}"))
    return copy


def test_systemd_analyze_verify_passes(unit_copy: Path) -> None:
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_copy)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "temalign.service" not in result.stderr, result.stderr
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=120", "Restart=on-failure",
                 "StateDirectory=temalign", "RuntimeDirectory=temalign", "BindReadOnlyPaths=-/tmp/.X11-unix",
                 "EnvironmentFile=-/etc/temalign/environment", "CapabilityBoundingSet=\n"):
        assert line in unit_copy.read_text()


def test_systemd_analyze_security_rates_the_unit_ok(unit_copy: Path) -> None:
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit_copy)],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for temalign\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_notify_never_blocks_on_a_stalled_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notify socket nobody reads fills up (10 datagrams on Linux): later messages are dropped,
    never waited for, so a stalled systemd cannot freeze a cycle."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        started = time.monotonic()
        sent = [notify.status(f"cycle {i}") for i in range(40)]
        assert time.monotonic() - started < 5.0
        assert sent[0] is True and sent[-1] is False
