"""The control socket: how `temalign status|pause|resume|once|...` reach the running daemon.

A Unix stream socket (owner and group only, mode 0660: docs/safety.md invariant 7), one JSON object per
line each way: `{"verb": "pause", "args": {...}}` -> `{"ok": true, "result": {...}}` or
`{"ok": false, "error": "..."}`. A request with `"progress": true` (`once`, `calibrate`) first gets
`{"progress": "..."}` lines, one per step as it happens, so a person is not left in silence for
the half minute a cycle takes. Each request is audited with the peer's uid (SO_PEERCRED)."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import logging
import os
import pwd
import socket
import socketserver
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from temalign.errors import TemalignError
from temalign.listeners import DEFAULT_MAX_CONNECTIONS, BoundedThreads, Serving
from temalign.values import JsonObject, jsonable

log = logging.getLogger("temalign.control")
MAX_REQUEST_BYTES = 64 * 1024
MAX_ARGS_DEPTH = 32
"""Nesting the arguments of a request may have; no verb takes more than two."""
MAX_REPLY_BYTES = 4 << 20
"""The longest reply line a client reads (a status with its last cycles is some 20 KiB)."""
REQUEST_TIMEOUT_S = 30.0
"""How long a client may take to send its request line (the reply may take a cycle)."""
SEND_TIMEOUT_S = 5.0
"""How long one progress line or the reply may take to send: a client that stopped reading loses
its progress lines, and never holds up the cycle that makes them."""


@dataclass(frozen=True)
class Caller:
    """Who asked, for the journal and the log (`uid` over the Unix socket, `via` the way in), and
    where the steps of a long request go as they happen (`progress`, None when nobody listens)."""

    uid: int | None
    via: str = "socket"
    progress: Callable[[str], None] | None = None

    @property
    def who(self) -> str:
        """`uid 1000 (alice)` over the socket, `http 10.0.0.5` over HTTP: for people to read."""
        if self.uid is None:
            return self.via
        try:
            return f"uid {self.uid} ({pwd.getpwuid(self.uid).pw_name})"
        except KeyError:
            return f"uid {self.uid}"

    def say(self, text: str) -> None:
        """One progress line to the caller, if it listens."""
        if self.progress is not None:
            self.progress(text)


Handler = Callable[[str, JsonObject, Caller], JsonObject]
"""(verb, args, caller) -> result; raises TemalignError or ValueError for a refused request."""


class ControlError(TemalignError):
    """The daemon cannot be reached, or it refused the request (its message says why)."""


class NotRunning(ControlError):
    """No daemon listens on the socket (`temalign status` exits 3 for it, as LSB says)."""


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux SO_PEERCRED), for the audit line."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlSocketError(ControlError):
    """The control socket cannot be taken at start (its path holds something else, or another
    daemon has it): a start-up error that leaves the path as it was; exit status 2, so systemd
    does not restart into the same refusal."""

    exit_status = 2


class _UnixServer(BoundedThreads, socketserver.UnixStreamServer):
    control: ControlServer
    request_queue_size = 16


class _Connection(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        self.server.control.serve(self.request)


class ControlServer:
    """Serves `handler` on a Unix socket at `path`: a thread per connection, at most
    `max_connections` at once, `request_timeout_s` to send a request (service.listeners).

    The path is the daemon's only while it holds `<path>.lock` (flock), so two daemons never both
    take it; at start a stale socket (a daemon killed with SIGKILL left it) is replaced, anything
    else there is a ControlSocketError that leaves it untouched; at close the socket is removed
    only if it is still the one this run bound."""

    def __init__(self, path: Path, handler: Handler, group: str | None = None, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.handler = handler
        self.group = group
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self._serving: Serving | None = None
        self._lock_fd: int | None = None
        self._bound: tuple[int, int] | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def start(self) -> None:
        """Take the lock, then the path (replacing a stale socket, nothing else), chmod 0660, serve."""
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._lock_fd = self._take_lock()
            self._clear_the_way()
            self._serve_socket()
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> int:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as error:
            raise ControlSocketError(f"control.socket {self.path}: cannot create its lock {self.lock_path} "
                                     f"({error.strerror or error})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ControlSocketError(f"another temalign daemon is listening on {self.path} (it holds "
                                     f"{self.lock_path})") from None
        return fd

    def _clear_the_way(self) -> None:
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise ControlSocketError(f"control.socket {self.path} exists and is not a socket; not replacing "
                                     "it (set control.socket to a path of its own)")
        if _answers(self.path):
            raise ControlSocketError(f"another temalign daemon is listening on {self.path}")
        self.path.unlink()  # a stale socket: its daemon is gone, and we hold the lock

    def _serve_socket(self) -> None:
        server = _UnixServer(str(self.path), _Connection, bind_and_activate=False)
        server.control = self
        server.max_connections = self.max_connections
        old = os.umask(0o117)
        try:
            server.server_bind()
        except OSError as error:
            server.server_close()
            raise ControlSocketError(f"cannot create the control socket {self.path}: "
                                     f"{error.strerror}") from None
        finally:
            os.umask(old)
        info = os.lstat(self.path)
        self._bound = (info.st_dev, info.st_ino)
        os.chmod(self.path, 0o660)
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, OSError) as error:
                server.server_close()
                raise ControlSocketError(f"control.group {self.group!r}: cannot give the socket to it "
                                         f"({error})") from None
        server.server_activate()
        self._serving = Serving(server, "control")

    def alive(self) -> bool:
        """Whether the socket is served (the watchdog's question)."""
        return self._serving is not None and self._serving.alive()

    def serve(self, conn: socket.socket) -> None:
        """One connection: one request, one reply."""
        conn.settimeout(self.request_timeout_s)
        uid = peer_uid(conn)
        try:
            line = _read_line(conn)
        except (OSError, ValueError) as error:
            _send(conn, {"ok": False, "error": f"bad request: {error}"})
            return
        if not line:
            return  # a probe (is_running) that connected and closed
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("verb"), str):
                raise ValueError('expected {"verb": NAME, "args": {...}}')
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("args must be an object")
            if nested_deeper_than(args, MAX_ARGS_DEPTH):
                raise ValueError(f"nested deeper than {MAX_ARGS_DEPTH} levels")
            if not isinstance(request.get("progress", False), bool):
                raise ValueError("progress must be true or false")
        except RecursionError:  # json's own limit, far deeper
            _send(conn, {"ok": False, "error": f"bad request: nested deeper than {MAX_ARGS_DEPTH} levels"})
            return
        except ValueError as error:
            _send(conn, {"ok": False, "error": f"bad request: {error}"})
            return
        # `once` and `calibrate` take as long as a cycle; only the sends are bounded from here on.
        conn.settimeout(SEND_TIMEOUT_S)
        caller = Caller(uid, "socket", _ProgressLines(conn) if request.get("progress") else None)
        try:
            reply = {"ok": True, "result": self.handler(request["verb"], args, caller)}
        except (TemalignError, ValueError) as error:
            reply = {"ok": False, "error": str(error)}
        except Exception as error:  # the daemon stays up; the CLI gets the reason
            log.exception("control request %r failed", request["verb"])
            reply = {"ok": False, "error": f"internal error: {type(error).__name__}: {error}"}
        _send(conn, reply)

    def close(self) -> None:
        """Stop serving, remove the socket if it is still the one this run bound, free the lock."""
        if self._serving is not None:
            self._serving.stop()
            self._serving = None
        if self._bound is not None:
            with contextlib.suppress(OSError):
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == self._bound:
                    self.path.unlink()
            self._bound = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether a parsed JSON value nests lists or objects more than `limit` levels deep, found
    without recursion: json.loads takes hundreds of levels that any recursive walk of the
    arguments later (a comparison, a copy, a log line) would overflow on."""
    level: list[object] = [value]
    for _ in range(limit + 1):
        level = [child for item in level if isinstance(item, dict | list)
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return True


class _ProgressLines:
    """Sends `{"progress": text}` lines on a connection until one send fails (the client went
    away or stopped reading): from then on the rest are dropped, and the request goes on."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.lost = False

    def __call__(self, text: str) -> None:
        if self.lost:
            return
        try:
            self.conn.sendall((json.dumps({"progress": str(text)}) + "\n").encode("utf-8"))
        except OSError:
            self.lost = True


