"""The protocol v1 server core that the twin and every vendor bridge stand on.

A bridge supplies a table of handlers; the core owns everything else that protocol.md makes
normative (framing, JSON-RPC envelopes, error codes, hello and the token, params validation of
the v1 methods), so every server answers hostile or broken input the same way and a handler only
ever sees a well-formed request. One thread per connection; a connection's requests are handled
one after another, as protocol.md requires of clients anyway."""

from __future__ import annotations

import contextlib
import hmac
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from pydantic import ValidationError

from temalign.protocol import messages
from temalign.protocol.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_LINE_BYTES,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNAUTHORISED,
    Busy,
    RemoteError,
)
from temalign.protocol.framing import BadJson, LineReader, LineTooLong, decode, encode
from temalign.values import JsonObject

log = logging.getLogger(__name__)

Handler = Callable[[JsonObject], object]
"""params -> result: anything JSON can carry (a result it cannot is an internal error)."""

_JOIN_TIMEOUT_S = 5.0
_LINGER_S = 0.5
_LINGER_BYTES = 1 << 20


class DropConnection(Exception):
    """Raised by a handler or `before_call`: close this connection now, without replying."""


class NoReply(Exception):
    """Raised by a handler or `before_call`: send nothing for this request; keep reading."""


class RawReply(Exception):
    """Raised by a handler or `before_call`: send `line` (bytes, ending in a newline) instead of
    the reply, whatever it holds."""

    def __init__(self, line: bytes) -> None:
        super().__init__("raw reply")
        self.line = line


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid_id(value: object) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _error(request_id: object, code: int, message: str, data: object = None) -> JsonObject:
    error: JsonObject = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _check_limits(limits: object) -> None:
    try:
        messages.LimitsModel.model_validate(limits)
    except ValidationError as error:
        raise ValueError(f"limits: {messages.describe(error)}") from error


