"""Issue 15, the product as a new user meets it: the CLI's manners (help, --version, -s, durations,
messages, LSB exit codes), `status` with live figures and no Python reprs, the log lines (a short
one per cycle on a terminal, JSON with start/stop/pause events, LiteRT's own line kept off
stdout), and progress lines for `once`. Against the twin and a real `temalign run` process."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from test_daemon import config, offset, start_daemon

from temalign.cli import build_parser
from temalign.record.logs import configure_logging, cycle_line
from temalign.record.native_output import native_output_logged
from temalign.service.control import ControlError, request
from temalign.service.describe import describe_status

CLI = [sys.executable, "-m", "temalign.cli"]
REPR = re.compile(r"\bNone\b|\bTrue\b|\bFalse\b|\(person \(uid|'[a-z_]+': ")
"""What Python values look like when they leak into a person's text."""


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


# --- help, version --------------------------------------------------------------------------------

def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _commands(sub).items()})
    return found


def test_every_command_and_argument_has_help() -> None:
    commands = _commands(build_parser(["status"]))
    assert {"run", "status", "pause", "resume", "once", "dry-run", "hold", "reference", "calibrate",
            "history", "config check"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description, f"`temalign {name} --help` has no description"
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                assert action.help, f"`temalign {name}`: {action.dest} has no help text"
    run_help = commands["run"].format_help()
    assert "adaptive schedule" in " ".join(run_help.split())
    assert "a cycle every schedule.interval_s" not in " ".join(run_help.split())


def test_version_and_socket_option() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == "temalign 0.1.0", result
    for verb in ("status", "pause", "resume", "once", "dry-run", "hold", "reference", "calibrate"):
        text = run_cli(verb, "--help").stdout
        assert "-s PATH, --socket PATH" in text, verb


@pytest.mark.parametrize(("duration", "message"), [
    ("20", "'20' has no unit: write 20s, 20m, 20h or 20d"),
    ("10 minutes", "not a duration: '10 minutes'"),
])
def test_a_pause_without_a_unit_is_refused(duration: str, message: str, tmp_path: Path) -> None:
    result = run_cli("pause", "-s", str(tmp_path / "none.sock"), "--for", duration)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_status_exits_3_when_not_running_and_4_when_it_cannot_tell(short_dir: Path) -> None:
    down = run_cli("status", "-s", str(short_dir / "absent.sock"))
    assert down.returncode == 3 and "not running" in down.stderr
    path = short_dir / "garbled.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        def garble() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"this is not json\n")

        thread = threading.Thread(target=garble)
        thread.start()
        unknown = run_cli("status", "-s", str(path))
        thread.join(10)
    assert unknown.returncode == 4 and "unreadable reply" in unknown.stderr


# --- the daemon as a process: JSON logs, the CLI against it ----------------------------------------

def test_the_cli_against_a_running_daemon(make_twin: Any, short_dir: Path) -> None:
    served = make_twin()
    cfg = config(served, short_dir, wobble={"settle_s": 0.01}, logging={"level": "debug", "format": "json"},
                 schedule={"interval_s": 3600, "jitter_s": 0, "mode": "dry-run"})
    path = short_dir / "temalign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sock = str(short_dir / "c.sock")
    proc = subprocess.Popen([*CLI, "run", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_socket(Path(sock), proc)
        first = run_cli("status", "--config", str(path))
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert lines[0].startswith("temalign: running in dry-run"), lines
        assert re.match(rf"pid {proc.pid}, up \d+s \(since \d\d:\d\d:\d\d\), temalign 0\.1\.0$", lines[1])
        assert any(line.startswith("next cycle: ") and re.search(r"\d\d:\d\d:\d\d \(in ", line)
                   for line in lines), lines
        assert any(line.startswith("model: spotnet.tflite") for line in lines)
        assert not REPR.search(first.stdout), first.stdout
        as_json = json.loads(run_cli("status", "-s", sock, "--json").stdout)
        assert as_json["pid"] == proc.pid and as_json["version"] == "0.1.0"
        for key in ("started_at", "next_cycle_at"):
            assert datetime.fromisoformat(as_json[key]).tzinfo is not None, key

        once = run_cli("once", "-s", sock)
        assert once.returncode == 0 and once.stdout.startswith("dry_run"), once
        as_json = json.loads(run_cli("once", "-s", sock, "--json").stdout)
        assert "started" not in as_json and datetime.fromisoformat(as_json["time"]).tzinfo is not None
        assert as_json["summary"].startswith("dry_run")
        steps = [line.split(" ", 1)[1] for line in once.stderr.splitlines()]
        assert steps[0].startswith("wobble: C1 through 7 values"), once.stderr
        assert any(step.startswith("estimate: |m| ") for step in steps), steps
        assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in once.stderr.splitlines())

        said = {args: run_cli(*args.split(), "-s", sock) for args in (
            "pause --reason hologram-series", "pause --for 20s", "pause --for 1d --replace", "resume",
            "resume", "hold clear", "dry-run", "dry-run on", "dry-run off")}
        assert all(r.returncode == 0 for r in said.values()), said
        out = {args: r.stdout.strip() for args, r in said.items()}
        assert out["pause --reason hologram-series"] == "paused until resumed: hologram-series"
        assert out["pause --for 20s"].startswith("already paused until resumed (hologram-series): kept")
        tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86400))
        assert out["pause --for 1d --replace"].startswith(f"paused for 1d, until {tomorrow} "), out
        assert out["resume"] == "not paused: nothing to resume"  # the second one
        assert out["hold clear"] == "no hold to clear"
        assert out["dry-run"] == "dry-run is on: measures and reports, never moves"
        assert out["dry-run on"] == "dry-run is already on: measures and reports, never moves"
        assert out["dry-run off"] == "dry-run off: live, corrects the aperture"
        run_cli("pause", "-s", sock, "--for", "2h", "--reason", "exposure")
        paused = run_cli("status", "-s", sock, "--config", "/nonexistent/temalign.yaml")  # -s: no config
        assert paused.returncode == 0, paused.stderr
        assert re.match(r"temalign: paused until (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d \((2h|1h 59m) left\): "
                        r"exposure$",
                        paused.stdout.splitlines()[0]), paused.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "XNNPACK" not in err and err.strip() == "", err
    records = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    start = next(r for r in records if r["event"] == "start")
    assert start["config"] == str(path.resolve()) and start["pid"] == proc.pid
    assert start["microscope"] == cfg["microscope"]["address"] and start["mode"] == "dry-run"
    assert start["model"].endswith("spotnet.tflite")
    assert start["metrics"] == f"http://127.0.0.1:{cfg['metrics']['port']}/metrics"
    events = [r["event"] for r in records]
    assert {"litert", "cycle", "pause", "resume", "dry-run", "stop"} <= set(events), events
    litert = next(r for r in records if r["event"] == "litert")
    assert litert["said"].startswith("INFO: Created TensorFlow Lite XNNPACK delegate")
    assert litert["level"] == "debug"
    cycle = next(r for r in records if r["event"] == "cycle")
    assert cycle["summary"].startswith("dry_run") and "before" in cycle  # the figures stay in JSON
    assert records[-1]["event"] == "stop"
    after = run_cli("status", "-s", sock)
    assert after.returncode == 3


