"""The protocol server with fault injection: the transport faults of twin.md (a dropped
connection, a slow reply, no reply, a malformed reply, an error reply), for the twin, the tests
and the fault campaign. The daemon's package holds only the server core a vendor bridge needs
(temalign.protocol.server); this is the part that only a simulator wants."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from temalign.protocol.errors import RemoteError
from temalign.protocol.server import DropConnection, NoReply, ProtocolServer, RawReply
from temalign.values import JsonObject

GARBAGE_LINE = b'{"jsonrpc":"2.0","result":{"x": 1, \x00 this is not JSON\n'
"""What a "garbage" intercept sends instead of the reply: a line no JSON parser accepts."""
ACTIONS = ("drop", "silence", "delay", "garbage", "error")


@dataclass(frozen=True)
class Intercept:
    """What a fault injector asks the transport to do with one request.

    drop: close the connection, no reply, handler not called. silence: no reply, handler not
    called, the connection keeps reading. delay: wait `seconds` (wall) then handle and reply
    normally. garbage: a line that is not JSON instead of the reply, handler not called. error:
    `error` as the reply, handler not called."""

    action: Literal["drop", "silence", "delay", "garbage", "error"]
    seconds: float = 0.0
    error: RemoteError | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"intercept action must be one of {ACTIONS}, got {self.action!r}")
        if not (isinstance(self.seconds, int | float) and math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(f"intercept seconds must be a finite number >= 0, got {self.seconds!r}")
        if self.action == "error" and not isinstance(self.error, RemoteError):
            raise ValueError("an 'error' intercept needs error=RemoteError(...)")


Interceptor = Callable[[str, JsonObject], Intercept | None]


class FaultInjectingServer(ProtocolServer):
    """A ProtocolServer that asks `interceptor(method, params)` about every request but hello
    (after auth) and carries out the `Intercept` it returns, if any."""

    def __init__(self, *args: Any, interceptor: Interceptor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._interceptor = interceptor

    def before_call(self, method: str, params: JsonObject) -> None:
        if self._interceptor is None:
            return
        intercept = self._interceptor(method, params)
        if intercept is None:
            return
        if not isinstance(intercept, Intercept):
            raise TypeError(f"the interceptor returned {type(intercept).__name__}, not an Intercept")
        if intercept.action == "drop":
            raise DropConnection()
        if intercept.action == "silence":
            raise NoReply()
        if intercept.action == "garbage":
            raise RawReply(GARBAGE_LINE)
        if intercept.action == "error":
            assert intercept.error is not None
            raise intercept.error
        if self.closing_wait(intercept.seconds):
            raise DropConnection()
