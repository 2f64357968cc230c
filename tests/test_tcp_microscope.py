"""TcpMicroscope (protocol/tcp_microscope.py) over real loopback sockets: the Microscope interface,
local refusal of commands outside the announced limits (nothing is sent), and validation of every
result, with servers that answer the wrong types, ranges and frames."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from temalign.microscope import Limits, Microscope, Position
from temalign.protocol.errors import (
    ConnectFailed,
    HardwareFault,
    InvalidParams,
    MalformedReply,
    OutOfRange,
    Unauthorised,
)
from temalign.protocol.messages import encode_frame
from temalign.protocol.server import ProtocolServer
from temalign.protocol.tcp_microscope import TcpMicroscope

pytestmark = pytest.mark.timeout(30)

LIMITS = {"aperture": {"x": [-5000, 5000], "y": [-4000, 4000]}, "lens": {"C1": [0.6, 2.4]}}
FRAME = (np.arange(12 * 20, dtype=np.uint32).reshape(12, 20) * 271 % 65536).astype(np.uint16)


class FakeColumn:
    """A column in memory: handlers that do the obvious thing, unless `results[method]` says what
    to answer instead. Records every call, so a test can see what was (not) sent."""

    def __init__(self) -> None:
        self.position = {"x": 100, "y": -200}
        self.c1 = 1.2
        self.frame = FRAME
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.results: dict[str, Any] = {}
        self.limits: dict[str, Any] = LIMITS

    def methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        def handler(name: str, normal: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
            def run(params: dict[str, Any]) -> Any:
                self.calls.append((name, params))
                if name in self.results:
                    result = self.results[name]
                    if isinstance(result, Exception):
                        raise result
                    return result
                return normal(params)
            return run

        def move(p: dict[str, Any]) -> dict[str, int]:
            self.position = {"x": p["x"] + 1, "y": p["y"]}
            return self.position

        def set_c1(p: dict[str, Any]) -> dict[str, float]:
            self.c1 = p["value"]
            return {"value": self.c1}

        return {
            "aperture.get": handler("aperture.get", lambda p: self.position),
            "aperture.move": handler("aperture.move", move),
            "lens.get": handler("lens.get", lambda p: {"value": self.c1}),
            "lens.set": handler("lens.set", set_c1),
            "camera.acquire": handler("camera.acquire", lambda p: encode_frame(self.frame)),
        }

    def sent(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def column() -> FakeColumn:
    return FakeColumn()


@pytest.fixture
def server(column: FakeColumn) -> Iterator[ProtocolServer]:
    with ProtocolServer(column.methods(), server_name="fake-column", limits=lambda: column.limits) as srv:
        yield srv


@pytest.fixture
def scope(server: ProtocolServer) -> Iterator[TcpMicroscope]:
    microscope = TcpMicroscope(server.address, call_timeout_s=5.0, client_name="test")
    yield microscope
    microscope.close()


def test_it_is_a_microscope(scope: TcpMicroscope) -> None:
    used: Microscope = scope
    assert used.limits == Limits(aperture_x=(-5000, 5000), aperture_y=(-4000, 4000), c1=(0.6, 2.4))


def test_round_trip(scope: TcpMicroscope, column: FakeColumn) -> None:
    assert scope.aperture() == Position(100, -200)
    assert scope.move_aperture(Position(300, 400)) == Position(301, 400), "what the server reports"
    assert column.calls[-1] == ("aperture.move", {"name": "condenser", "x": 300, "y": 400})
    assert scope.move_aperture(Position(np.int64(-5000), np.int32(4000))) == Position(-4999, 4000)
    assert scope.set_c1(1.25) == 1.25 and column.calls[-1] == ("lens.set", {"name": "C1", "value": 1.25})
    assert scope.set_c1(2) == 2.0
    assert scope.c1() == 2.0
    assert scope.hello.server == "fake-column"


def test_acquire_decodes_little_endian_rows(scope: TcpMicroscope, column: FakeColumn) -> None:
    frame = scope.acquire()
    assert frame.dtype == np.uint16 and frame.shape == (12, 20) and frame.ndim == 2
    np.testing.assert_array_equal(frame, FRAME)
    frame[0, 0] = 7  # the caller owns a writable copy
    raw = base64.b64decode(encode_frame(FRAME)["data"])
    assert raw[2:4] == int(FRAME[0, 1]).to_bytes(2, "little")
    scope.acquire(0.05)
    assert column.calls[-1] == ("camera.acquire", {"exposure_s": 0.05})
    assert column.calls[-2] == ("camera.acquire", {})


def test_address_as_text_and_bad_addresses(server: ProtocolServer) -> None:
    host, port = server.address
    with TcpMicroscope(f"{host}:{port}") as microscope:
        assert microscope.aperture() == Position(100, -200)
        assert microscope.address == (host, port)
    for bad in ("nohost", "127.0.0.1:99999", ("127.0.0.1", "80"), ("127.0.0.1", True), 7801):
        with pytest.raises(ValueError):
            TcpMicroscope(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TcpMicroscope(server.address, acquire_timeout_s=0)


# ---- refused here, never sent ------------------------------------------------------------------


@pytest.mark.parametrize("target", [Position(5001, 0), Position(-5001, 0), Position(0, 4001),
                                    Position(0, -4001), Position(10**9, 0)])
def test_moves_outside_the_limits_are_refused_locally(scope: TcpMicroscope, column: FakeColumn,
                                                      target: Position) -> None:
    scope.aperture()
    with pytest.raises(OutOfRange, match="not sent"):
        scope.move_aperture(target)
    assert "aperture.move" not in column.sent()


@pytest.mark.parametrize("target", [Position(1.5, 0), Position(0, True), Position("1", 0),  # type: ignore[arg-type]
                                    Position(float("nan"), 0), Position(None, 0)])  # type: ignore[arg-type]
def test_moves_that_are_not_integers_are_refused_locally(scope: TcpMicroscope, column: FakeColumn,
                                                         target: Position) -> None:
    with pytest.raises(InvalidParams, match="not sent"):
        scope.move_aperture(target)
    assert "aperture.move" not in column.sent()


@pytest.mark.parametrize("value, error", [(2.41, OutOfRange), (0.59, OutOfRange),
                                          (float("nan"), InvalidParams), (float("inf"), InvalidParams),
                                          (True, InvalidParams), ("1.2", InvalidParams)])
def test_lens_values_outside_the_limits_are_refused_locally(scope: TcpMicroscope, column: FakeColumn,
                                                            value: Any, error: type) -> None:
    with pytest.raises(error, match="not sent"):
        scope.set_c1(value)
    assert "lens.set" not in column.sent()


@pytest.mark.parametrize("exposure", [0, -1, 61, float("nan"), True, "0.1"])
def test_bad_exposures_are_refused_locally(scope: TcpMicroscope, column: FakeColumn, exposure: Any) -> None:
    with pytest.raises(InvalidParams):
        scope.acquire(exposure)
    assert "camera.acquire" not in column.sent()


def test_limits_are_read_again_after_a_reconnect(scope: TcpMicroscope, column: FakeColumn) -> None:
    assert scope.limits.aperture_x == (-5000, 5000)
    column.limits = {"aperture": {"x": [-10, 10], "y": [-10, 10]}, "lens": {"C1": [1.0, 1.5]}}
    scope.client.disconnect()
    assert scope.limits == Limits((-10, 10), (-10, 10), (1.0, 1.5))
    with pytest.raises(OutOfRange):
        scope.move_aperture(Position(11, 0))


# ---- results checked before anyone sees them ----------------------------------------------------


def _frame(**changes: Any) -> dict[str, Any]:
    return {**encode_frame(FRAME), **changes}


BAD_RESULTS = [
    ("aperture.get", {"x": "1", "y": 0}, "x"),
    ("aperture.get", {"x": True, "y": 0}, "x"),
    ("aperture.get", {"x": 1.5, "y": 0}, "x"),
    ("aperture.get", {"x": 1.0, "y": 0}, "x"),
    ("aperture.get", {"x": 2**40, "y": 0}, "x"),
    ("aperture.get", {"x": None, "y": 0}, "x"),
    ("aperture.get", {"x": 0}, "y"),
    ("aperture.get", [0, 0], "top level"),
    ("aperture.get", "ok", "top level"),
    ("lens.get", {"value": "1.2"}, "value"),
    ("lens.get", {"value": True}, "value"),
    ("lens.get", {"value": None}, "value"),
    ("lens.get", {}, "value"),
    ("camera.acquire", _frame(data=encode_frame(FRAME)["data"][:-4]), "wrong number of bytes"),
    ("camera.acquire", _frame(data="!" * len(encode_frame(FRAME)["data"])), "not base64"),
    ("camera.acquire", _frame(width=21), "wrong number of bytes"),
    ("camera.acquire", _frame(width=0), "width"),
    ("camera.acquire", _frame(width=True), "width"),
    ("camera.acquire", _frame(height="12"), "height"),
    ("camera.acquire", _frame(height=12.0), "height"),
    ("camera.acquire", _frame(width=100_000), "width"),
    ("camera.acquire", _frame(dtype="uint8"), "dtype"),
    ("camera.acquire", _frame(data=None), "data"),
    ("camera.acquire", {k: v for k, v in encode_frame(FRAME).items() if k != "dtype"}, "dtype"),
]


def _call_for(scope: TcpMicroscope, method: str) -> Any:
    return {"aperture.get": scope.aperture, "lens.get": scope.c1, "camera.acquire": scope.acquire}[method]()


@pytest.mark.parametrize("method, result, field", BAD_RESULTS,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_RESULTS)])
def test_bad_results_are_malformed_and_drop_the_connection(scope: TcpMicroscope, column: FakeColumn,
                                                           method: str, result: Any, field: str) -> None:
    column.results[method] = result
    with pytest.raises(MalformedReply) as info:
        _call_for(scope, method)
    assert info.value.args[0].startswith(f"{method}: reply") and field in info.value.args[0], info.value
    assert not scope.client.connected
    del column.results[method]
    assert scope.aperture() == Position(100, -200), "the next call reconnects"


def test_bad_move_and_set_results_are_malformed(scope: TcpMicroscope, column: FakeColumn) -> None:
    column.results["aperture.move"] = {"x": 1, "y": False}
    with pytest.raises(MalformedReply, match=r"aperture\.move: reply y"):
        scope.move_aperture(Position(1, 1))
    column.results["lens.set"] = {"value": [1.2]}
    with pytest.raises(MalformedReply, match=r"lens\.set: reply value"):
        scope.set_c1(1.2)


def test_remote_errors_pass_through_and_keep_the_connection(scope: TcpMicroscope, column: FakeColumn) -> None:
    column.results["aperture.move"] = HardwareFault("motor stalled")
    with pytest.raises(HardwareFault, match="motor stalled"):
        scope.move_aperture(Position(0, 0))
    column.results["lens.set"] = OutOfRange("server has narrower limits")
    with pytest.raises(OutOfRange):
        scope.set_c1(1.0)
    assert scope.client.connected


class RawReplies:
    """A raw server that answers hello properly and each other request with the next canned line
    (with the request's id put in): for values the real core would never send, like NaN."""

    def __init__(self, lines: list[bytes], hello_limits: Any = LIMITS) -> None:
        self.lines = list(lines)
        self.hello_limits = hello_limits
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                sock, _ = self.listener.accept()
                with sock:
                    buffer = b""
                    while chunk := sock.recv(65536):
                        buffer += chunk
                        while b"\n" in buffer:
                            line, buffer = buffer.split(b"\n", 1)
                            request = json.loads(line)
                            rid = str(request["id"]).encode()
                            if request["method"] == "hello":
                                result = {"protocol": 1, "server": "raw", "capabilities": [],
                                          "limits": self.hello_limits}
                                out = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result})
                                sock.sendall(out.encode() + b"\n")
                            else:
                                sock.sendall(self.lines.pop(0).replace(b"ID", rid) + b"\n")
        except OSError:
            pass

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(2)


