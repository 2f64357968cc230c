"""The control socket: how `temalign status|pause|resume|once|...` reach the running daemon.

A Unix stream socket (owner and group only, mode 0660: docs/safety.md invariant 7), one JSON object per
line each way: `{"verb": "pause", "args": {...}}` -> `{"ok": true, "result": {...}}` or
`{"ok": false, "error": "..."}`. Each request is audited with the peer's uid (SO_PEERCRED)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from temalign.errors import TemalignError
from temalign.values import JsonObject, jsonable

MAX_REQUEST_BYTES = 64 * 1024
Handler = Callable[[str, JsonObject, int | None], JsonObject]
"""(verb, args, peer uid) -> result; raises TemalignError or ValueError for a refused request."""


class ControlError(TemalignError):
    """The daemon cannot be reached, or it refused the request (its message says why)."""


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux SO_PEERCRED), for the audit line."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves `handler` on a Unix socket at `path` in a background thread per connection."""

    def __init__(self, path: Path, handler: Handler, group: str | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self.group = group
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self) -> None:
        """Bind (replacing a stale socket file, never another live daemon's), chmod 0660, listen."""
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise ControlError(f"{self.path} exists and is not a socket; not replacing it")
            if _answers(self.path):
                raise ControlError(f"another temalign daemon is listening on {self.path}")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            sock.bind(str(self.path))
        except OSError as error:
            sock.close()
            raise ControlError(f"cannot create the control socket {self.path}: {error.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, OSError) as error:
                sock.close()
                raise ControlError(f"control.group {self.group!r}: cannot give the socket to it "
                                   f"({error})") from None
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30.0)
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
            except ValueError as error:
                _send(conn, {"ok": False, "error": f"bad request: {error}"})
                return
            conn.settimeout(None)  # `once` and `calibrate` take as long as a cycle
            try:
                reply = {"ok": True, "result": self.handler(request["verb"], args, uid)}
            except (TemalignError, ValueError) as error:
                reply = {"ok": False, "error": str(error)}
            except Exception as error:  # the daemon stays up; the CLI gets the reason
                reply = {"ok": False, "error": f"internal error: {type(error).__name__}: {error}"}
            _send(conn, reply)

    def close(self) -> None:
        self._closing.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


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


def request(path: Path, verb: str, args: JsonObject | None = None, timeout_s: float | None = 900.0
            ) -> JsonObject:
    """Send one request to the daemon at `path`; its result, or ControlError with its reason."""
    path = Path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no temalign daemon: {path} does not exist (is it running? "
                               "systemctl status temalign)") from None
        except PermissionError:
            raise ControlError(f"not allowed to use {path}: ask for membership of its group") from None
        except OSError as error:
            raise ControlError(f"no temalign daemon answers on {path} ({error.strerror})") from None
        try:
            sock.sendall((json.dumps({"verb": verb, "args": args or {}}) + "\n").encode("utf-8"))
            line = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"the daemon did not answer {verb!r} within {timeout_s:.0f} s") from None
        except (OSError, ValueError) as error:
            raise ControlError(f"the connection to the daemon failed: {error}") from None
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"the daemon sent an unreadable reply to {verb!r}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    result = reply.get("result")
    return result if isinstance(result, dict) else {"result": result}


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
