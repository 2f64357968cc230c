"""The control socket: a real Unix socket, its permissions, the audit uid, and clear refusals."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from temalign.service.cli import parse_duration
from temalign.service.control import ControlError, ControlServer, is_running, request


@pytest.fixture
def served(tmp_path: Path) -> Any:
    calls: list[tuple[str, dict, int | None]] = []

    def handler(verb: str, args: dict[str, Any], uid: int | None) -> dict[str, Any]:
        calls.append((verb, args, uid))
        if verb == "refuse":
            raise ValueError("refused: because the test said so")
        if verb == "crash":
            raise RuntimeError("boom")
        return {"verb": verb, "args": args}

    server = ControlServer(tmp_path / "run" / "control.sock", handler)
    server.start()
    yield server, calls
    server.close()


def test_round_trip_audit_uid_and_mode(served: Any) -> None:
    server, calls = served
    assert request(server.path, "pause", {"for_s": 60}) == {"verb": "pause", "args": {"for_s": 60}}
    assert calls == [("pause", {"for_s": 60}, os.getuid())]
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    assert is_running(server.path)


def test_refusals_are_messages_not_tracebacks(served: Any) -> None:
    server, _ = served
    with pytest.raises(ControlError, match="refused: because the test said so"):
        request(server.path, "refuse")
    with pytest.raises(ControlError, match="internal error: RuntimeError: boom"):
        request(server.path, "crash")
    assert request(server.path, "status") == {"verb": "status", "args": {}}  # still serving


@pytest.mark.parametrize("raw", [b"not json\n", b'{"args": {}}\n', b'{"verb": "x", "args": [1]}\n'])
def test_malformed_requests_get_an_error_reply(served: Any, raw: bytes) -> None:
    server, calls = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(server.path))
        s.sendall(raw)
        reply = json.loads(s.makefile().readline())
    assert reply["ok"] is False and "bad request" in reply["error"]
    assert calls == []


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match=r"no temalign daemon: .* does not exist"):
        request(tmp_path / "absent.sock", "status")
    assert not is_running(tmp_path / "absent.sock")


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


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400),
                                                ("45", 45), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "-5m", "0", "5m3"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