def _wait_for_socket(path: Path, proc: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists() and run_cli("status", "-s", str(path)).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"no daemon on {path} within {timeout_s} s")


# --- live figures ------------------------------------------------------------------------------------

def test_status_shows_the_estimate_after_a_correction_and_a_hand_move(make_twin: Any, connect: Any,
                                                                       short_dir: Path) -> None:
    from temalign.estimate.calibration import nominal_calibration, save_calibration

    served = make_twin()
    offset(served, 60, -45)
    (short_dir / "state").mkdir()
    save_calibration(short_dir / "state", nominal_calibration())
    # one estimator: the nominal calibration does not scale the model's output to this column
    daemon = start_daemon(served, connect, short_dir, wobble={"settle_s": 0.01},
                          estimator={"use": "classical"})
    sock = daemon.settings.control.socket
    try:
        request(sock, "dry-run", {"on": False})
        once = request(sock, "once")
        assert once["outcome"] == "corrected", once
        status = request(sock, "status")
        estimate = status["misalignment"]
        assert estimate["stage"] == "after the correction"
        assert estimate["misalignment"] == once["after"]["misalignment"] < once["before"]["misalignment"]
        assert status["column"]["changed"] is False and estimate["stale"] is False
        text = describe_status(status)
        assert f"misalignment: {once['after']['misalignment']:.1f} units" in text
        assert "the aperture has not moved since" in text and not REPR.search(text), text
        where = served.truth()["aperture"]
        served.twin.move_aperture(round(where[0]) + 40, round(where[1]))  # a person at the column
        moved = request(sock, "status")
        assert moved["column"]["aperture_moved"] is True and moved["misalignment"]["stale"] is True
        assert re.search(r"stale: the aperture has moved (39|40|41)\.\d units since, to \(",
                         describe_status(moved))
        skipped = request(sock, "once")  # the next cycle sees the hand move and pauses
        assert skipped["reason"] == "aperture_moved", skipped
        after = request(sock, "status")
        assert after["misalignment"]["stale"] is True, "an old estimate is not the present one"
        first_line = describe_status(after).splitlines()[0]
        assert first_line.startswith("temalign: paused until resumed: the aperture")
        assert moved["last_cycles"] and all("started" not in c and "time" in c for c in moved["last_cycles"])
    finally:
        daemon.stop()


