"""The protocol core (protocol/server.py) over real loopback sockets, seen from a bare client so the
tests check exactly the bytes on the wire: framing, envelopes, error codes, hello and the token,
interceptor actions, hostile input, concurrency and shutdown."""

from __future__ import annotations

import json
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from temalign.microscope import Position
from temalign.protocol.errors import Busy, HardwareFault, OutOfRange, RemoteError
from temalign.protocol.messages import HelloResult
from temalign.protocol.server import ProtocolServer
from temalign.protocol.tcp_microscope import TcpMicroscope
from temalign_twin.faulty_server import GARBAGE_LINE, FaultInjectingServer, Intercept

pytestmark = pytest.mark.timeout(30)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
LIMITS = {"aperture": {"x": [-5000, 5000], "y": [-4000, 4000]}, "lens": {"C1": [0.6, 2.4]}}


class Raw:
    """A bare NDJSON client: sends bytes, reads reply lines, with a timeout on every read."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.n = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline()

    def reply(self) -> dict[str, Any]:
        line = self.line()
        assert line.endswith(b"\n"), f"no reply line: {line!r}"
        line.decode("ascii")
        return json.loads(line)

    def request(self, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
        self.n += 1
        message = {"jsonrpc": "2.0", "id": self.n, "method": method, **extra}
        if params is not None:
            message["params"] = params
        self.send((json.dumps(message) + "\n").encode())
        reply = self.reply()
        assert reply["jsonrpc"] == "2.0" and reply["id"] == self.n, reply
        return reply

    def call(self, method: str, **params: Any) -> Any:
        reply = self.request(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, method: str, params: Any = None) -> dict[str, Any]:
        reply = self.request(method, params)
        assert "error" in reply and "result" not in reply, reply
        return reply["error"]

    def closed(self) -> bool:
        """True when the server closed the connection (EOF) without sending anything more."""
        return self.line() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Column:
    """Handlers with a record of what reached them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.position = {"x": 0, "y": 0}

    def methods(self) -> dict[str, Any]:
        def record(name: str, fn):
            def handler(params: dict[str, Any]) -> Any:
                self.calls.append((name, params))
                return fn(params)
            return handler

        def move(p: dict[str, Any]) -> dict[str, int]:
            self.position = {"x": p["x"], "y": p["y"]}
            return self.position

        def boom(p: dict[str, Any]) -> Any:
            raise RuntimeError("secret internals /etc/passwd")

        def refuse(p: dict[str, Any]) -> Any:
            raise OutOfRange("x beyond limits", data={"axis": "x"})

        return {
            "aperture.get": record("aperture.get", lambda p: self.position),
            "aperture.move": record("aperture.move", move),
            "echo": record("echo", lambda p: p),
            "boom": record("boom", boom),
            "refuse": record("refuse", refuse),
            "fault": record("fault", lambda p: (_ for _ in ()).throw(HardwareFault("motor stalled"))),
            "nan": record("nan", lambda p: {"value": float("nan")}),
            "object": record("object", lambda p: {"value": object()}),
            "big": record("big", lambda p: "x" * 5000),
        }


@pytest.fixture
def column() -> Column:
    return Column()


@pytest.fixture
def server(column: Column) -> Iterator[ProtocolServer]:
    with ProtocolServer(column.methods(), server_name="test-bridge", limits=LIMITS,
                        capabilities=["echo"], max_line_bytes=2048) as srv:
        yield srv


@pytest.fixture
def raw(server: ProtocolServer) -> Iterator[Raw]:
    client = Raw(server.address)
    client.call("hello", client="test")
    yield client
    client.close()


# ---- hello and plain calls ------------------------------------------------------------------


def test_hello_reply_has_the_normative_shape(server: ProtocolServer) -> None:
    client = Raw(server.address)
    result = client.call("hello", client="test")
    assert result == {"protocol": 1, "server": "test-bridge", "capabilities": ["echo"], "limits": LIMITS}
    HelloResult.model_validate(result)
    client.close()


def test_calls_reach_handlers_with_the_params(raw: Raw, column: Column) -> None:
    assert raw.call("aperture.move", name="condenser", x=120, y=-7) == {"x": 120, "y": -7}
    assert raw.call("aperture.get", name="condenser") == {"x": 120, "y": -7}
    assert column.calls[0] == ("aperture.move", {"name": "condenser", "x": 120, "y": -7})
    assert raw.request("echo")["result"] == {}, "params may be left out"


