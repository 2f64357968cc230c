"""The protocol v1 client: one connection, one request in flight, a deadline on every call.

Anything the server sends is hostile until checked: each reply must be one strict JSON object
answering exactly the pending request, within the deadline and the line limit. Any transport
failure drops the connection; the next call opens a new one (to the same address, never another)
and says hello again, so a caller never has to manage connections."""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from typing import Any

from pydantic import ValidationError

from temalign.protocol import messages
from temalign.protocol.errors import (
    MAX_LINE_BYTES,
    ConnectFailed,
    ConnectionLost,
    DeadlineExceeded,
    MalformedReply,
    RemoteError,
    TransportError,
    remote_error,
)
from temalign.protocol.framing import BadJson, LineReader, LineTooLong, decode, encode
from temalign.values import JsonObject

log = logging.getLogger(__name__)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class ProtocolClient:
    """Calls methods on one protocol v1 server at `host:port`; thread-safe (calls take turns)."""

    def __init__(self, host: str, port: int, *, call_timeout_s: float = 10.0, connect_timeout_s: float = 5.0,
                 token: str | None = None, client_name: str = "temalign",
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
        if max_line_bytes < 64:
            raise ValueError(f"max_line_bytes must be >= 64, got {max_line_bytes}")
        self.host = host
        self.port = port
        self.call_timeout_s = _positive("call_timeout_s", call_timeout_s)
        self.connect_timeout_s = _positive("connect_timeout_s", connect_timeout_s)
        self.max_line_bytes = max_line_bytes
        self._hello_params: JsonObject = {"client": client_name}
        if token is not None:
            self._hello_params["token"] = token
        messages.HelloParams.model_validate(self._hello_params)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._reader: LineReader | None = None
        self._hello: messages.HelloResult | None = None
        self._closed = False

    @property
    def hello_result(self) -> messages.HelloResult | None:
        """The validated hello reply of the current (or last) connection; None before the first."""
        return self._hello

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> messages.HelloResult:
        """Open the connection and say hello now, if not open already; returns the hello reply."""
        with self._lock:
            self._ensure_connected()
            assert self._hello is not None
            return self._hello

    def call(self, method: str, params: JsonObject | None = None, *, timeout_s: float | None = None) -> Any:
        """The `result` of `method(params)`. Raises a RemoteError subclass when the server answers
        with an error (the connection stays), a TransportError otherwise (the connection is
        dropped; the next call reconnects)."""
        if not isinstance(method, str) or not method:
            raise ValueError(f"method must be a non-empty string, got {method!r}")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"params must be a dict or None, got {type(params).__name__}")
        timeout = self.call_timeout_s if timeout_s is None else _positive("timeout_s", timeout_s)
        with self._lock:
            self._ensure_connected()
            return self._exchange(method, {} if params is None else params, timeout)

    def disconnect(self) -> None:
        """Drop the connection (say, after a reply that made no sense); the next call reconnects."""
        with self._lock:
            self._drop()

    def close(self) -> None:
        """Drop the connection for good: later calls fail with ConnectionLost. A call in flight in
        another thread ends at once with ConnectionLost."""
        self._closed = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._drop()

    def __enter__(self) -> ProtocolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- under the lock ----------------------------------------------------------------------

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._reader = None

    def _ensure_connected(self) -> None:
        if self._closed:
            raise ConnectionLost("the client is closed")
        if self._sock is not None and self._peer_spoke():
            self._drop()
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as error:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: "
                                f"{error.strerror or error}") from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = LineReader(sock, self.max_line_bytes)
        try:
            result = self._exchange("hello", self._hello_params, self.call_timeout_s)
        except RemoteError:
            self._drop()
            raise
        try:
            self._hello = messages.HelloResult.model_validate(result)
        except ValidationError as error:
            self._drop()
            raise MalformedReply(f"hello: {messages.describe(error)}") from None

    def _peer_spoke(self) -> bool:
        """Whether the idle connection has something to say: the server closed it, or sent bytes
        nobody asked for. Either way it cannot carry the next call; checked before sending, so
        reconnecting here never repeats a request."""
        assert self._sock is not None and self._reader is not None
        if self._reader.buffered:
            log.warning("protocol client: %s:%s sent bytes outside a call; reconnecting",
                        self.host, self.port)
            return True
        try:
            self._sock.setblocking(False)
            try:
                peeked = self._sock.recv(1, socket.MSG_PEEK)
            finally:
                self._sock.setblocking(True)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if peeked:
            log.warning("protocol client: %s:%s sent bytes outside a call; reconnecting",
                        self.host, self.port)
        else:
            log.info("protocol client: %s:%s closed the idle connection; reconnecting", self.host, self.port)
        return True

    def _exchange(self, method: str, params: JsonObject, timeout: float) -> Any:
        """Send one request and read its reply, both within `timeout` seconds."""
        assert self._sock is not None and self._reader is not None
        request_id = next(self._ids)
        line = encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        if len(line) - 1 > self.max_line_bytes:
            raise ValueError(f"{method}: request of {len(line)} bytes is over the "
                             f"{self.max_line_bytes}-byte limit")
        deadline = time.monotonic() + timeout
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(line)
            reply_line = self._reader.read_line(deadline)
        except TimeoutError:
            self._drop()
            raise DeadlineExceeded(f"{method}: no reply within {timeout:g} s") from None
        except LineTooLong:
            self._drop()
            raise MalformedReply(f"{method}: reply line longer than {self.max_line_bytes} bytes") from None
        except OSError as error:
            self._drop()
            raise ConnectionLost(f"{method}: connection broke: {error.strerror or error}") from error
        if reply_line is None:
            self._drop()
            who = "the client was closed" if self._closed else "the server closed the connection"
            raise ConnectionLost(f"{method}: {who}")
        try:
            return self._parse(method, request_id, reply_line)
        except TransportError:
            self._drop()
            raise

    def _parse(self, method: str, request_id: int, line: bytes) -> Any:
        try:
            reply = decode(line, finite_floats=True)
        except BadJson as error:
            raise MalformedReply(f"{method}: reply is {error}") from None
        if not isinstance(reply, dict):
            raise MalformedReply(f"{method}: reply is not a JSON object")
        if reply.get("jsonrpc") != "2.0":
            raise MalformedReply(f'{method}: reply lacks "jsonrpc": "2.0"')
        if ("result" in reply) == ("error" in reply):
            raise MalformedReply(f"{method}: reply must have exactly one of result and error")
        if "id" not in reply:
            raise MalformedReply(f"{method}: reply has no id")
        reply_id = reply["id"]
        ours = type(reply_id) is int and reply_id == request_id
        if "error" in reply and (ours or reply_id is None):
            refused = self._error(method, reply["error"])
            if reply_id is None:
                # The server could not tell which request this answers (a line it could not read,
                # say); with one request in flight it is ours, but the stream is suspect.
                self._drop()
            raise refused
        if not ours:
            raise MalformedReply(f"{method}: reply id {str(reply_id)[:40]!r} is not the pending {request_id}")
        return reply["result"]

    @staticmethod
    def _error(method: str, error: object) -> RemoteError:
        if not isinstance(error, dict):
            raise MalformedReply(f"{method}: error is not an object")
        code, message = error.get("code"), error.get("message")
        if type(code) is not int:
            raise MalformedReply(f"{method}: error code is not an integer")
        if not isinstance(message, str):
            raise MalformedReply(f"{method}: error message is not a string")
        return remote_error(code, message[:2000], error.get("data"))