def _read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError(f"longer than {MAX_REQUEST_BYTES} bytes")
    return data.decode("utf-8")


def _send(conn: socket.socket, obj: JsonObject) -> None:
    """Best effort: a client that went away gets nothing, and the daemon carries on."""
    with contextlib.suppress(OSError):
        line = json.dumps(jsonable(obj, "reply", default=str), allow_nan=False)
        conn.sendall((line + "\n").encode("utf-8"))


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, verb: str, args: JsonObject | None = None, timeout_s: float | None = 900.0, *,
            progress: Callable[[str], None] | None = None) -> JsonObject:
    """Send one request to the daemon at `path`; its result, or ControlError with its reason
    (NotRunning when no daemon listens). `progress` gets each step the daemon reports before its
    reply (`once`, `calibrate`); without it the daemon sends none."""
    path = Path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise NotRunning(f"no temalign daemon: {path} does not exist (is it running? "
                             "systemctl status temalign)") from None
        except PermissionError:
            raise ControlError(f"not allowed to use {path}: ask for membership of its group") from None
        except ConnectionRefusedError:
            raise NotRunning(f"no temalign daemon answers on {path} (it is not running: systemctl "
                             "status temalign)") from None
        except OSError as error:
            raise ControlError(f"no temalign daemon answers on {path} ({error.strerror})") from None
        message: JsonObject = {"verb": verb, "args": args or {}}
        if progress is not None:
            message["progress"] = True
        try:
            sock.sendall((json.dumps(message) + "\n").encode("utf-8"))
            line = _reply_line(sock, progress)
        except (ConnectionResetError, BrokenPipeError):
            line = ""  # closed unread: the daemon went away or refused the connection
        except TimeoutError:
            raise ControlError(f"the daemon did not answer {verb!r} within {timeout_s:.0f} s") from None
        except (OSError, ValueError) as error:
            raise ControlError(f"the connection to the daemon failed: {error}") from None
    if not line:
        raise ControlError(f"the daemon went away before it answered {verb!r} (it stopped or was "
                           "restarted: systemctl status temalign)")
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"the daemon sent an unreadable reply to {verb!r}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    result = reply.get("result")
    return result if isinstance(result, dict) else {"result": result}