def test_string_ids_and_null_ids_are_echoed(raw: Raw) -> None:
    raw.send(b'{"jsonrpc":"2.0","id":"abc","method":"echo","params":{"k":1}}\n')
    assert raw.reply() == {"jsonrpc": "2.0", "id": "abc", "result": {"k": 1}}
    raw.send(b'{"jsonrpc":"2.0","id":null,"method":"echo","params":{}}\n')
    assert raw.reply() == {"jsonrpc": "2.0", "id": None, "result": {}}


def test_hello_needs_valid_params(server: ProtocolServer) -> None:
    client = Raw(server.address)
    assert client.error("hello", {})["code"] == -32602
    err = client.error("hello", {"client": "t", "extra": 1})
    assert err["code"] == -32602 and "extra" in err["message"]
    client.close()


def test_constructor_refuses_what_cannot_work(column: Column) -> None:
    with pytest.raises(ValueError, match="hello"):
        ProtocolServer({"hello": lambda p: None}, server_name="s", limits=LIMITS)
    bad = {"aperture": {"x": [5, 1], "y": [0, 1]}, "lens": {"C1": [0.6, 2.4]}}
    with pytest.raises(ValueError, match=r"aperture\.x"):
        ProtocolServer({}, server_name="s", limits=bad)
    with pytest.raises(ValueError, match="capabilities"):
        ProtocolServer({}, server_name="s", limits=LIMITS, capabilities="twin")


def test_limits_callable_is_asked_at_each_hello_and_checked() -> None:
    current = {"limits": LIMITS}
    with ProtocolServer({}, server_name="s", limits=lambda: current["limits"]) as srv:
        first = Raw(srv.address)
        assert first.call("hello", client="t")["limits"] == LIMITS
        narrower = {"aperture": {"x": [-10, 10], "y": [-10, 10]}, "lens": {"C1": [1.0, 1.5]}}
        current["limits"] = narrower
        assert first.call("hello", client="t")["limits"] == narrower
        current["limits"] = {"aperture": {"x": [0, 1]}}
        assert first.error("hello", {"client": "t"})["code"] == -32603
        first.close()


# ---- malformed requests -----------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"{not json",
    b'{"jsonrpc":"2.0","id":1,"method":"echo"',
    b"\xff\xfe\x00garbage",
    b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"v":NaN}}',
    b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"v":Infinity}}',
    b"[" * 50000 + b"]" * 50000,
], ids=["not-json", "truncated", "not-utf8", "nan", "infinity", "deep-nesting"])
def test_unparsable_lines_are_parse_errors_and_the_connection_lives(line: bytes) -> None:
    with ProtocolServer({"echo": lambda p: p}, server_name="s", limits=LIMITS) as srv:
        client = Raw(srv.address)
        client.send(line + b"\n")
        reply = client.reply()
        assert reply["id"] is None and reply["error"]["code"] == -32700
        assert client.call("echo", a=1) == {"a": 1}
        client.close()


@pytest.mark.parametrize("request_, reply_id", [
    (b'[{"jsonrpc":"2.0","id":1,"method":"echo"}]', None),
    (b"[]", None),
    (b'"echo"', None),
    (b"42", None),
    (b"null", None),
    (b'{"id":5,"method":"echo"}', 5),
    (b'{"jsonrpc":"1.0","id":5,"method":"echo"}', 5),
    (b'{"jsonrpc":2.0,"id":5,"method":"echo"}', 5),
    (b'{"jsonrpc":"2.0","id":5}', 5),
    (b'{"jsonrpc":"2.0","id":5,"method":7}', 5),
    (b'{"jsonrpc":"2.0","id":5,"method":""}', 5),
    (b'{"jsonrpc":"2.0","id":true,"method":"echo"}', None),
    (b'{"jsonrpc":"2.0","id":1.5,"method":"echo"}', None),
    (b'{"jsonrpc":"2.0","id":{"a":1},"method":"echo"}', None),
    (b'{"jsonrpc":"2.0","method":5}', None),
], ids=["batch", "empty-batch", "string", "number", "null", "no-jsonrpc", "jsonrpc-1.0", "jsonrpc-number",
        "no-method", "method-number", "method-empty", "id-bool", "id-float", "id-object",
        "notification-without-method"])
def test_invalid_requests(raw: Raw, column: Column, request_: bytes, reply_id: Any) -> None:
    raw.send(request_ + b"\n")
    reply = raw.reply()
    assert reply["error"]["code"] == -32600 and reply["id"] == reply_id, reply
    assert column.calls == []
    assert raw.call("echo", ok=True) == {"ok": True}, "the connection still serves"


