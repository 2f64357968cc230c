"""Error codes of protocol v1 (docs/protocol.md) and the exceptions that carry them.

Every failure of a call surfaces as a `ProtocolError`, so a caller handles one family: the server
said no (`RemoteError` and its subclasses), or the exchange itself failed (`TransportError`)."""

from __future__ import annotations

from temalign.values import JsonObject

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
OUT_OF_RANGE = 1001
BUSY = 1002
HARDWARE_FAULT = 1003
UNAUTHORISED = 1004

MAX_LINE_BYTES = 64 * 1024 * 1024


class ProtocolError(Exception):
    """Any failed call."""


class TransportError(ProtocolError):
    """The exchange failed: the connection is dropped and the next call reconnects."""


class ConnectFailed(TransportError):
    """No connection could be opened to the microscope's address."""


class ConnectionLost(TransportError):
    """The peer closed the connection or it broke mid-call."""


class DeadlineExceeded(TransportError):
    """No complete reply arrived before the call's deadline."""


class MalformedReply(TransportError):
    """The reply was not valid protocol: bad JSON, wrong id, wrong shape, a value out of range."""


class RemoteError(ProtocolError):
    """The server answered with a JSON-RPC error object."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str, code: int | None = None, data: object = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def to_json(self) -> JsonObject:
        error: JsonObject = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(RemoteError):
    code = PARSE_ERROR


class InvalidRequest(RemoteError):
    code = INVALID_REQUEST


class MethodNotFound(RemoteError):
    code = METHOD_NOT_FOUND


class InvalidParams(RemoteError):
    code = INVALID_PARAMS


class OutOfRange(RemoteError):
    """The value is outside the server's limits; nothing moved."""

    code = OUT_OF_RANGE


class Busy(RemoteError):
    """Try again later; nothing changed."""

    code = BUSY


class HardwareFault(RemoteError):
    """The state after the call is unknown: read it back."""

    code = HARDWARE_FAULT


class Unauthorised(RemoteError):
    code = UNAUTHORISED


_BY_CODE: dict[int, type[RemoteError]] = {
    cls.code: cls
    for cls in (ParseError, InvalidRequest, MethodNotFound, InvalidParams, OutOfRange, Busy,
                HardwareFault, Unauthorised)
}


def remote_error(code: int, message: str, data: object = None) -> RemoteError:
    """The exception class for a reply's error code (a plain `RemoteError` for codes we don't know)."""
    cls = _BY_CODE.get(code, RemoteError)
    return cls(message, code=code, data=data)
