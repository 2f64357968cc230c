"""The service around the cycle: start-up recovery, the control verbs, metrics, what survives a
restart, and a real `temalign run` process stopped by SIGTERM. All against a twin over TCP."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from temalign.config.schema import Settings
from temalign.errors import ConfigError
from temalign.optics import wobble_values
from temalign.record.journal import Journal, read_journal
from temalign.service.control import ControlError, request
from temalign.service.daemon import Daemon
from temalign.wobble.c1_memory import C1Memory

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(served: Any, root: Path, **sections: Any) -> dict[str, Any]:
    host, port = served.address
    return {"microscope": {"address": f"{host}:{port}"}, "paths": {"state_dir": str(root / "state")},
            "control": {"socket": str(root / "c.sock")},
            "metrics": {"host": "127.0.0.1", "port": free_port()},
            "schedule": {"interval_s": 3600, "jitter_s": 0, "mode": "dry-run"}, **sections}


def start_daemon(served: Any, connect: Any, root: Path, **sections: Any) -> Daemon:
    settings = Settings.model_validate(config(served, root, **sections))
    daemon = Daemon(settings, connect(served), clock=served.clock)
    daemon.start(schedule=False)
    return daemon


def offset(served: Any, dx: int, dy: int) -> None:
    aligned = served.truth()["aligned"]
    served.twin.move_aperture(round(aligned[0] + dx), round(aligned[1] + dy))


def test_a_session_through_the_control_verbs(make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    offset(served, 140, 90)
    daemon = start_daemon(served, connect, short_dir)
    sock = daemon.settings.control.socket
    try:
        status = request(sock, "status")
        assert status["state"] == "dry_run" and status["calibrated"] is False
        assert "no calibration" in status["calibration_note"]
        assert request(sock, "once")["outcome"] == "dry_run"
        cal = request(sock, "calibrate", {"step_units": 60})
        assert cal["source"] == "measured"
        assert request(sock, "status")["calibrated"] is True
        request(sock, "dry-run", {"on": False})
        once = request(sock, "once")
        assert once["outcome"] == "corrected", once
        assert math.hypot(*served.truth()["misalignment"]) < 40
        request(sock, "pause", {"for_s": 600, "reason": "exposure"})
        status = request(sock, "status")
        assert status["state"] == "paused" and status["pause_reason"] == "exposure"
        assert daemon.cycle().outcome == "skipped"
        with pytest.raises(ControlError, match="unknown request 'fly'"):
            request(sock, "fly")
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.settings.metrics.port}/metrics", timeout=5).read().decode()
        assert 'temalign_cycles_total{outcome="corrected"} 1.0' in metrics
        assert "temalign_calibrated 1.0" in metrics
    finally:
        daemon.stop()
    audit = [e for e in read_journal(short_dir / "state") if e["kind"] == "control"]
    assert {e["verb"] for e in audit} >= {"status", "once", "calibrate", "dry-run", "pause"}
    assert all(e["uid"] == os.getuid() for e in audit)


def test_scheduled_cycles_watch_with_checks_and_report_them(make_twin: Any, connect: Any,
                                                            short_dir: Path) -> None:
    """After an aligned cycle the next scheduled look is the two-frame check; status, metrics and
    the journal show it; a drift past the deadband turns the check into a correction."""
    from temalign.estimate.calibration import nominal_calibration, save_calibration
    from temalign.service.cli import describe_cycle

    served = make_twin()
    (short_dir / "state").mkdir()
    save_calibration(short_dir / "state", nominal_calibration())
    daemon = start_daemon(served, connect, short_dir, schedule={"mode": "live", "jitter_s": 0})
    sock = daemon.settings.control.socket
    try:
        daemon._scheduled()
        assert daemon.last[0]["outcome"] == "within_deadband" and daemon._next_look == "check"
        daemon._scheduled()
        status = request(sock, "status")
        assert status["last_cycles"][0]["outcome"] == "checked"
        assert status["misalignment"]["reason"] == "two-frame check"
        assert status["misalignment"]["misalignment"] < 8
        assert describe_cycle(status["last_cycles"][0]).startswith("checked: |m| ")
        assert "by the two-frame check, no move" in describe_cycle(status["last_cycles"][0])
        served.twin.inject("jump", units=[30.0, 25.0])  # the optic axis moves, as drift would
        daemon._scheduled()
        assert daemon.last[0]["outcome"] == "corrected" and daemon.last[0]["check"]["misalignment"] > 8
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.settings.metrics.port}/metrics", timeout=5).read().decode()
        assert 'temalign_cycles_total{outcome="checked"} 1.0' in metrics
    finally:
        daemon.stop()
    labels = [e["label"] for e in read_journal(short_dir / "state")
              if e["kind"] == "wobble" and e["phase"] == "intent"]
    assert labels == ["before", "check", "check", "before", "verify"]


def test_pause_dry_run_hold_and_reference_survive_a_restart(make_twin: Any, connect: Any,
                                                            short_dir: Path) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    sock = daemon.settings.control.socket
    request(sock, "dry-run", {"on": False})
    request(sock, "pause", {})
    request(sock, "reference-set")
    daemon.parts.state.update(hold="test: two rollbacks")
    daemon.stop()
    with Journal(short_dir / "state") as journal:  # a move 40 units long, just before the restart
        op = journal.intent("move", origin=(0, 0), target=(24, 32))
        journal.outcome(op, "move", ok=True, read_back=(24, 32))
    again = start_daemon(served, connect, short_dir)
    try:
        assert again.parts.ledger.moved_since(again.clock.now()) == pytest.approx(40.0)
        status = request(sock, "status")
        assert status["state"] == "hold" and status["mode"] == "live" and status["paused"] is True
        assert status["reference"] == list(served.truth()["aperture"])
        request(sock, "hold-clear")
        request(sock, "resume")
        assert request(sock, "status")["state"] == "running"
    finally:
        again.stop()


def test_start_puts_c1_back_and_records_a_move_in_flight(make_twin: Any, connect: Any,
                                                         short_dir: Path) -> None:
    served = make_twin()
    state_dir = short_dir / "state"
    state_dir.mkdir()
    c0 = served.lens_reads()
    values = wobble_values(c0, 0.03)
    C1Memory(state_dir).begin(c0, values)  # a daemon killed mid-wobble ...
    served.twin.set_c1(values[1])  # ... with C1 at the second step
    with Journal(state_dir) as journal:
        journal.intent("move", origin=(0, 0), target=(10, 10))  # ... or mid-move
    daemon = start_daemon(served, connect, short_dir)
    try:
        assert served.lens_reads() == pytest.approx(c0, rel=1e-12)
        entries = read_journal(state_dir)
        recovered = [e for e in entries if e["kind"] == "recovery"]
        assert any("restored" in e["note"] for e in recovered)
        assert any("was in flight" in e["note"] for e in recovered)
        assert daemon.journal.pending() == []
    finally:
        daemon.stop()


def test_a_model_card_that_does_not_match_the_config_refuses_to_start(make_twin: Any, connect: Any,
                                                                       short_dir: Path) -> None:
    served = make_twin()
    settings = Settings.model_validate(config(served, short_dir, wobble={"fraction": 0.06}))
    with pytest.raises(ConfigError, match=r"trained on wobbles of 0\.015 to 0\.04"):
        Daemon(settings, connect(served), clock=served.clock)
    # the journal lock was released: a corrected config starts
    settings = Settings.model_validate(config(served, short_dir))
    Daemon(settings, connect(served), clock=served.clock).stop()


def test_temalign_run_as_a_process(make_twin: Any, short_dir: Path) -> None:
    """systemd's view: READY over NOTIFY_SOCKET, the CLI verbs, SIGTERM -> exit 0 with C1 back."""
    served = make_twin()
    cfg = config(served, short_dir, wobble={"settle_s": 0.01}, schedule={"interval_s": 10, "jitter_s": 0,
                                                                         "mode": "dry-run"})
    path = short_dir / "temalign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    notify_path = short_dir / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    c0 = served.lens_reads()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    cli = [sys.executable, "-m", "temalign.cli"]
    proc = subprocess.Popen([*cli, "run", "--config", str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert listener.recv(4096).decode().startswith("READY=1")
        status = subprocess.run([*cli, "status", "--config", str(path), "--json"], capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["mode"] == "dry-run"
        once = subprocess.run([*cli, "once", "--config", str(path)], capture_output=True, text=True,
                              timeout=120)
        assert once.returncode == 0 and once.stdout.startswith("dry_run"), once
        paused = subprocess.run([*cli, "pause", "--config", str(path), "--for", "1h"], capture_output=True,
                                text=True, timeout=60)
        assert paused.returncode == 0 and paused.stdout.startswith("paused for 1h, until "), paused
        path.write_text(yaml.safe_dump({**cfg, "safety": {"deadband_units": 7.0}}))
        proc.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: _limits(cli, path)["deadband_units"] == 7.0)
        path.write_text("safety: {deadband_units: 'seven'}\n")
        proc.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: any("refused" in e for e in read_journal(short_dir / "state")
                                     if e["kind"] == "reload"))
        assert _limits(cli, path.with_name("good.yaml"), cfg)["deadband_units"] == 7.0  # still running on it
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert served.lens_reads() == pytest.approx(c0, rel=1e-12)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "cycle" and line.get("outcome") == "dry_run" for line in lines)
    path = path.with_name("good.yaml")
    history = subprocess.run([*cli, "history", "--config", str(path), "-n", "5"], capture_output=True,
                             text=True, timeout=60)
    assert history.returncode == 0 and "dry_run" in history.stdout
    down = subprocess.run([*cli, "status", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 3, "LSB: 3 is not running"
    assert "no temalign daemon" in down.stderr and "Traceback" not in down.stderr


def _wait_for(check: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _limits(cli: list[str], path: Path, write: dict[str, Any] | None = None) -> dict[str, Any]:
    if write is not None:
        path.write_text(yaml.safe_dump(write))
    out = subprocess.run([*cli, "status", "--config", str(path), "--json"], capture_output=True, text=True,
                         timeout=60)
    return json.loads(out.stdout)["limits"] if out.returncode == 0 else {}


def test_reload_takes_limits_and_keeps_what_needs_a_restart(make_twin: Any, connect: Any,
                                                             short_dir: Path) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    try:
        raw = config(served, short_dir)
        raw["safety"] = {"gain": 0.5, "hold_after_failures": 7}
        raw["wobble"] = {"fraction": 0.02, "settle_s": 1.0}
        raw["metrics"] = {"port": raw["metrics"]["port"] + 1}
        notes = daemon.reload(Settings.model_validate(raw))
        assert daemon.settings.safety.gain == 0.5 and daemon.parts.failures.limit == 7
        assert daemon.settings.wobble.settle_s == 1.0 and daemon.settings.wobble.fraction == 0.03
        assert "metrics" in notes[-1] and "wobble.fraction" in notes[-1]
    finally:
        daemon.stop()


def test_acquisition_refuses_while_the_daemon_runs_unpaused(make_twin: Any, connect: Any, short_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import acquire

    served = make_twin({"camera": {"width": 64, "height": 64}})
    daemon = start_daemon(served, connect, short_dir)
    cfg = short_dir / "daemon.yaml"
    cfg.write_text(yaml.safe_dump(config(served, short_dir)))
    host, port = served.address
    args = ["--microscope", f"{host}:{port}", "--time-scale", "1000", "--radius", "50", "--samples", "3",
            "--out", str(short_dir / "set.npz"), "--state-dir", str(short_dir / "tool-state"),
            "--no-progress", "--daemon-config", str(cfg)]
    try:
        assert acquire.main(args) == 2
        assert "temalign pause" in capsys.readouterr().err
        assert not (short_dir / "set.npz").exists()
        request(daemon.settings.control.socket, "pause", {})
        assert acquire.main(args) == 0
        assert (short_dir / "set.npz").exists()
    finally:
        daemon.stop()


def _start_run(cli: list[str], path: Path, notify_path: Path) -> tuple[subprocess.Popen, socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    proc = subprocess.Popen([*cli, "run", "--config", str(path)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, listener


def test_sigkill_mid_wobble_then_restart_puts_c1_back(make_twin: Any, short_dir: Path) -> None:
    """A real `temalign run` killed with SIGKILL while C1 is off its value; the next start restores it."""
    served = make_twin()
    cfg = config(served, short_dir, wobble={"settle_s": 0.3},
                 schedule={"interval_s": 10, "jitter_s": 0, "mode": "dry-run"})
    path = short_dir / "temalign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    record = short_dir / "state" / "c1-wobble.json"
    c0 = served.lens_reads()
    cli = [sys.executable, "-m", "temalign.cli"]
    proc, listener = _start_run(cli, path, short_dir / "n1")
    try:
        assert listener.recv(4096).decode().startswith("READY=1")
        assert _wait_for(lambda: record.exists() and served.lens_reads() != pytest.approx(c0, rel=1e-9),
                         timeout_s=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert served.lens_reads() != pytest.approx(c0, rel=1e-9)  # killed with C1 off its value
    entries = read_journal(short_dir / "state")  # readable after the kill
    assert any(e["kind"] == "wobble" and e.get("phase") == "intent" for e in entries)
    proc, listener = _start_run(cli, path, short_dir / "n2")
    try:
        assert listener.recv(4096).decode().startswith("READY=1")
        assert served.lens_reads() == pytest.approx(c0, rel=1e-12)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    notes = [e["note"] for e in read_journal(short_dir / "state") if e["kind"] == "recovery"]
    assert any("restored" in note for note in notes), notes


def test_a_real_prometheus_scrapes_the_daemon_and_the_dashboard_has_data(make_twin: Any, connect: Any,
                                                                          short_dir: Path) -> None:
    """The Debian prometheus scrapes a daemon that ran real cycles; every dashboard query answers."""
    from test_metrics import PROMETHEUS, dashboard_expressions, query

    if PROMETHEUS is None:
        pytest.skip("prometheus absent (Debian package prometheus; .ci/run installs it)")
    served = make_twin()
    offset(served, 150, -60)
    daemon = start_daemon(served, connect, short_dir, schedule={"interval_s": 3600, "jitter_s": 0,
                                                                "mode": "live"})
    prom_port = free_port()
    (short_dir / "prom.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "temalign", "static_configs": [
            {"targets": [f"127.0.0.1:{daemon.settings.metrics.port}"]}]}]}))
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={short_dir / 'prom.yml'}", f"--storage.tsdb.path={short_dir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        daemon.calibrate()
        outcomes = [daemon.cycle().outcome for _ in range(3)]
        assert "corrected" in outcomes, outcomes
        pending = dashboard_expressions(f"127.0.0.1:{daemon.settings.metrics.port}")
        deadline = time.monotonic() + 40.0
        while pending and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # Prometheus still starting
                pending = [expr for expr in pending if not query(prom_port, expr)]
            time.sleep(0.5)
        assert not pending, f"dashboard expressions without data from the daemon: {pending}"
        corrected = query(prom_port, 'temalign_cycles_total{outcome="corrected"}')
        assert float(corrected[0]["value"][1]) == outcomes.count("corrected")
    finally:
        prometheus.send_signal(signal.SIGTERM)
        prometheus.wait(timeout=20)
        daemon.stop()


def test_a_move_finished_before_a_kill_is_not_taken_for_a_person(make_twin: Any, connect: Any,
                                                                 short_dir: Path) -> None:
    """Killed after a move's read-back but before its cycle ended: last_position is stale; the
    restart takes the journal's completed move, so the next cycle does not pause."""
    served = make_twin()
    state_dir = short_dir / "state"
    state_dir.mkdir()
    start = tuple(int(v) for v in served.truth()["aperture"])
    target = (start[0] + 30, start[1] - 20)
    from temalign.record.state import StateStore

    StateStore(state_dir).update(last_position=start, last_c1=served.lens_reads())
    with Journal(state_dir) as journal:
        op = journal.intent("move", origin=start, target=target)
        served.twin.move_aperture(*target)
        journal.outcome(op, "move", ok=True, read_back=tuple(int(v) for v in served.truth()["aperture"]))
    daemon = start_daemon(served, connect, short_dir)
    try:
        assert daemon.store.load("dry-run").last_position == tuple(int(v) for v in served.truth()["aperture"])
        assert daemon.cycle().reason != "aperture_moved"
    finally:
        daemon.stop()
