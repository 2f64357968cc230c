"""Random and hostile bytes at both listeners of a real daemon (hypothesis): the control socket and
the metrics endpoint. Every connection ends in a reply or a clean close, nothing is logged with a
traceback, nothing reaches stderr, and the daemon still answers `status` afterwards."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daemon import start_daemon

from temalign.service.control import request

VERBS = ["status", "pause", "resume", "once", "dry-run", "hold-clear", "reference-set", "calibrate",
         "x" * 300]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                     max_size=4),
    max_leaves=12)
requests = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda verb, args: json.dumps({"verb": verb, "args": args}).encode() + b"\n",
              st.sampled_from(VERBS) | st.text(max_size=12), json_values),
    st.builds(lambda n: b"[" * n + b"\n", st.integers(1000, 60000)),
    st.builds(lambda n: b'{"verb": "status", "args": {"pad": "' + b"x" * n + b'"}}\n',
              st.integers(60000, 70000)),
    st.just(b'{"verb": "status", "args": {}}'),  # no newline, then the client stops writing
    st.just(b"\xff\xfe\n"),
)
HTTP = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda method, path, junk: f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + junk
              + b"\r\n\r\n",
              st.sampled_from(["GET", "POST", "HEAD", "PUT", "X" * 50, ""]),
              st.sampled_from(["/metrics", "/", "/" + "a" * 5000, "*", "http://x/metrics"]),
              st.binary(max_size=300)),
    st.just(b"GET /metrics HTTP/1.1\r\n" + b"X-Long: " + b"y" * 70000 + b"\r\n\r\n"),
)


def exchange(family: int, address: Any, payload: bytes, timeout_s: float = 20.0) -> bytes:
    """Send `payload`, stop writing, read until the server closes; what it said."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(address)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close on a line it refuses before reading it all
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def no_tracebacks(caplog: Any, capfd: Any) -> None:
    logged = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not logged, logged[0].getMessage()
    assert "Traceback" not in capfd.readouterr().err


def test_the_control_socket_takes_any_bytes(make_twin: Any, connect: Any, short_dir: Path, caplog: Any,
                                            capfd: Any) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir, wobble={"settle_s": 0.01})
    sock = str(daemon.settings.control.socket)
    caplog.set_level(logging.INFO)
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(requests)
        def probe(payload: bytes) -> None:
            reply = exchange(socket.AF_UNIX, sock, payload)
            if reply:
                assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply[:200]
                answer = json.loads(reply)
                assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
                assert "internal error" not in str(answer.get("error", "")), answer

        probe()
        no_tracebacks(caplog, capfd)
        assert request(daemon.settings.control.socket, "status")["state"] in ("dry_run", "paused", "hold")
        assert daemon.healthy() is None
    finally:
        daemon.stop()


def test_the_metrics_endpoint_takes_any_bytes(make_twin: Any, connect: Any, short_dir: Path, caplog: Any,
                                              capfd: Any) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    host, port = daemon.metrics.address or ("", 0)
    caplog.set_level(logging.INFO)
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(HTTP)
        def probe(payload: bytes) -> None:
            reply = exchange(socket.AF_INET, (host, port), payload)
            # a reply, an HTTP/0.9-style error page for a request line that is not HTTP, or a close
            assert reply == b"" or reply.startswith(b"HTTP/") or b"Error code: 4" in reply, reply[:200]

        probe()
        no_tracebacks(caplog, capfd)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
            assert b"temalign_cycles_total" in answer.read()
        assert request(daemon.settings.control.socket, "status")["state"] == "dry_run"
        assert daemon.healthy() is None
    finally:
        daemon.stop()