def test_calibrate_through_the_daemon_says_each_step(make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir, wobble={"settle_s": 0.01})
    said: list[str] = []
    try:
        with contextlib.suppress(ControlError):  # the steps come whether or not the matrix fits
            request(daemon.settings.control.socket, "calibrate", {"step_units": 60}, progress=said.append)
    finally:
        daemon.stop()
    assert said[0].startswith("calibration at aperture (") and len(said) >= 4, said
    assert any(line.startswith("wobble after +60 units in x") for line in said), said
    assert any(line.startswith("aperture back at") for line in said), said


# --- logs --------------------------------------------------------------------------------------------

CORRECTED = {"outcome": "corrected", "reason": "corrected", "detail": "move (10, 0) -> (62, -41)",
             "mode": "live", "started": 1.1, "duration_s": 31.2, "position_before": [10, 0],
             "position_after": [62, -41], "c1": 1.2, "applied": [52.0, -41.0], "check": None,
             "before": {"model": [52.3, -41.2], "classical": [51.0, -40.0], "misalignment": 68.1,
                        "trusted": True, "reason": "agree", "quality": {"ok": True, "reasons": []}},
             "after": {"model": [2.0, 3.0], "classical": [2.5, 3.1], "misalignment": 4.0, "trusted": True},
             "decision": {"action": "move", "reason": "corrected", "target": [62, -41], "step": [52, -41]}}


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Any:
    yield
    configure_logging("info", "json", io.StringIO())
    structlog.reset_defaults()


def test_a_cycle_is_one_short_line_on_a_terminal(restore_logging: None) -> None:
    tty = FakeTty()
    configure_logging("info", "auto", tty)
    cycle_line(structlog.get_logger("temalign"), **CORRECTED)
    line = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue()).strip()
    assert "\n" not in line and len(line) < 120, line
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[info\s*\] cycle corrected: "
                    r"\|m\| 68\.1 -> 4\.0, moved \(\+52, -41\)", line), line
    assert not REPR.search(line)
    pipe = io.StringIO()
    configure_logging("info", "json", pipe)
    cycle_line(structlog.get_logger("temalign"), **CORRECTED)
    record = json.loads(pipe.getvalue())
    assert record["summary"] == "corrected: |m| 68.1 -> 4.0, moved (+52, -41)"
    assert record["before"]["misalignment"] == 68.1


def test_native_output_is_caught_and_logged(capfd: Any, restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    with native_output_logged(structlog.get_logger("temalign"), "litert"):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(1, b"ERROR: something a runtime said\n")
    captured = capfd.readouterr()
    assert "XNNPACK" not in captured.err + captured.out and "ERROR" not in captured.out
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["event"], r["said"]) for r in records] == [
        ("debug", "litert", "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."),
        ("warning", "litert", "ERROR: something a runtime said")]