def test_unknown_method(raw: Raw) -> None:
    err = raw.error("no.such.method", {})
    assert err["code"] == -32601 and "no.such.method" in err["message"]


def test_non_ascii_method_name_gets_an_ascii_reply(raw: Raw) -> None:
    raw.send('{"jsonrpc":"2.0","id":1,"method":"lens.\u00e9tat\U0001f600"}\n'.encode())
    line = raw.line()
    line.decode("ascii")
    assert json.loads(line)["error"]["code"] == -32601
    raw.send(b'{"jsonrpc":"2.0","id":2,"method":"echo","params":{"s":"\\ud800"}}\n')
    assert raw.reply()["result"] == {"s": "\ud800"}, "a lone surrogate is escaped, not a crash"


@pytest.mark.parametrize("params, field", [
    ({"name": "condenser", "x": "a", "y": 0}, "x"),
    ({"name": "condenser", "x": 1.5, "y": 0}, "x"),
    ({"name": "condenser", "x": True, "y": 0}, "x"),
    ({"name": "condenser", "x": 0}, "y"),
    ({"name": "objective", "x": 0, "y": 0}, "name"),
    ({"name": "condenser", "x": 0, "y": 0, "z": 1}, "z"),
    ({"name": "condenser", "x": 9_000_000, "y": 0}, "x"),
])
def test_bad_params_of_v1_methods_never_reach_the_handler(raw: Raw, column: Column, params: dict,
                                                           field: str) -> None:
    err = raw.error("aperture.move", params)
    assert err["code"] == -32602
    assert err["message"].startswith("aperture.move: ") and f"{field}:" in err["message"], err
    assert column.calls == []


@pytest.mark.parametrize("params", [b"[1, 2]", b'"x"', b"null", b"3"])
def test_params_that_are_not_an_object(raw: Raw, column: Column, params: bytes) -> None:
    raw.send(b'{"jsonrpc":"2.0","id":9,"method":"echo","params":' + params + b"}\n")
    reply = raw.reply()
    assert reply["id"] == 9 and reply["error"]["code"] == -32602
    assert column.calls == []


def test_methods_without_a_model_get_the_raw_params(raw: Raw, column: Column) -> None:
    assert raw.call("echo", anything=[1, {"b": None}]) == {"anything": [1, {"b": None}]}


def test_notifications_get_no_reply_and_are_not_run(raw: Raw, column: Column) -> None:
    raw.send(b'{"jsonrpc":"2.0","method":"aperture.move","params":{"name":"condenser","x":5,"y":5}}\n')
    assert raw.call("aperture.get", name="condenser") == {"x": 0, "y": 0}, "first line back is this reply"
    assert [c[0] for c in column.calls] == ["aperture.get"]


def test_blank_lines_are_skipped(raw: Raw) -> None:
    raw.send(b"\n  \r\n")
    assert raw.call("echo", a=2) == {"a": 2}


# ---- handler failures -------------------------------------------------------------------------


def test_remote_errors_from_handlers_are_sent_as_they_are(raw: Raw) -> None:
    assert raw.error("refuse", {}) == {"code": 1001, "message": "x beyond limits", "data": {"axis": "x"}}
    assert raw.error("fault", {}) == {"code": 1003, "message": "motor stalled"}


def test_a_crashing_handler_is_internal_error_and_the_server_lives(server: ProtocolServer, raw: Raw,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="temalign.protocol.server"):
        err = raw.error("boom", {})
    assert err["code"] == -32603 and "RuntimeError" in err["message"]
    assert "/etc/passwd" not in err["message"], "internals stay in the log"
    assert any("boom" in r.getMessage() for r in caplog.records)
    assert raw.call("echo", a=1) == {"a": 1}
    other = Raw(server.address)
    assert other.call("hello", client="t")["protocol"] == 1
    other.close()


@pytest.mark.parametrize("method", ["nan", "object", "big"])
def test_results_json_cannot_carry_are_internal_errors(raw: Raw, method: str) -> None:
    err = raw.error(method, {})
    assert err["code"] == -32603
    assert raw.call("echo", a=1) == {"a": 1}


# ---- line limit and hostile peers ------------------------------------------------------------


