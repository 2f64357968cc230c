"""NDJSON framing shared by both ends: bounded line reads, strict JSON in, ASCII JSON out.

Both ends parse with the same rules so that what one accepts the other would have sent: UTF-8
only, no NaN/Infinity (they are not JSON), and a hard cap on a line's length checked while the
bytes arrive, so a peer that never sends a newline cannot make us buffer without bound."""

from __future__ import annotations

import json
import socket
import time
from typing import Any, NoReturn

from temalign.values import finite

CHUNK_BYTES = 1 << 20


class LineTooLong(Exception):
    """The peer sent more than the line limit without a newline."""


class BadJson(ValueError):
    """A line that is not one strict JSON value (message says why, short)."""


def _no_constant(name: str) -> NoReturn:
    raise BadJson(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not finite(value):
        raise BadJson(f"number {text[:40]} is out of range")
    return value


def decode(line: bytes | bytearray, *, finite_floats: bool = False) -> Any:
    """The JSON value of one line; BadJson when it is not UTF-8 or not strict JSON.

    `finite_floats` also refuses numbers that overflow a float (1e400), which Python would
    otherwise read as infinity."""
    try:
        text = bytes(line).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadJson(f"not UTF-8 (byte {error.start})") from None
    try:
        if finite_floats:
            return json.loads(text, parse_constant=_no_constant, parse_float=_parse_float)
        return json.loads(text, parse_constant=_no_constant)
    except BadJson:
        raise
    except RecursionError:
        raise BadJson("nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, and ints too long to convert
        raise BadJson(f"not JSON: {str(error)[:120]}") from None


def encode(message: object) -> bytes:
    """One message as one line: compact, ASCII-only (always valid UTF-8), strict (ValueError on
    NaN/Infinity, TypeError on values JSON cannot carry)."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii") + b"\n"


class LineReader:
    """Reads newline-terminated lines from a socket, at most `max_line_bytes` before the newline.

    Keeps what follows a line for the next read. The search for the newline only looks at new
    bytes, so a large line costs linear time however it is chunked."""

    def __init__(self, sock: socket.socket, max_line_bytes: int) -> None:
        self._sock = sock
        self._max = max_line_bytes
        self._buf = bytearray()
        self._scanned = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a line."""
        return len(self._buf)

    def read_line(self, deadline: float | None = None) -> bytes | None:
        """The next line without its newline; None at end of stream (a partial line is dropped).

        `deadline` (time.monotonic()) bounds the whole line: TimeoutError once it passes, however
        the bytes trickle in. Raises LineTooLong and OSError as they happen."""
        while True:
            newline = self._buf.find(b"\n", self._scanned)
            if newline >= 0:
                if newline > self._max:
                    raise LineTooLong(f"line longer than {self._max} bytes")
                with memoryview(self._buf) as view:
                    line = bytes(view[:newline])
                del self._buf[: newline + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self._max:
                raise LineTooLong(f"line longer than {self._max} bytes")
            if deadline is None:
                self._sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("deadline passed")
                self._sock.settimeout(remaining)
            chunk = self._sock.recv(min(CHUNK_BYTES, self._max + 2 - len(self._buf)))
            if not chunk:
                return None
            self._buf += chunk
