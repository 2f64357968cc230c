"""The twin on TCP: protocol v1 (docs/protocol.md) plus the twin.* methods tests and benchmarks use.

The protocol core (temalign.protocol.server) handles framing, hello, the token and the params of
the v1 methods; this module maps each method to the `Twin` and turns its transport faults into
intercepts of the fault-injecting server (faulty_server). The twin.* handlers validate their own params."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from temalign.protocol.errors import Busy, InvalidParams, RemoteError, remote_error
from temalign.protocol.messages import encode_frame
from temalign.protocol.server import Handler
from temalign.values import JsonObject
from temalign_twin.faults import Fault
from temalign_twin.faulty_server import FaultInjectingServer, Intercept
from temalign_twin.model import Twin, TwinError

SERVER_NAME = "temalign-twin"
TWIN_METHODS = ("twin.truth", "twin.advance", "twin.fault", "twin.clear_faults", "twin.configure",
                "twin.viewer")
CAPABILITIES = ("twin", *TWIN_METHODS)

T = TypeVar("T")


def _params(params: object, method: str, allowed: set[str],
            required: frozenset[str] | set[str] = frozenset()) -> JsonObject:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParams(f"{method}: params must be an object, got {type(params).__name__}")
    extra = set(params) - allowed
    if extra:
        raise InvalidParams(f"{method}: unknown params {sorted(extra)} (takes: {sorted(allowed) or 'none'})")
    missing = required - set(params)
    if missing:
        raise InvalidParams(f"{method}: missing params {sorted(missing)}")
    return params


def _twin_call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except TwinError as error:
        raise InvalidParams(str(error)) from error


class TwinServer:
    """A `Twin` served over TCP: `start()` in a background thread, `address`, `close()`."""

    def __init__(self, twin: Twin, *, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None) -> None:
        self.twin = twin
        self._server = FaultInjectingServer(self.methods(), server_name=SERVER_NAME, limits=twin.limits,
                                            capabilities=CAPABILITIES, token=token,
                                            interceptor=self._intercept, host=host, port=port)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def start(self) -> TwinServer:
        self._server.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> TwinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def methods(self) -> dict[str, Handler]:
        """Handler per method name (hello is the core's)."""
        twin = self.twin

        def aperture_get(p: JsonObject) -> dict[str, int]:
            x, y = twin.aperture()
            return {"x": x, "y": y}

        def aperture_move(p: JsonObject) -> dict[str, int]:
            x, y = twin.move_aperture(p["x"], p["y"])
            return {"x": x, "y": y}

        def lens_get(p: JsonObject) -> dict[str, float]:
            return {"value": twin.c1()}

        def lens_set(p: JsonObject) -> dict[str, float]:
            return {"value": twin.set_c1(p["value"])}

        def acquire(p: JsonObject) -> JsonObject:
            return encode_frame(twin.acquire(p.get("exposure_s")))

        def truth(p: JsonObject) -> JsonObject:
            _params(p, "twin.truth", set())
            return twin.truth()

        def advance(p: JsonObject) -> dict[str, float]:
            p = _params(p, "twin.advance", {"seconds"}, {"seconds"})
            return {"time": _twin_call(lambda: twin.advance(p["seconds"]))}

        def fault(p: JsonObject) -> JsonObject:
            p = _params(p, "twin.fault", {"kind", "count", "methods", "seconds", "units", "code"}, {"kind"})
            args = {k: v for k, v in p.items() if k != "kind"}
            return _twin_call(lambda: twin.inject(p["kind"], **args))

        def clear_faults(p: JsonObject) -> dict[str, int]:
            _params(p, "twin.clear_faults", set())
            return {"cleared": twin.clear_faults()}

        def configure(p: JsonObject) -> JsonObject:
            p = _params(p, "twin.configure", {"overrides"}, {"overrides"})
            return {"settings": _twin_call(lambda: twin.configure(p["overrides"])).model_dump(mode="json")}

        def viewer(p: JsonObject) -> dict[str, int]:
            _params(p, "twin.viewer", set())
            region = twin.viewer_region
            if region is None:
                raise Busy("no live-view window is showing: start the twin with --viewer "
                           "(or wait: it may still be opening)")
            left, top, width, height = region
            return {"left": int(left), "top": int(top), "width": int(width), "height": int(height)}

        return {
            "aperture.get": aperture_get,
            "aperture.move": aperture_move,
            "lens.get": lens_get,
            "lens.set": lens_set,
            "camera.acquire": acquire,
            "twin.truth": truth,
            "twin.advance": advance,
            "twin.fault": fault,
            "twin.clear_faults": clear_faults,
            "twin.configure": configure,
            "twin.viewer": viewer,
        }

    def _intercept(self, method: str, params: JsonObject) -> Intercept | None:
        fault = self.twin.take_transport_fault(method)
        return None if fault is None else self._as_intercept(fault, method)

    def _as_intercept(self, fault: Fault, method: str) -> Intercept:
        if fault.kind == "drop":
            return Intercept("drop")
        if fault.kind == "slow":
            return Intercept("delay", seconds=self.twin.wall_seconds(fault.seconds))
        if fault.kind == "silence":
            return Intercept("silence")
        if fault.kind == "malformed":
            return Intercept("garbage")
        error: RemoteError = remote_error(fault.code, f"{method}: injected fault (code {fault.code})")
        return Intercept("error", error=error)