def test_a_line_at_the_limit_is_served(raw: Raw) -> None:
    prefix = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"p":"'
    suffix = b'"}}'
    line = prefix + b"a" * (2048 - len(prefix) - len(suffix)) + suffix
    assert len(line) == 2048
    raw.send(line + b"\n")
    assert raw.reply()["result"] == {"p": "a" * (2048 - len(prefix) - len(suffix))}


@pytest.mark.parametrize("newline", [True, False])
def test_a_line_over_the_limit_is_refused_and_closes(server: ProtocolServer, raw: Raw, newline: bool) -> None:
    raw.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"p":"' + b"a" * 3000
             + (b'"}}\n' if newline else b""))
    reply = raw.reply()
    assert reply["id"] is None and reply["error"]["code"] == -32600
    assert "line too long" in reply["error"]["message"]
    assert raw.closed()
    other = Raw(server.address)
    assert other.call("hello", client="t")["protocol"] == 1
    other.close()


def test_a_flood_without_newline_is_cut_off_early(server: ProtocolServer) -> None:
    sock = socket.create_connection(server.address, timeout=5)
    sent = 0
    reply = b""
    try:
        while sent < 50_000_000:
            sock.sendall(b"x" * 65536)
            sent += 65536
    except OSError:
        pass
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except OSError:
        pass
    sock.close()
    assert sent < 16_000_000, "the server stopped reading soon after the limit"
    if reply:
        assert json.loads(reply)["error"]["code"] == -32600


def test_clients_that_vanish_mid_request_do_not_hurt(server: ProtocolServer, column: Column) -> None:
    for data in (b'{"jsonrpc":"2.0","id":1,"meth', b"\xff\xff", b""):
        sock = socket.create_connection(server.address, timeout=5)
        sock.sendall(b'{"jsonrpc":"2.0","id":0,"method":"hello","params":{"client":"t"}}\n' + data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    released = threading.Event()
    entered = threading.Event()

    def slow(p: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        released.wait(5)
        return {"late": True}

    with ProtocolServer({"slow": slow, "echo": lambda p: p}, server_name="s", limits=LIMITS) as srv:
        gone = Raw(srv.address)
        gone.send(b'{"jsonrpc":"2.0","id":1,"method":"slow","params":{}}\n')
        assert entered.wait(5)
        gone.close()
        released.set()
        time.sleep(0.05)
        fine = Raw(srv.address)
        assert fine.call("echo", a=1) == {"a": 1}
        fine.close()
    client = Raw(server.address)
    assert client.call("echo", a=1) == {"a": 1}
    client.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300))
def test_any_bytes_get_a_json_rpc_error_or_nothing(server: ProtocolServer, junk: bytes) -> None:
    """Whatever a line holds, the server answers with one well-formed reply (or, for a
    notification or a blank line, nothing) and keeps serving the connection."""
    line = junk.replace(b"\n", b" ")
    client = Raw(server.address)
    try:
        client.send(line + b'\n{"jsonrpc":"2.0","id":"probe","method":"hello","params":{"client":"t"}}\n')
        reply = client.reply()
        if reply.get("id") != "probe":
            assert set(reply) == {"jsonrpc", "id", "error"} and isinstance(reply["error"]["code"], int)
            reply = client.reply()
        assert reply["id"] == "probe" and reply["result"]["protocol"] == 1
    finally:
        client.close()


# ---- token --------------------------------------------------------------------------------------


def test_token_guards_everything_but_hello(column: Column) -> None:
    with ProtocolServer(column.methods(), server_name="s", limits=LIMITS, token="s3cret") as srv:
        client = Raw(srv.address)
        assert client.error("aperture.get", {"name": "condenser"})["code"] == 1004
        assert client.error("no.such", {})["code"] == 1004, "no method list for strangers"
        assert client.error("hello", {"client": "t"})["code"] == 1004
        assert client.error("hello", {"client": "t", "token": "wrong"})["code"] == 1004
        assert client.error("hello", {"client": "t", "token": "s3cre"})["code"] == 1004
        assert client.error("echo", {})["code"] == 1004
        assert column.calls == []
        assert client.call("hello", client="t", token="s3cret")["protocol"] == 1
        assert client.call("echo", a=1) == {"a": 1}
        assert client.error("hello", {"client": "t", "token": "wrong"})["code"] == 1004
        assert client.error("echo", {})["code"] == 1004, "a failed hello takes the right away again"
        other = Raw(srv.address)
        assert other.error("echo", {})["code"] == 1004, "authentication is per connection"
        other.close()
        client.close()


