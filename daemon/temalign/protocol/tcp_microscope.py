"""`Microscope` over protocol v1: what the daemon and the tools use to reach the twin or a bridge.

Two checks on every exchange, because the hardware is expensive and the server is not trusted:
a command outside the limits the server announced is refused here, before anything is sent; and
every result is validated (types, ranges, frame size) before anyone sees it, a bad one dropping
the connection as any other protocol error would."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from pydantic import ValidationError

from temalign.microscope import Limits, Position
from temalign.protocol import messages
from temalign.protocol.address import parse_address
from temalign.protocol.client import ProtocolClient
from temalign.protocol.errors import InvalidParams, MalformedReply, OutOfRange
from temalign.protocol.messages import M
from temalign.values import JsonObject

APERTURE = "condenser"
LENS = "C1"
LENS_READ_SLACK = 1e-6
"""A lens read-back may round past its limit by this fraction of the range's size."""


def _address(address: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(address, str):
        return parse_address(address)
    if (isinstance(address, tuple) and len(address) == 2 and isinstance(address[0], str)
            and isinstance(address[1], int) and not isinstance(address[1], bool)):
        return address
    raise ValueError(f"address must be 'HOST:PORT' or (host, port), got {address!r}")


class ConnectionSettings(Protocol):
    """What `TcpMicroscope.from_settings` reads: the config's `microscope` section
    (temalign.config.schema.MicroscopeSettings; the config imports this layer, not the reverse)."""

    @property
    def host_port(self) -> tuple[str, int]: ...
    @property
    def token(self) -> str | None: ...
    @property
    def call_timeout_s(self) -> float: ...
    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def acquire_timeout_s(self) -> float: ...


def _integer(method: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidParams(f"{method}: {name} must be an integer number of motor units, "
                            f"got {value!r}; not sent")
    return int(value)


def _inside(method: str, name: str, value: float, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise OutOfRange(f"{method}: {name}={value} is outside the server's limits [{lo}, {hi}]; not sent",
                         data={"field": name, "value": value, "limits": [lo, hi]})


class TcpMicroscope:
    """The condenser aperture, C1 and camera of the column behind a protocol v1 server.

    Connects lazily (the first call, or `limits`), and again after any transport error."""

    def __init__(self, address: str | tuple[str, int], *, token: str | None = None,
                 call_timeout_s: float = 10.0, connect_timeout_s: float = 5.0,
                 acquire_timeout_s: float = 30.0, client_name: str = "temalign") -> None:
        host, port = _address(address)
        if isinstance(acquire_timeout_s, bool) or not (isinstance(acquire_timeout_s, int | float)
                                                       and 0 < acquire_timeout_s < math.inf):
            raise ValueError(f"acquire_timeout_s must be a positive number, got {acquire_timeout_s!r}")
        self.acquire_timeout_s = float(acquire_timeout_s)
        self.client = ProtocolClient(host, port, call_timeout_s=call_timeout_s,
                                     connect_timeout_s=connect_timeout_s, token=token,
                                     client_name=client_name)

    @classmethod
    def from_settings(cls, settings: ConnectionSettings, client_name: str) -> TcpMicroscope:
        """The microscope a config's `microscope` section names (address, token, deadlines)."""
        return cls(settings.host_port, token=settings.token, call_timeout_s=settings.call_timeout_s,
                   connect_timeout_s=settings.connect_timeout_s, acquire_timeout_s=settings.acquire_timeout_s,
                   client_name=client_name)

    @property
    def address(self) -> tuple[str, int]:
        return self.client.host, self.client.port

    @property
    def late_write_grace_s(self) -> float:
        """Wall seconds a command that got no reply may still take effect afterwards: protocol.md
        bounds no server's delay, so a server that let one deadline pass gets one more."""
        return self.client.call_timeout_s

    @property
    def hello(self) -> messages.HelloResult:
        """The current connection's hello reply (connecting first if there is none yet)."""
        hello = self.client.hello_result
        if hello is None or not self.client.connected:
            hello = self.client.connect()
        return hello

    @property
    def limits(self) -> Limits:
        """What the server accepts, from its hello (re-read on every reconnect)."""
        limits = self.hello.limits
        return Limits(aperture_x=(limits.aperture.x[0], limits.aperture.x[1]),
                      aperture_y=(limits.aperture.y[0], limits.aperture.y[1]),
                      c1=(float(limits.lens.C1[0]), float(limits.lens.C1[1])))

    def aperture(self) -> Position:
        reply = self._call("aperture.get", {"name": APERTURE}, messages.ApertureResult)
        return Position(reply.x, reply.y)

    def move_aperture(self, target: Position) -> Position:
        """Absolute move; returns where the server says the motor ended up (read it back to be sure)."""
        x = _integer("aperture.move", "x", target.x)
        y = _integer("aperture.move", "y", target.y)
        limits = self.limits
        _inside("aperture.move", "x", x, limits.aperture_x)
        _inside("aperture.move", "y", y, limits.aperture_y)
        reply = self._call("aperture.move", {"name": APERTURE, "x": x, "y": y}, messages.ApertureResult)
        return Position(reply.x, reply.y)

    def c1(self) -> float:
        return self._lens_value("lens.get", self._call("lens.get", {"name": LENS}, messages.LensResult).value)

    def set_c1(self, value: float) -> float:
        """Set C1; returns the value the server reports (a lens that did not take it shows on lens.get)."""
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer) \
                or not math.isfinite(value):
            raise InvalidParams(f"lens.set: value must be a finite number, got {value!r}; not sent")
        value = float(value)
        _inside("lens.set", "value", value, self.limits.c1)
        reply = self._call("lens.set", {"name": LENS, "value": value}, messages.LensResult).value
        return self._lens_value("lens.set", reply)

    def _lens_value(self, method: str, value: float) -> float:
        """A lens value in a reply, checked against the limits the server announced: a reading it
        could never have been set to is a broken reply (the connection is dropped), never a C1 the
        daemon would go on from."""
        lo, hi = self.limits.c1
        slack = LENS_READ_SLACK * max(abs(lo), abs(hi), 1.0)
        if not lo - slack <= value <= hi + slack:
            self.client.disconnect()
            raise MalformedReply(f"{method}: C1 reads {value!r}, outside the server's limits [{lo}, {hi}]")
        return value

    def acquire(self, exposure_s: float | None = None) -> np.ndarray:
        """One frame as a 2-D uint16 array of shape (height, width)."""
        params: JsonObject = {}
        if exposure_s is not None:
            if isinstance(exposure_s, bool) or not isinstance(exposure_s, int | float | np.floating) \
                    or not 0 < exposure_s <= 60:
                raise InvalidParams(f"camera.acquire: exposure_s must be in (0, 60] s, "
                                    f"got {exposure_s!r}; not sent")
            params["exposure_s"] = float(exposure_s)
        frame = self._call("camera.acquire", params, messages.FrameResult, timeout_s=self.acquire_timeout_s)
        try:
            raw = frame.pixels()
        except ValueError as error:
            self.client.disconnect()
            raise MalformedReply(f"camera.acquire: reply data: {error}") from None
        return np.frombuffer(raw, dtype="<u2").reshape(frame.height, frame.width).astype(np.uint16)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TcpMicroscope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, params: JsonObject, model: type[M], timeout_s: float | None = None) -> M:
        result = self.client.call(method, params, timeout_s=timeout_s)
        try:
            return model.model_validate(result)
        except ValidationError as error:
            self.client.disconnect()
            raise MalformedReply(f"{method}: reply {messages.describe(error)}") from None
