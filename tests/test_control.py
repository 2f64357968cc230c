"""The control socket: a real Unix socket, its permissions, the audit uid, and clear refusals."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from temalign.service.control import Caller, ControlError, ControlServer, NotRunning, is_running, request
from temalign.timetext import format_duration, format_when, parse_duration


@pytest.fixture
def served(tmp_path: Path) -> Any:
    calls: list[tuple[str, dict, int | None]] = []

    def handler(verb: str, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        calls.append((verb, args, caller.uid))
        if verb == "refuse":
            raise ValueError("refused: because the test said so")
        if verb == "crash":
            raise RuntimeError("boom")
        if verb == "slow":
            for step in ("one", "two", "three"):
                caller.say(step)
        return {"verb": verb, "args": args, "progress": caller.progress is not None}

    server = ControlServer(tmp_path / "run" / "control.sock", handler)
    server.start()
    yield server, calls
    server.close()


def test_round_trip_audit_uid_and_mode(served: Any) -> None:
    server, calls = served
    assert request(server.path, "pause", {"for_s": 60}) == {"verb": "pause", "args": {"for_s": 60},
                                                             "progress": False}
    assert calls == [("pause", {"for_s": 60}, os.getuid())]
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    assert is_running(server.path)


def test_refusals_are_messages_not_tracebacks(served: Any) -> None:
    server, _ = served
    with pytest.raises(ControlError, match="refused: because the test said so"):
        request(server.path, "refuse")
    with pytest.raises(ControlError, match="internal error: RuntimeError: boom"):
        request(server.path, "crash")
    assert request(server.path, "status")["verb"] == "status"  # still serving


@pytest.mark.parametrize("raw", [b"not json\n", b'{"args": {}}\n', b'{"verb": "x", "args": [1]}\n'])
def test_malformed_requests_get_an_error_reply(served: Any, raw: bytes) -> None:
    server, calls = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(server.path))
        s.sendall(raw)
        reply = json.loads(s.makefile().readline())
    assert reply["ok"] is False and "bad request" in reply["error"]
    assert calls == []


def test_progress_lines_come_before_the_reply_only_when_asked(served: Any) -> None:
    server, _ = served
    said: list[str] = []
    assert request(server.path, "slow", progress=said.append)["progress"] is True
    assert said == ["one", "two", "three"]
    assert request(server.path, "slow")["progress"] is False, "no progress lines unless asked"


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotRunning, match=r"no temalign daemon: .* does not exist"):
        request(tmp_path / "absent.sock", "status")
    assert not is_running(tmp_path / "absent.sock")
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound, never listening: what a killed daemon leaves
    with pytest.raises(NotRunning, match="not running"):
        request(stale, "status")


def test_second_daemon_refused_stale_socket_replaced_other_files_kept(served: Any, tmp_path: Path) -> None:
    server, _ = served
    with pytest.raises(ControlError, match="another temalign daemon is listening"):
        ControlServer(server.path, lambda *a: {}).start()
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound, never listening: what a killed daemon leaves
    replacement = ControlServer(stale, lambda verb, args, uid: {"fresh": True})
    replacement.start()
    try:
        assert request(stale, "status") == {"fresh": True}
    finally:
        replacement.close()
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(plain, lambda *a: {}).start()
    assert plain.read_text() == "keep me"


@pytest.mark.parametrize(("text", "seconds"), [("20s", 20), ("90s", 90), ("10m", 600), ("15m", 900),
                                                ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
                                                ("1h 30m", 5400), ("1.5h", 5400), ("2D", 172800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "-5m", "0s", "5m3", "30m1h", "1h1h", "1e3s", "10 min",
                                  "١٠m"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["20", "1.5", "0", "-5"])
def test_a_bare_number_is_refused_not_guessed(text: str) -> None:
    with pytest.raises(ValueError, match=f"'{text}' has no unit: write {text}s, {text}m"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (45, "45s"), (60, "1m"), (605, "10m 5s"),
                                               (5400, "1h 30m"), (86400, "1d"), (90000, "1d 1h")])
def test_durations_read_back_as_written(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    if seconds:
        assert parse_duration(text) == seconds


def test_times_carry_the_date_when_not_today() -> None:
    now = time.mktime((2025, 6, 1, 12, 0, 0, 0, 0, -1))
    assert format_when(now + 3600, now) == "13:00:00"
    assert format_when(now + 86400, now) == "2025-06-02 12:00:00"