def test_no_token_configured_accepts_any(raw: Raw, server: ProtocolServer) -> None:
    client = Raw(server.address)
    assert client.call("echo", a=1) == {"a": 1}, "without a token, hello first is not enforced"
    assert client.call("hello", client="t", token="whatever")["protocol"] == 1
    client.close()


# ---- interceptor -------------------------------------------------------------------------------


class Injector:
    def __init__(self) -> None:
        self.queue: list[Intercept | Exception | str] = []
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, method: str, params: dict) -> Intercept | None:
        self.seen.append((method, params))
        if not self.queue:
            return None
        item = self.queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[return-value]


@pytest.fixture
def injected(column: Column) -> Iterator[tuple[Injector, Raw, ProtocolServer]]:
    injector = Injector()
    with FaultInjectingServer(column.methods(), server_name="s", limits=LIMITS, interceptor=injector) as srv:
        client = Raw(srv.address, timeout=2)
        client.call("hello", client="t")
        yield injector, client, srv
        client.close()


def test_intercept_drop_closes_without_calling(injected, column: Column) -> None:
    injector, client, _srv = injected
    injector.queue.append(Intercept("drop"))
    client.send(b'{"jsonrpc":"2.0","id":1,"method":"aperture.move","params":{"name":"condenser","x":1,"y":1}}\n')
    assert client.closed()
    assert column.calls == [] and injector.seen == [("aperture.move", {"name": "condenser", "x": 1, "y": 1})]


def test_intercept_silence_sends_nothing_and_keeps_reading(injected, column: Column) -> None:
    injector, client, _ = injected
    injector.queue.append(Intercept("silence"))
    client.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":1}}\n')
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.sock.recv(1)
    client.sock.settimeout(2)
    client.n = 1
    assert client.call("echo", a=2) == {"a": 2}
    assert column.calls == [("echo", {"a": 2})]


def test_intercept_delay_waits_then_handles(injected, column: Column) -> None:
    injector, client, _ = injected
    injector.queue.append(Intercept("delay", seconds=0.3))
    t0 = time.monotonic()
    assert client.call("echo", a=1) == {"a": 1}
    assert 0.3 <= time.monotonic() - t0 < 1.5
    assert column.calls == [("echo", {"a": 1})]


def test_intercept_garbage_is_not_json_and_the_connection_goes_on(injected, column: Column) -> None:
    injector, client, _ = injected
    injector.queue.append(Intercept("garbage"))
    client.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{}}\n')
    line = client.line()
    assert line == GARBAGE_LINE
    with pytest.raises(ValueError):
        json.loads(line)
    client.n = 1
    assert client.call("echo", b=1) == {"b": 1}
    assert column.calls == [("echo", {"b": 1})]


def test_intercept_error_replies_that_error(injected, column: Column) -> None:
    injector, client, _ = injected
    injector.queue.append(Intercept("error", error=Busy("try later", data={"retry_s": 1})))
    assert client.error("aperture.get", {"name": "condenser"}) == {"code": 1002, "message": "try later",
                                                                    "data": {"retry_s": 1}}
    assert column.calls == []


def test_interceptor_is_not_asked_about_hello_and_its_crash_is_internal_error(injected) -> None:
    injector, client, _ = injected
    client.call("hello", client="again")
    assert injector.seen == []
    injector.queue.append(RuntimeError("injector bug"))
    assert client.error("echo", {})["code"] == -32603
    injector.queue.append("not an intercept")
    assert client.error("echo", {})["code"] == -32603
    assert client.call("echo", c=1) == {"c": 1}