class ProtocolServer:
    """Serves `methods` (method name -> handler) on TCP with protocol v1's framing and errors.

    `limits` is the hello reply's `limits` (or a callable asked at each hello). `token`, when set,
    must come with hello before anything else on a connection. `interceptor(method, params)` is
    `before_call` is asked about every request but hello (after auth): a subclass may refuse it
    (RemoteError) or end the exchange (DropConnection, NoReply, RawReply), as the twin's fault
    injection does (temalign_twin.faulty_server). The listening socket is bound here, so `address`
    is known before `start()`."""

    def __init__(self, methods: Mapping[str, Handler], *, server_name: str,
                 limits: Callable[[], JsonObject] | JsonObject, capabilities: Sequence[str] = (),
                 token: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, max_line_bytes: int = MAX_LINE_BYTES,
                 max_connections: int = 64) -> None:
        if "hello" in methods:
            raise ValueError("hello is handled by the protocol core; leave it out of methods")
        for name, handler in methods.items():
            if not isinstance(name, str) or not name or not callable(handler):
                raise ValueError(f"methods: {_short(name)} needs a non-empty name and a callable handler")
        if not isinstance(server_name, str) or not server_name:
            raise ValueError("server_name must be a non-empty string")
        if isinstance(capabilities, str) or not all(isinstance(c, str) for c in capabilities):
            raise ValueError("capabilities must be a sequence of strings")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string (or None for no token)")
        if not callable(limits):
            _check_limits(limits)
        if max_line_bytes < 64:
            raise ValueError(f"max_line_bytes must be >= 64, got {max_line_bytes}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._methods = dict(methods)
        self._server_name = server_name
        self._limits = limits
        self._capabilities = list(capabilities)
        self._token = token
        self.max_line_bytes = max_line_bytes
        self.max_connections = max_connections

        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._listener = socket.create_server((host, port), family=family)
        self._listener.setblocking(False)
        self._address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._serving = False
        self._served = threading.Event()
        self._serving_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None

    # ---- life cycle --------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): port 0 asked for an ephemeral one, this says which."""
        return self._address

    def start(self) -> None:
        """Serve in a background daemon thread; the socket is already listening."""
        with self._lock:
            if self._thread is not None or self._serving or self._closing.is_set():
                raise RuntimeError("this server was already started or closed")
            self._serving = True
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name=f"protocol-server-{self._address[1]}")
        self._thread.start()

    def serve_forever(self) -> None:
        """Accept connections in this thread until `close()`."""
        with self._lock:
            if self._serving or self._closing.is_set():
                raise RuntimeError("this server is already serving or closed")
            self._serving = True
        self._serve()

    def _serve(self) -> None:
        self._serving_thread = threading.current_thread()
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closing.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._listener and not self._closing.is_set():
                        self._accept()
        finally:
            selector.close()
            self._served.set()
            if self._closing.is_set():
                self._release_sockets()

    def _release_sockets(self) -> None:
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def close(self) -> None:
        """Stop accepting, close every connection and wait (bounded) for their threads."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            serving = self._serving
            connections = list(self._connections.items())
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        current = threading.current_thread()
        if serving and self._serving_thread is not current:
            self._served.wait(_JOIN_TIMEOUT_S)
        if not serving or self._served.is_set():
            self._release_sockets()
        for sock, _ in connections:
            _shutdown(sock)
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for _, thread in connections:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("protocol server: %s still busy in a handler after close", thread.name)
        if self._thread is not None and self._thread is not current:
            self._thread.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> ProtocolServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- connections -------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # e.g. out of file descriptors: keep serving the others
            log.warning("protocol server: accept failed: %s", error)
            self._closing.wait(0.05)
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closing.is_set():
                sock.close()
                return
            if len(self._connections) >= self.max_connections:
                full = True
            else:
                full = False
                thread = threading.Thread(target=self._serve_connection, args=(sock, peer), daemon=True,
                                          name=f"protocol-conn-{_short(peer, 60)}")
                self._connections[sock] = thread
        if full:
            log.warning("protocol server: refusing %s: %d connections open", peer, self.max_connections)
            busy = Busy(f"too many connections (at most {self.max_connections}); try again later")
            try:
                sock.settimeout(0.2)
                sock.sendall(encode({"jsonrpc": "2.0", "id": None, "error": busy.to_json()}))
            except OSError:
                pass
            sock.close()
            return
        thread.start()

    def _serve_connection(self, sock: socket.socket, peer: object) -> None:
        reader = LineReader(sock, self.max_line_bytes)
        state = {"authenticated": self._token is None}
        try:
            while not self._closing.is_set():
                try:
                    line = reader.read_line()
                except LineTooLong:
                    log.warning("protocol server: %s sent a line over %d bytes; closing", peer,
                                self.max_line_bytes)
                    self._send_and_linger(sock, _error(None, INVALID_REQUEST,
                                                       f"line too long (over {self.max_line_bytes} bytes)"))
                    return
                if line is None:
                    return
                if not line.strip():
                    continue
                reply = self._handle_line(line, state)
                if reply is not None:
                    sock.sendall(reply)
        except DropConnection:
            return
        except OSError as error:
            if not self._closing.is_set():
                log.debug("protocol server: connection %s ended: %s", peer, error)
        except Exception:
            log.exception("protocol server: connection %s failed", peer)
        finally:
            with self._lock:
                self._connections.pop(sock, None)
            sock.close()

    def _send_and_linger(self, sock: socket.socket, message: JsonObject) -> None:
        """Reply, then close so the reply arrives: unread input would turn the close into a reset
        that can discard the reply at the peer, so read and drop it for a moment first."""
        try:
            sock.sendall(encode(message))
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            drained = 0
            while drained < _LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        finally:
            sock.close()

    # ---- one request -------------------------------------------------------------------------

    def _handle_line(self, line: bytes, state: dict[str, bool]) -> bytes | None:
        """The reply line for one request line (None: no reply). Raises DropConnection to close."""
        try:
            request = decode(line)
        except BadJson as error:
            return self._encode(_error(None, PARSE_ERROR, f"parse error: {error}"))
        if isinstance(request, list):
            return self._encode(_error(None, INVALID_REQUEST, "batch requests are not supported"))
        if not isinstance(request, dict):
            return self._encode(_error(None, INVALID_REQUEST, "a request is a JSON object"))
        has_id = "id" in request
        request_id = request.get("id")
        if has_id and not _valid_id(request_id):
            return self._encode(_error(None, INVALID_REQUEST, "id must be a string, an integer or null"))
        if request.get("jsonrpc") != "2.0":
            return self._encode(_error(request_id, INVALID_REQUEST, 'jsonrpc must be "2.0"'))
        method = request.get("method")
        if not isinstance(method, str) or not method:
            return self._encode(_error(request_id, INVALID_REQUEST, "method must be a non-empty string"))
        if not has_id:
            # A notification asks for no reply; protocol v1 has none, and acting on a command whose
            # outcome nobody will read (a move, say) is the wrong default, so it is ignored.
            log.warning("protocol server: ignored a notification (request without id) for %s", _short(method))
            return None
        params = request.get("params", {})
        if not isinstance(params, dict):
            return self._encode(_error(request_id, INVALID_PARAMS,
                                       f"{_short(method)}: params must be an object, got "
                                       f"{type(params).__name__ if params is not None else 'null'}"))
        try:
            result = self._dispatch(method, params, state)
        except RemoteError as error:
            return self._encode({"jsonrpc": "2.0", "id": request_id, "error": error.to_json()})
        except DropConnection:
            raise
        except NoReply:
            return None
        except RawReply as raw:
            return raw.line
        except Exception as error:
            log.exception("protocol server: %s failed", _short(method))
            return self._encode(_error(request_id, INTERNAL_ERROR,
                                       f"internal error in {_short(method)}: {type(error).__name__}"))
        return self._encode({"jsonrpc": "2.0", "id": request_id, "result": result}, method)

    def _encode(self, message: JsonObject, method: str = "") -> bytes:
        try:
            line = encode(message)
        except (TypeError, ValueError) as error:
            log.error("protocol server: %s returned a result JSON cannot carry: %s", _short(method), error)
            text = f"internal error in {_short(method)}: the result is not JSON ({error})"
            return encode(_error(message.get("id"), INTERNAL_ERROR, text[:300]))
        if len(line) - 1 > self.max_line_bytes:
            log.error("protocol server: %s result is %d bytes, over the line limit",
                      _short(method), len(line))
            return encode(_error(message.get("id"), INTERNAL_ERROR,
                                 f"internal error in {_short(method)}: the result is over the "
                                 f"{self.max_line_bytes}-byte line limit"))
        return line

    def _dispatch(self, method: str, params: JsonObject, state: dict[str, bool]) -> object:
        if method == "hello":
            return self._hello(params, state)
        if not state["authenticated"]:
            raise RemoteError("unauthorised: call hello with the token first", code=UNAUTHORISED)
        self.before_call(method, params)
        handler = self._methods.get(method)
        if handler is None:
            raise RemoteError(f"no such method: {_short(method)}", code=METHOD_NOT_FOUND)
        model = messages.PARAMS.get(method)
        if model is not None:
            try:
                model.model_validate(params)
            except ValidationError as error:
                raise RemoteError(f"{method}: {messages.describe(error)}", code=INVALID_PARAMS) from None
        return handler(params)

    def before_call(self, method: str, params: JsonObject) -> None:
        """Called before every request but hello, once authenticated; the core does nothing here."""

    def closing_wait(self, seconds: float) -> bool:
        """Wait `seconds` (wall time) unless the server closes first; True when it is closing."""
        return self._closing.wait(seconds)

    def _hello(self, params: JsonObject, state: dict[str, bool]) -> JsonObject:
        try:
            hello = messages.HelloParams.model_validate(params)
        except ValidationError as error:
            raise RemoteError(f"hello: {messages.describe(error)}", code=INVALID_PARAMS) from None
        if self._token is not None:
            if hello.token is None:
                state["authenticated"] = False
                raise RemoteError("unauthorised: this server needs a token", code=UNAUTHORISED)
            given = hello.token.encode("utf-8", "surrogatepass")
            if not hmac.compare_digest(given, self._token.encode("utf-8", "surrogatepass")):
                state["authenticated"] = False
                raise RemoteError("unauthorised: wrong token", code=UNAUTHORISED)
        limits = self._limits() if callable(self._limits) else self._limits
        try:
            _check_limits(limits)
        except ValueError as error:
            log.error("protocol server: the limits are not valid: %s", error)
            raise RemoteError("internal error: the server's limits are not valid",
                              code=INTERNAL_ERROR) from None
        state["authenticated"] = True
        return {"protocol": messages.PROTOCOL_VERSION, "server": self._server_name,
                "capabilities": list(self._capabilities), "limits": limits}


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
