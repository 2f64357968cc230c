"""The HTTP control endpoint (control.http_listen) of a real daemon over real TCP: the token, the
three routes through the control socket's own verbs, clear refusals of bad input that never move
anything, and a fuzz of the endpoint with and without the token."""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daemon import config, free_port
from test_fuzz_listeners import exchange, no_tracebacks

from temalign.config.cli import summary
from temalign.config.loader import parse_config
from temalign.config.schema import Settings
from temalign.errors import ConfigError
from temalign.record.journal import read_journal
from temalign.service.control import request
from temalign.service.daemon import Daemon

TOKEN = "s3cret-token-for-tests"


def token_file(directory: Path, mode: int = 0o600, text: str = TOKEN) -> Path:
    path = directory / "http.token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def http_daemon(served: Any, connect: Any, root: Path, **sections: Any) -> Daemon:
    cfg = config(served, root, wobble={"settle_s": 0.01}, **sections)
    cfg["control"] = {**cfg["control"], "http_listen": f"127.0.0.1:{free_port()}",
                      "http_token_file": str(token_file(root))}
    daemon = Daemon(Settings.model_validate(cfg), connect(served), clock=served.clock)
    daemon.start(schedule=False)
    return daemon


def call(daemon: Daemon, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    """(status, reply, headers) of one request; the reply is always JSON."""
    url = f"{daemon.http_url}{path}"
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


# --- the config -------------------------------------------------------------------------------------

def test_the_endpoint_is_off_by_default_and_needs_a_private_token_file(tmp_path: Path) -> None:
    base = b'microscope: {address: "127.0.0.1:7801"}\n'
    assert parse_config(base, tmp_path / "t.yaml").control.http_listen is None
    with pytest.raises(ConfigError, match=r"control\.http_token_file: required when control\.http_listen"):
        parse_config(base + b'control: {http_listen: "127.0.0.1:9642"}\n', tmp_path / "t.yaml")
    token_file(tmp_path, 0o644)
    open_to_all = base + b'control: {http_listen: "127.0.0.1:9642", http_token_file: http.token}\n'
    with pytest.raises(ConfigError, match=r"control\.http_token_file: .*readable by everyone"):
        parse_config(open_to_all, tmp_path / "t.yaml")
    (tmp_path / "http.token").chmod(0o640)
    settings = parse_config(open_to_all, tmp_path / "t.yaml")
    assert settings.control.http_host_port == ("127.0.0.1", 9642) and settings.control.http_token == TOKEN
    control = dict(summary(settings))["control"]
    assert f"HTTP control http://127.0.0.1:9642/v1/ (token in {tmp_path / 'http.token'})" in control
    assert TOKEN not in control
    with pytest.raises(ConfigError, match=r"control\.http_listen"):
        parse_config(base + b'control: {http_listen: "localhost", http_token_file: http.token}\n',
                     tmp_path / "t.yaml")


# --- the endpoint -------------------------------------------------------------------------------------

def test_status_pause_and_resume_over_http_with_the_token(make_twin: Any, connect: Any,
                                                            short_dir: Path) -> None:
    served = make_twin()
    daemon = http_daemon(served, connect, short_dir)
    sock = daemon.settings.control.socket
    where = served.truth()["aperture"]
    try:
        for token in (None, "wrong", TOKEN + "x", ""):
            status, reply, headers = call(daemon, "GET", "/v1/status", token=token)
            assert status == 401 and reply["ok"] is False and "token" in reply["error"], reply
            assert headers["WWW-Authenticate"].startswith("Bearer")
        status, reply, _ = call(daemon, "GET", "/v1/status")
        assert status == 200 and reply["result"]["state"] == "dry_run"
        assert reply["result"]["headline"].startswith("temalign: running in dry-run")

        body = json.dumps({"for_s": 600, "reason": "hologram series"}).encode()
        status, reply, _ = call(daemon, "POST", "/v1/pause", body,
                                headers={"Content-Type": "application/json"})
        assert status == 200 and reply["result"]["changed"] is True
        assert reply["result"]["message"].startswith("paused for 10m, until ")
        seen = request(sock, "status")  # the socket sees what HTTP did: one state, one code path
        assert seen["paused"] is True and seen["pause_reason"] == "hologram series"

        request(sock, "pause", {"reason": "a person"})  # open-ended, over the socket
        status, reply, _ = call(daemon, "POST", "/v1/pause", json.dumps({"for_s": 60}).encode())
        assert status == 200 and reply["result"]["changed"] is False
        assert reply["result"]["message"].startswith("already paused until resumed (a person): kept")

        status, reply, _ = call(daemon, "POST", "/v1/resume", b"")
        assert status == 200 and reply["result"]["message"].startswith("resumed")
        status, reply, _ = call(daemon, "POST", "/v1/resume", b"{}")
        assert reply["result"]["message"] == "not paused: nothing to resume"
        assert request(sock, "status")["state"] == "dry_run"
    finally:
        daemon.stop()
    assert served.truth()["aperture"] == where, "nothing moved"
    audit = [e for e in read_journal(short_dir / "state") if e["kind"] == "control" and e["via"] != "socket"]
    assert [e["verb"] for e in audit] == ["status", "pause", "pause", "resume", "resume"]
    assert all(e["via"] == "http 127.0.0.1" and e["uid"] is None for e in audit)


BAD = [
    ("POST", "/v1/pause", b'{"for_s": "ten"}', 400, "for_s must be a number of seconds"),
    ("POST", "/v1/pause", b'{"for_s": -5}', 400, "more than 0"),
    ("POST", "/v1/pause", b'{"for_s": 1e308}', 400, "at most"),
    ("POST", "/v1/pause", b'{"for_s": 60, "fly": true}', 400, "unknown keys 'fly'"),
    ("POST", "/v1/pause", b'{"reason": ["x"]}', 400, "reason must be text"),
    ("POST", "/v1/pause", b'{"replace": "yes"}', 400, "replace must be true or false"),
    ("POST", "/v1/pause", b"for_s=60", 400, "not JSON"),
    ("POST", "/v1/pause", b"[600]", 400, "must be a JSON object"),
    ("POST", "/v1/pause", b'{"reason": "' + b"x" * 5000 + b'"}', 413, "at most 4096"),
    ("POST", "/v1/resume", b'{"now": true}', 400, "unknown keys 'now' (allowed: none)"),
    ("GET", "/v1/pause", None, 405, "/v1/pause takes POST"),
    ("DELETE", "/v1/status", None, 405, "takes GET"),
    ("GET", "/v1/once", None, 404, "no such endpoint"),
    ("GET", "/metrics", None, 404, "no such endpoint"),
]


def test_bad_requests_get_a_clear_error_and_move_nothing(make_twin: Any, connect: Any, short_dir: Path,
                                                         caplog: Any, capfd: Any) -> None:
    served = make_twin()
    daemon = http_daemon(served, connect, short_dir)
    where = served.truth()["aperture"]
    caplog.set_level(logging.INFO)
    try:
        for method, path, body, code, text in BAD:
            status, reply, _ = call(daemon, method, path, body)
            assert (status, reply["ok"]) == (code, False), (method, path, body, reply)
            assert text in reply["error"] and "Traceback" not in reply["error"], reply
        assert request(daemon.settings.control.socket, "status")["paused"] is False
        no_tracebacks(caplog, capfd)
    finally:
        daemon.stop()
    assert served.truth()["aperture"] == where


HTTP_REQUESTS = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda method, path, auth, body: (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + auth
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body),
        st.sampled_from(["GET", "POST", "HEAD", "PUT", "X" * 50, ""]),
        st.sampled_from(["/v1/status", "/v1/pause", "/v1/resume", "/", "/v1/pause?x=1", "/" + "a" * 5000]),
        st.sampled_from([b"", f"Authorization: Bearer {TOKEN}\r\n".encode(), b"Authorization: Bearer \r\n",
                         b"Authorization: Basic eDp5\r\n", f"Authorization: bearer {TOKEN}x\r\n".encode()]),
        st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.dictionaries(
            st.sampled_from(["for_s", "reason", "replace", "x"]),
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=30), max_size=3))),
    st.just(b"POST /v1/pause HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"{" * 5000),
    st.just(b"POST /v1/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n"),
    st.just(b"GET /v1/status HTTP/1.1\r\n" + b"X-Long: " + b"y" * 70000 + b"\r\n\r\n"),
)


def test_the_endpoint_takes_any_bytes(make_twin: Any, connect: Any, short_dir: Path, caplog: Any,
                                      capfd: Any) -> None:
    served = make_twin()
    daemon = http_daemon(served, connect, short_dir)
    host, port = daemon.http_address or ("", 0)
    where = served.truth()["aperture"]
    caplog.set_level(logging.INFO)
    try:
        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(HTTP_REQUESTS)
        def probe(payload: bytes) -> None:
            reply = exchange(socket.AF_INET, (host, port), payload)
            if reply.startswith(b"HTTP/"):
                head, _, body = reply.partition(b"\r\n\r\n")
                assert b" 500 " not in head.split(b"\r\n")[0], reply[:300]
                if body:
                    answer = json.loads(body)
                    assert isinstance(answer.get("ok"), bool), answer
            else:
                assert reply == b"" or json.loads(reply)["ok"] is False, reply[:200]  # HTTP/0.9 style

        probe()
        no_tracebacks(caplog, capfd)
        request(daemon.settings.control.socket, "resume")  # a fuzzed pause may have taken
        status, _reply, _ = call(daemon, "GET", "/v1/status")
        assert status == 200 and daemon.healthy() is None
    finally:
        daemon.stop()
    assert served.truth()["aperture"] == where, "nothing moved"


def test_a_daemon_without_the_endpoint_listens_on_no_port(make_twin: Any, connect: Any,
                                                          short_dir: Path) -> None:
    served = make_twin()
    cfg = config(served, short_dir)
    daemon = Daemon(Settings.model_validate(cfg), connect(served), clock=served.clock)
    daemon.start(schedule=False)
    try:
        assert daemon.http_address is None and daemon.http_url is None
    finally:
        daemon.stop()
    assert os.path.exists(short_dir / "state")