def test_intercept_checks_its_fields() -> None:
    with pytest.raises(ValueError):
        Intercept("error")
    with pytest.raises(ValueError):
        Intercept("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Intercept("delay", seconds=-1)
    assert Intercept("error", error=RemoteError("x", code=1003)).error.code == 1003


# ---- concurrency and life cycle ---------------------------------------------------------------


def test_connections_are_served_concurrently() -> None:
    barrier = threading.Barrier(4, timeout=5)

    def meet(p: dict[str, Any]) -> dict[str, Any]:
        barrier.wait()
        return {"who": p["who"]}

    with ProtocolServer({"meet": meet, "echo": lambda p: p}, server_name="s", limits=LIMITS) as srv:
        results: dict[int, Any] = {}

        def worker(i: int) -> None:
            client = Raw(srv.address)
            try:
                results[i] = [client.call("meet", who=i) for _ in range(3)] + \
                             [client.call("echo", n=k, who=i) for k in range(20)]
            finally:
                client.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for i in range(4):
            assert results[i][:3] == [{"who": i}] * 3, "all four were inside a handler at once"
            assert results[i][3:] == [{"n": k, "who": i} for k in range(20)]


def test_requests_on_one_connection_are_answered_in_order(raw: Raw) -> None:
    raw.send(b"".join(f'{{"jsonrpc":"2.0","id":{i},"method":"echo","params":{{"i":{i}}}}}\n'.encode()
                      for i in range(50)))
    assert [raw.reply()["id"] for _ in range(50)] == list(range(50))


def test_too_many_connections_are_told_busy() -> None:
    with ProtocolServer({}, server_name="s", limits=LIMITS, max_connections=2) as srv:
        kept = [Raw(srv.address) for _ in range(2)]
        for client in kept:
            client.call("hello", client="t")
        extra = Raw(srv.address)
        reply = extra.reply()
        assert reply["id"] is None and reply["error"]["code"] == 1002
        assert extra.closed()
        extra.close()
        kept[0].close()
        time.sleep(0.1)
        again = Raw(srv.address)
        assert again.call("hello", client="t")["protocol"] == 1
        again.close()
        kept[1].close()


def test_close_ends_connections_and_stops_listening(column: Column) -> None:
    def slow_echo(method: str, params: dict) -> Intercept | None:
        return Intercept("delay", seconds=30) if method == "echo" else None

    srv = FaultInjectingServer(column.methods(), server_name="s", limits=LIMITS, interceptor=slow_echo)
    srv.start()
    idle = Raw(srv.address)
    idle.call("hello", client="t")
    waiting = Raw(srv.address)
    waiting.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{}}\n')
    time.sleep(0.1)
    t0 = time.monotonic()
    srv.close()
    assert time.monotonic() - t0 < 2, "a delayed request does not hold up close()"
    assert idle.closed() and waiting.closed()
    with pytest.raises(OSError):
        socket.create_connection(srv.address, timeout=1)
    srv.close()
    assert column.calls == []
    idle.close()
    waiting.close()
    with pytest.raises(RuntimeError):
        srv.start()


def test_serve_forever_in_the_callers_thread() -> None:
    srv = ProtocolServer({"echo": lambda p: p}, server_name="s", limits=LIMITS)
    host, port = srv.address
    assert host == "127.0.0.1" and port > 0, "bound before serving"
    thread = threading.Thread(target=srv.serve_forever)
    thread.start()
    client = Raw(srv.address)
    assert client.call("echo", a=1) == {"a": 1}
    srv.close()
    thread.join(5)
    assert not thread.is_alive()
    client.close()


# ---- the bridge example of docs/protocol.md ----------------------------------------------------


def _bridge_example() -> str:
    after = DOCS.read_text(encoding="utf-8").split("<!-- bridge-example", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_docs_bridge_example_serves_protocol_v1() -> None:
    example: dict[str, Any] = {"__name__": "bridge_example"}
    exec(compile(_bridge_example(), str(DOCS), "exec"), example)
    api = example["VendorApi"]()
    with example["make_server"](api, port=0) as server, TcpMicroscope(server.address) as scope:
        assert scope.limits.aperture_x == (-200_000, 200_000) and scope.limits.c1 == (0.6, 2.4)
        assert scope.move_aperture(Position(1200, -300)) == Position(1200, -300) == scope.aperture()
        assert scope.set_c1(1.236) == 1.236 and scope.c1() == 1.236
        assert scope.acquire().shape == (256, 256)
        raw = Raw(server.address)
        raw.call("hello", client="t")
        assert raw.error("aperture.move", {"name": "condenser", "x": 300_000, "y": 0})["code"] == 1001
        assert raw.error("aperture.move", {"name": "condenser", "x": "a", "y": 0})["code"] == -32602
        raw.close()

        def stalled(x: int, y: int) -> None:
            raise OSError("stage controller timeout")

        api.move_aperture = stalled
        with pytest.raises(HardwareFault, match="stage controller timeout"):
            scope.move_aperture(Position(0, 0))


def test_the_docs_bridge_example_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "bridge.py"
    script.write_text(_bridge_example(), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("example-bridge listening on 127.0.0.1:"), (line, proc.stderr)
        port = int(line.rsplit(":", 1)[1])
        with TcpMicroscope(("127.0.0.1", port)) as scope:
            assert scope.aperture() == Position(0, 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