@pytest.mark.parametrize("line", [
    b'{"jsonrpc":"2.0","id":ID,"result":{"value":NaN}}',
    b'{"jsonrpc":"2.0","id":ID,"result":{"value":Infinity}}',
    b'{"jsonrpc":"2.0","id":ID,"result":{"value":-1e400}}',
    b'{"jsonrpc":"2.0","id":ID,"result":{"value":"NaN"}}',
])
def test_non_finite_lens_values_are_malformed(line: bytes) -> None:
    raw = RawReplies([line])
    try:
        with TcpMicroscope(raw.address, call_timeout_s=2) as microscope, pytest.raises(MalformedReply):
            microscope.c1()
    finally:
        raw.close()


@pytest.mark.parametrize("limits", [
    {"aperture": {"x": [10, -10], "y": [0, 1]}, "lens": {"C1": [0.6, 2.4]}},
    {"aperture": {"x": [0, 1], "y": [0, 1]}, "lens": {"C1": [0.6, 1e400]}},
    {"aperture": {"x": [0, 1.5], "y": [0, 1]}, "lens": {"C1": [0.6, 2.4]}},
    {"aperture": {"x": [0, 1], "y": [0, 1]}},
])
def test_bad_limits_in_hello_are_malformed_and_nothing_is_sent(limits: Any) -> None:
    raw = RawReplies([], hello_limits=limits)
    try:
        with TcpMicroscope(raw.address, call_timeout_s=2) as microscope:
            with pytest.raises(MalformedReply, match=r"^hello: "):
                microscope.limits  # noqa: B018
            with pytest.raises(MalformedReply, match=r"^hello: "):
                microscope.move_aperture(Position(0, 0))
    finally:
        raw.close()


# ---- token and reachability ---------------------------------------------------------------------


def test_token(column: FakeColumn) -> None:
    with ProtocolServer(column.methods(), server_name="s", limits=LIMITS, token="s3cret") as srv:
        with TcpMicroscope(srv.address, token="wrong") as wrong, pytest.raises(Unauthorised):
            wrong.aperture()
        with TcpMicroscope(srv.address, token="s3cret") as right:
            assert right.aperture() == Position(100, -200)
    assert column.sent() == ["aperture.get"]


def test_nothing_listening_is_connect_failed() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    address = probe.getsockname()[:2]
    probe.close()
    with TcpMicroscope(address, connect_timeout_s=1) as microscope:
        with pytest.raises(ConnectFailed):
            microscope.aperture()
        with pytest.raises(ConnectFailed):
            microscope.limits  # noqa: B018
