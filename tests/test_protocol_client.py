"""The protocol client (protocol/client.py) against the real server core and against tiny scripted
servers that send exactly the bad bytes: deadlines, dropped connections, trickling, malformed and
mismatched replies, oversized lines, tokens, reconnection and thread safety."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from temalign.protocol.client import ProtocolClient
from temalign.protocol.errors import (
    ConnectFailed,
    ConnectionLost,
    DeadlineExceeded,
    HardwareFault,
    InvalidRequest,
    MalformedReply,
    OutOfRange,
    ProtocolError,
    RemoteError,
    TransportError,
    Unauthorised,
)
from temalign.protocol.messages import HelloResult
from temalign.protocol.server import ProtocolServer

pytestmark = pytest.mark.timeout(30)

LIMITS = {"aperture": {"x": [-5000, 5000], "y": [-4000, 4000]}, "lens": {"C1": [0.6, 2.4]}}
HELLO = {"protocol": 1, "server": "scripted", "capabilities": [], "limits": LIMITS}

Script = Callable[[dict[str, Any], socket.socket], "bytes | None"]


class ScriptedServer:
    """A raw TCP server that answers hello properly and every other request with what `script`
    returns for it: bytes sent as they are (build them with `reply()`), or None to send nothing.
    A script may also act on the socket itself (close it, trickle bytes). Records every request
    and counts connections, so a test can see reconnects."""

    def __init__(self, script: Script, hello: Callable[[dict[str, Any]], bytes] | None = None) -> None:
        self.script = script
        self.hello = hello or (lambda req: reply(req["id"], result=HELLO))
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.getsockname()[:2]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buffer = b""
        try:
            while chunk := sock.recv(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    self.requests.append(request)
                    out = self.hello(request) if request["method"] == "hello" else self.script(request, sock)
                    if out:
                        sock.sendall(out)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(2)

    def calls(self) -> list[str]:
        return [r["method"] for r in self.requests]


def reply(request_id: Any, **body: Any) -> bytes:
    return (json.dumps({"jsonrpc": "2.0", "id": request_id, **body}) + "\n").encode()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(script: Script, **kwargs: Any) -> ScriptedServer:
        server = ScriptedServer(script, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., ProtocolClient]]:
    made: list[ProtocolClient] = []

    def make(address: tuple[str, int], **kwargs: Any) -> ProtocolClient:
        client = ProtocolClient(*address, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def echo_script(request: dict[str, Any], sock: socket.socket) -> bytes:
    return reply(request["id"], result=request["params"])


def _raise(error: Exception) -> Any:
    raise error


@pytest.fixture
def real_server() -> Iterator[ProtocolServer]:
    methods = {
        "echo": lambda p: p,
        "refuse": lambda p: _raise(OutOfRange("x too far", data={"axis": "x"})),
        "fault": lambda p: _raise(HardwareFault("motor stalled")),
        "custom": lambda p: _raise(RemoteError("vendor says no", code=4242, data=[1, 2])),
    }
    with ProtocolServer(methods, server_name="real", limits=LIMITS, capabilities=["echo"]) as server:
        yield server


# ---- against the real core ---------------------------------------------------------------------


def test_round_trip_and_hello_result(real_server: ProtocolServer, clients) -> None:
    client = clients(real_server.address, client_name="unit-test")
    assert client.hello_result is None and not client.connected
    assert client.call("echo", {"a": [1, 2.5, "x", None]}) == {"a": [1, 2.5, "x", None]}
    hello = client.hello_result
    assert isinstance(hello, HelloResult)
    assert hello.server == "real" and hello.capabilities == ["echo"] and hello.limits.lens.C1 == (0.6, 2.4)
    assert client.call("echo") == {}, "params default to an empty object"


def test_remote_errors_keep_the_connection(scripted, real_server: ProtocolServer, clients) -> None:
    client = clients(real_server.address)
    with pytest.raises(OutOfRange) as info:
        client.call("refuse", {})
    assert info.value.code == 1001 and info.value.message == "x too far" and info.value.data == {"axis": "x"}
    with pytest.raises(HardwareFault):
        client.call("fault", {})
    with pytest.raises(RemoteError) as info:
        client.call("custom", {})
    assert type(info.value) is RemoteError and info.value.code == 4242 and info.value.data == [1, 2]
    assert client.connected
    counting = scripted(lambda req, sock: reply(req["id"], error={"code": 1002, "message": "busy"}))
    other = clients(counting.address)
    for _ in range(3):
        with pytest.raises(RemoteError):
            other.call("x", {})
    assert counting.connections == 1


def test_ids_increase_across_reconnects(scripted, clients) -> None:
    state = {"n": 0}

    def script(request: dict[str, Any], sock: socket.socket) -> bytes | None:
        state["n"] += 1
        if state["n"] == 2:
            sock.shutdown(socket.SHUT_RDWR)
            return None
        return reply(request["id"], result=1)

    server = scripted(script)
    client = clients(server.address)
    client.call("a")
    with pytest.raises(ConnectionLost):
        client.call("b")
    client.call("c")
    ids = [r["id"] for r in server.requests]
    assert all(type(i) is int for i in ids) and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert server.calls() == ["hello", "a", "b", "hello", "c"] and server.connections == 2


def test_token_missing_wrong_and_right(clients) -> None:
    with ProtocolServer({"echo": lambda p: p}, server_name="s", limits=LIMITS, token="s3cret") as server:
        for token in (None, "wrong"):
            client = clients(server.address, token=token)
            with pytest.raises(Unauthorised) as info:
                client.call("echo", {"a": 1})
            assert info.value.code == 1004 and not client.connected
        good = clients(server.address, token="s3cret")
        assert good.call("echo", {"a": 1}) == {"a": 1}
        assert good.hello_result is not None


def test_connection_refused_is_connect_failed(clients) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    address = probe.getsockname()[:2]
    probe.close()
    client = clients(address, connect_timeout_s=1.0)
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{address[1]}"):
        client.call("echo")
    with pytest.raises(ConnectFailed):
        client.call("echo")


def test_unresolvable_host_is_connect_failed(clients) -> None:
    client = clients(("no-such-host.invalid", 7801), connect_timeout_s=1.0)
    with pytest.raises(ConnectFailed):
        client.call("echo")


def test_server_restart_between_calls_is_survived(clients) -> None:
    server = ProtocolServer({"echo": lambda p: p}, server_name="s", limits=LIMITS)
    server.start()
    address = server.address
    client = clients(address)
    assert client.call("echo", {"n": 1}) == {"n": 1}
    server.close()
    with ProtocolServer({"echo": lambda p: p}, server_name="s2", limits=LIMITS, port=address[1]):
        time.sleep(0.05)
        assert client.call("echo", {"n": 2}) == {"n": 2}, "an idle connection the peer closed is replaced"
        assert client.hello_result.server == "s2"


def test_threads_share_one_client(real_server: ProtocolServer, clients) -> None:
    client = clients(real_server.address)
    failures: list[Any] = []

    def worker(i: int) -> None:
        for k in range(25):
            got = client.call("echo", {"i": i, "k": k})
            if got != {"i": i, "k": k}:
                failures.append((i, k, got))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert failures == [] and not any(t.is_alive() for t in threads)


# ---- deadlines and broken connections ----------------------------------------------------------


def test_a_server_that_never_answers_hits_the_deadline_then_reconnects(scripted, clients) -> None:
    def script(request: dict[str, Any], sock: socket.socket) -> bytes | None:
        return None if request["method"] == "hang" else reply(request["id"], result="ok")

    server = scripted(script)
    client = clients(server.address, call_timeout_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="hang"):
        client.call("hang", timeout_s=0.3)
    assert 0.3 <= time.monotonic() - t0 < 1.0
    assert not client.connected
    assert client.call("ping") == "ok"
    assert server.connections == 2


def test_a_trickling_server_cannot_extend_the_deadline(scripted, clients) -> None:
    def script(request: dict[str, Any], sock: socket.socket) -> None:
        for byte in reply(request["id"], result="x" * 100):
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(0.02)

    server = scripted(script)
    client = clients(server.address)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.call("slow", timeout_s=0.4)
    assert time.monotonic() - t0 < 0.8


def test_a_dropped_connection_mid_call_is_connection_lost(scripted, clients) -> None:
    def script(request: dict[str, Any], sock: socket.socket) -> bytes | None:
        if request["method"] == "drop":
            sock.shutdown(socket.SHUT_RDWR)
            return None
        if request["method"] == "half":
            sock.sendall(b'{"jsonrpc":"2.0","id":')
            sock.shutdown(socket.SHUT_RDWR)
            return None
        return reply(request["id"], result="ok")

    server = scripted(script)
    client = clients(server.address)
    for method in ("drop", "half"):
        with pytest.raises(ConnectionLost):
            client.call(method)
        assert not client.connected
        assert client.call("ping") == "ok"
    assert server.connections == 3


def test_a_reset_connection_is_connection_lost(scripted, clients) -> None:
    def script(request: dict[str, Any], sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    client = clients(scripted(script).address)
    with pytest.raises(ConnectionLost):
        client.call("x")


def test_close_is_final_and_interrupts_a_call_in_flight(scripted, clients) -> None:
    server = scripted(lambda req, sock: None)
    client = clients(server.address)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.call("hang", timeout_s=10)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    client.close()
    thread.join(3)
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost)
    with pytest.raises(ConnectionLost, match="closed"):
        client.call("again")
    assert server.connections == 1


# ---- malformed replies -------------------------------------------------------------------------


def _bad(body: Callable[[int], bytes]) -> Script:
    def script(request: dict[str, Any], sock: socket.socket) -> bytes:
        return body(request["id"]) if request["method"] == "bad" else reply(request["id"], result="ok")
    return script


MALFORMED = {
    "not-json": lambda i: b"{this is not json\n",
    "not-utf8": lambda i: b'{"jsonrpc":"2.0","id":' + str(i).encode() + b',"result":"\xff\xfe"}\n',
    "array": lambda i: b"[1, 2, 3]\n",
    "string": lambda i: b'"hello"\n',
    "batch": lambda i: b"[" + reply(i, result=1).strip() + b"]\n",
    "no-jsonrpc": lambda i: json.dumps({"id": i, "result": 1}).encode() + b"\n",
    "wrong-jsonrpc": lambda i: json.dumps({"jsonrpc": "1.0", "id": i, "result": 1}).encode() + b"\n",
    "wrong-id": lambda i: reply(i + 1, result=1),
    "old-id": lambda i: reply(i - 1, result=1),
    "string-id": lambda i: reply(str(i), result=1),
    "float-id": lambda i: reply(float(i), result=1),
    "bool-id": lambda i: reply(True, result=1),
    "no-id": lambda i: json.dumps({"jsonrpc": "2.0", "result": 1}).encode() + b"\n",
    "null-id-result": lambda i: reply(None, result=1),
    "both": lambda i: reply(i, result=1, error={"code": 1, "message": "m"}),
    "neither": lambda i: reply(i),
    "error-not-object": lambda i: reply(i, error="boom"),
    "error-code-string": lambda i: reply(i, error={"code": "1001", "message": "m"}),
    "error-code-bool": lambda i: reply(i, error={"code": True, "message": "m"}),
    "error-code-float": lambda i: reply(i, error={"code": 1001.0, "message": "m"}),
    "error-no-message": lambda i: reply(i, error={"code": 1001}),
    "nan": lambda i: b'{"jsonrpc":"2.0","id":' + str(i).encode() + b',"result":{"value":NaN}}\n',
    "infinity": lambda i: b'{"jsonrpc":"2.0","id":' + str(i).encode() + b',"result":-Infinity}\n',
    "overflow": lambda i: b'{"jsonrpc":"2.0","id":' + str(i).encode() + b',"result":1e400}\n',
    "deep": lambda i: b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "too-long": lambda i: reply(i, result="x" * 5000),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_replies_drop_the_connection(scripted, clients, kind: str) -> None:
    server = scripted(_bad(MALFORMED[kind]))
    client = clients(server.address, max_line_bytes=4096)
    with pytest.raises(MalformedReply, match=r"^bad: "):
        client.call("bad", {})
    assert not client.connected
    assert client.call("good") == "ok", "the next call reconnects and works"
    assert server.connections == 2


def test_a_reply_over_the_limit_without_newline_fails_at_once(scripted, clients) -> None:
    def script(request: dict[str, Any], sock: socket.socket) -> None:
        sock.sendall(b"x" * 100_000)

    client = clients(scripted(script).address, max_line_bytes=4096)
    t0 = time.monotonic()
    with pytest.raises(MalformedReply, match="longer than 4096"):
        client.call("big", timeout_s=5)
    assert time.monotonic() - t0 < 1.0, "not waiting for the deadline"


def test_a_reply_at_the_limit_is_accepted(scripted, clients) -> None:
    def script(request: dict[str, Any], sock: socket.socket) -> bytes:
        head = reply(request["id"], result="")
        return head.replace(b'""', b'"' + b"y" * (4096 - len(head) + 1) + b'"')

    client = clients(scripted(script).address, max_line_bytes=4096)
    assert len(client.call("big")) == 4096 - len(b'{"jsonrpc": "2.0", "id": 2, "result": ""}')


def test_an_error_with_null_id_is_raised_and_the_connection_dropped(scripted, clients) -> None:
    server = scripted(_bad(lambda i: reply(None, error={"code": -32600, "message": "line too long"})))
    client = clients(server.address)
    with pytest.raises(InvalidRequest, match="line too long"):
        client.call("bad")
    assert not client.connected


def test_unasked_bytes_between_calls_are_not_taken_for_a_reply(scripted, clients) -> None:
    def script(request: dict[str, Any], sock: socket.socket) -> bytes:
        extra = reply(request["id"] + 1, result="stale") if request["method"] == "chatty" else b""
        return reply(request["id"], result=request["method"]) + extra

    server = scripted(script)
    client = clients(server.address)
    assert client.call("chatty") == "chatty"
    time.sleep(0.05)
    assert client.call("next") == "next"
    assert server.connections == 2 and server.calls().count("next") == 1, "sent once, on a fresh connection"


@pytest.mark.parametrize("hello", [
    {**HELLO, "protocol": 2},
    {**HELLO, "limits": {"aperture": {"x": [5, 1], "y": [0, 1]}, "lens": {"C1": [1, 2]}}},
    {**HELLO, "capabilities": "all"},
    {k: v for k, v in HELLO.items() if k != "limits"},
    [1, 2],
])
def test_a_bad_hello_reply_is_malformed(scripted, clients, hello: Any) -> None:
    server = scripted(echo_script, hello=lambda req: reply(req["id"], result=hello))
    client = clients(server.address)
    with pytest.raises(MalformedReply, match=r"^hello: "):
        client.call("echo")
    assert not client.connected and client.hello_result is None
    assert server.calls() == ["hello"], "nothing else was sent"


def test_hello_errors_are_raised_and_nothing_else_is_sent(scripted, clients) -> None:
    busy = {"code": 1002, "message": "later"}
    server = scripted(echo_script, hello=lambda req: reply(req["id"], error=busy))
    client = clients(server.address)
    with pytest.raises(RemoteError, match="later"):
        client.call("echo")
    assert not client.connected and server.calls() == ["hello"]


def test_bad_arguments_are_refused_before_sending(real_server: ProtocolServer, clients) -> None:
    client = clients(real_server.address)
    with pytest.raises(TypeError):
        client.call("echo", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.call("")
    with pytest.raises(ValueError):
        client.call("echo", {"v": float("nan")})
    with pytest.raises(ValueError):
        client.call("echo", timeout_s=0)
    with pytest.raises(ValueError):
        ProtocolClient("127.0.0.1", 0)
    with pytest.raises(ValueError):
        ProtocolClient("127.0.0.1", 80, call_timeout_s=float("inf"))
    with pytest.raises(ValueError):
        clients(real_server.address, max_line_bytes=200).call("echo", {"p": "x" * 500})


class Hostile:
    """One scripted server whose reply bytes each hypothesis example sets."""

    payload = b""


@pytest.fixture(scope="module")
def hostile() -> Iterator[ScriptedServer]:
    server = ScriptedServer(lambda req, sock: Hostile.payload if req["method"] == "x" else None)
    yield server
    server.close()


@settings(max_examples=80, deadline=None)
@given(payload=st.one_of(
    st.binary(max_size=200).map(lambda b: b + b"\n"),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                 lambda kids: (st.lists(kids, max_size=3)
                               | st.dictionaries(st.text(max_size=6), kids, max_size=4)),
                 max_leaves=8).map(lambda v: json.dumps(v).encode() + b"\n"),
))
def test_hostile_replies_only_ever_raise_protocol_errors(hostile: ScriptedServer, payload: bytes) -> None:
    Hostile.payload = payload
    client = ProtocolClient(*hostile.address, call_timeout_s=0.5)
    try:
        client.call("x", {})
    except TransportError:
        assert not client.connected
    except ProtocolError:
        pass
    finally:
        client.close()
