"""The optional HTTP control endpoint (`control.http_listen`): how an acquisition script on another
PC (DigitalMicrograph, SerialEM, Python on the camera PC) says "I am exposing, don't wobble" and
"done", which the Unix control socket cannot reach.

    GET  /v1/status                                   what `temalign status --json` shows
    POST /v1/pause   {"for_s": N, "reason": "...", "replace": false}   as `temalign pause`
    POST /v1/resume  {}                               as `temalign resume`

Every request carries `Authorization: Bearer TOKEN` (control.http_token_file), compared in constant
time; without it nothing is served. A request is dispatched to the daemon's control handler, the
same `service.verbs` as the Unix socket's (one way to do each thing), audited with `via: http
ADDRESS`. Replies are JSON, `{"ok": true, "result": {...}}` or `{"ok": false, "error": "..."}`
with the status code that fits (400 a bad request, 401 no or a wrong token, 404, 405, 409 the
daemon refused, 413, 500): never a traceback, and nothing moves on a bad one. Bounded as the
other listeners are (temalign.listeners): at most `max_connections` at once, each with
`request_timeout_s` to send its request, one request per connection (HTTP/1.0)."""

from __future__ import annotations

import hmac
import json
import logging
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from temalign.errors import TemalignError
from temalign.listeners import BoundedThreads, Serving
from temalign.service.control import Caller
from temalign.values import JsonObject, jsonable

log = logging.getLogger("temalign.http")
MAX_CONNECTIONS = 8
REQUEST_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 4096
"""A pause request is under 600 bytes; a longer body is refused unread."""
ROUTES: dict[str, tuple[str, str, frozenset[str]]] = {
    "/v1/status": ("GET", "status", frozenset()),
    "/v1/pause": ("POST", "pause", frozenset({"for_s", "reason", "replace"})),
    "/v1/resume": ("POST", "resume", frozenset()),
}
"""Path -> (method, verb of service.verbs, the keys its JSON body may have)."""
REFUSAL_LOG_INTERVAL_S = 60.0
"""At most one log line a minute for requests without the right token (a scan must not flood it)."""
Handler = Callable[[str, JsonObject, Caller], JsonObject]


class HttpControlError(TemalignError):
    """The endpoint cannot be served (its port is taken)."""


class _Refused(Exception):
    """A request answered with an error status and a message, before it reaches the daemon."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class HttpControlServer:
    """Serves `handler` over HTTP on `host:port` to requests bearing `token`."""

    def __init__(self, host: str, port: int, token: str, handler: Handler, *,
                 max_connections: int = MAX_CONNECTIONS,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        if not token:
            raise ValueError("the HTTP control endpoint needs a token")
        self.host, self.port = host, port
        self._token = token.encode("utf-8")
        self.handler = handler
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self._serving: Serving | None = None
        self._address: tuple[str, int] | None = None
        self._last_refusal_log = -REFUSAL_LOG_INTERVAL_S

    @property
    def address(self) -> tuple[str, int] | None:
        """Host and port it listens on (port 0 picks a free one), or None when not serving."""
        return self._address if self._serving is not None else None

    @property
    def url(self) -> str | None:
        if self.address is None:
            return None
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self) -> None:
        """Bind and serve from a daemon thread; HttpControlError if the address cannot be bound."""

        class Request(_Request):
            timeout = self.request_timeout_s

        kind = _Server6 if ":" in self.host else _Server
        try:
            server = kind((self.host, self.port), Request)
        except OSError as error:
            raise HttpControlError(
                f"cannot serve the HTTP control endpoint on {self.host}:{self.port}: "
                f"{error.strerror or error} (another process holds the port? change control.http_listen)"
            ) from None
        server.control = self
        server.max_connections = self.max_connections
        bound = server.socket.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        self._serving = Serving(server, "http-control")

    def alive(self) -> bool:
        """Whether the endpoint is served (the watchdog's question)."""
        return self._serving is not None and self._serving.alive()

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()

    def authorised(self, header: str | None) -> bool:
        """`Authorization: Bearer TOKEN` with this endpoint's token, compared in constant time."""
        scheme, _, given = (header or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8"), self._token)

    def note_refusal(self, peer: str, why: str) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL_S:
            self._last_refusal_log = now
            log.warning("http control: refused a request from %s (%s); further refusals for a minute "
                        "are not logged", peer, why)


class _Server(BoundedThreads, ThreadingHTTPServer):
    daemon_threads = True
    control: HttpControlServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Request(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0), one JSON reply."""

    server: _Server
    server_version = "temalign"
    sys_version = ""
    protocol_version = "HTTP/1.0"

    @property
    def control(self) -> HttpControlServer:
        return self.server.control

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    def _serve(self) -> None:
        peer = f"http {self.client_address[0]}" if self.client_address else "http"
        try:
            verb, args = self._request(peer)
        except _Refused as refused:
            self._reply(refused.status, {"ok": False, "error": str(refused)}, refused.headers)
            return
        try:
            result = self.control.handler(verb, args, Caller(None, peer))
        except ValueError as error:
            self._reply(400, {"ok": False, "error": str(error)})
        except TemalignError as error:
            self._reply(409, {"ok": False, "error": str(error)})
        except Exception as error:  # the daemon stays up; the caller gets the reason
            log.exception("http control request %r failed", verb)
            self._reply(500, {"ok": False, "error": f"internal error: {type(error).__name__}: {error}"})
        else:
            self._reply(200, {"ok": True, "result": result})

    def _request(self, peer: str) -> tuple[str, JsonObject]:
        """The verb and its arguments, or _Refused saying what is wrong with the request."""
        path = self.path.split("?", 1)[0]
        route = ROUTES.get(path)
        if route is None:
            raise _Refused(404, f"no such endpoint {path[:100]!r} (known: {', '.join(sorted(ROUTES))})")
        method, verb, keys = route
        if self.command != method:
            raise _Refused(405, f"{path} takes {method}, not {self.command[:20]}", {"Allow": method})
        if not self.control.authorised(self.headers.get("Authorization")):
            self.control.note_refusal(peer, "no or a wrong token")
            raise _Refused(401, "no or a wrong token: send Authorization: Bearer TOKEN (the daemon's "
                                "control.http_token_file)", {"WWW-Authenticate": 'Bearer realm="temalign"'})
        args = self._body() if method == "POST" else {}
        unknown = sorted(set(args) - keys)
        if unknown:
            allowed = ", ".join(sorted(keys)) or "none"
            raise _Refused(400, f"{path}: unknown keys {', '.join(repr(k[:40]) for k in unknown[:5])} "
                                f"(allowed: {allowed})")
        return verb, args

    def _body(self) -> JsonObject:
        """The JSON object in the body ({} for an empty one), read only when it is small."""
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(411, "send the body with a Content-Length, not in chunks")
        length_text = self.headers.get("Content-Length", "0").strip() or "0"
        if not length_text.isdigit():
            raise _Refused(400, "Content-Length is not a number")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise _Refused(413, f"a body of {length} bytes; at most {MAX_BODY_BYTES}")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise _Refused(400, "the body is shorter than its Content-Length")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _Refused(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, 'the body must be a JSON object, e.g. {"for_s": 600, "reason": "exposure"}')
        return body

    def _reply(self, status: int, body: JsonObject, headers: dict[str, str] | None = None) -> None:
        data = (json.dumps(jsonable(body, "reply", default=str), allow_nan=False) + "\n").encode("utf-8")
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's errors (a malformed request line, headers too long) as JSON too."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        data = (json.dumps({"ok": False, "error": text}) + "\n").encode("utf-8")
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """No access log line per request; refusals are logged by the server, throttled."""