def _reply_line(sock: socket.socket, progress: Callable[[str], None] | None) -> str:
    """The reply line, after handing each progress line before it to `progress`."""
    with sock.makefile("rb") as reader:
        while True:
            raw = reader.readline(MAX_REPLY_BYTES + 1)
            if len(raw) > MAX_REPLY_BYTES:
                raise ValueError(f"a reply longer than {MAX_REPLY_BYTES} bytes")
            line = raw.decode("utf-8")
            if progress is not None and line.startswith('{"progress"'):
                with contextlib.suppress(ValueError):
                    step = json.loads(line)
                    if isinstance(step, dict) and set(step) == {"progress"}:
                        progress(str(step["progress"]))
                        continue
            return line


def is_running(path: Path) -> bool:
    """A daemon answers on the control socket (the tools refuse to move the aperture then)."""
    return Path(path).exists() and _answers(Path(path))


def refuse_if_daemon_active(path: Path, what: str) -> None:
    """Tools that move the aperture beyond the daemon's envelope (acquisition) run only while no
    daemon runs, or while it is paused or in hold (docs/safety.md, Tools): two controllers would fight."""
    if not is_running(path):
        return
    try:
        status = request(path, "status", timeout_s=30.0)
    except ControlError as error:
        raise ControlError(f"{what}: a temalign daemon listens on {path} but its state is unknown ({error}); "
                           "stop or pause it first") from None
    if status.get("state") not in ("paused", "hold"):
        raise ControlError(f"{what}: a temalign daemon is running ({status.get('state')}) on {path}: it "
                           "would fight this tool for the aperture; `temalign pause` it first (resume "
                           "afterwards)")
