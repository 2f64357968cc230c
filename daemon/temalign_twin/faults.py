"""Injectable faults: what each kind takes, and the board of the active ones.

Transport faults act on the protocol's exchange (the server's interceptor asks `take_transport`
for every v1 request but hello); hardware faults change what the column does while its replies
look normal. Each fault has a `count` of calls it affects (None: until cleared)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from temalign.values import JsonObject, finite_float

TRANSPORT_KINDS = ("drop", "slow", "silence", "malformed", "error")
HARDWARE_KINDS = ("blank", "stuck", "overshoot", "lens_ignore", "jump")
KINDS = TRANSPORT_KINDS + HARDWARE_KINDS
FAULTABLE_METHODS = ("aperture.get", "aperture.move", "lens.get", "lens.set", "camera.acquire")
"""The v1 methods transport faults apply to (hello is the server core's, twin.* never fail)."""

DEFAULT_SLOW_S = 5.0
DEFAULT_OVERSHOOT_UNITS = 10.0
DEFAULT_ERROR_CODE = 1003


class FaultError(ValueError):
    """A fault request that cannot be honoured; the message says which parameter and why."""


@dataclass(frozen=True)
class Fault:
    """One active fault. `seconds` (slow) is twin time; `units` is a pair (overshoot along the
    motion per axis, jump as dx, dy); `code` is the error reply's code."""

    kind: str
    count: int | None = None
    methods: frozenset[str] | None = None
    seconds: float = 0.0
    units: tuple[float, float] = (0.0, 0.0)
    code: int = DEFAULT_ERROR_CODE
    ident: int = field(default=0, compare=False)

    def to_json(self) -> JsonObject:
        out: JsonObject = {"id": self.ident, "kind": self.kind, "remaining": self.count}
        if self.methods is not None:
            out["methods"] = sorted(self.methods)
        if self.kind == "slow":
            out["seconds"] = self.seconds
        if self.kind in ("overshoot", "jump"):
            out["units"] = list(self.units)
        if self.kind == "error":
            out["code"] = self.code
        return out


_PARAMS = {
    "drop": {"count", "methods"},
    "slow": {"count", "methods", "seconds"},
    "silence": {"count", "methods"},
    "malformed": {"count", "methods"},
    "error": {"count", "methods", "code"},
    "blank": {"count"},
    "stuck": {"count"},
    "overshoot": {"count", "units"},
    "lens_ignore": {"count"},
    "jump": {"units"},
}


def _number(name: str, value: object) -> float:
    number = finite_float(value)
    if number is None:
        raise FaultError(f"{name} must be a finite number, got {value!r}")
    return number


def _pair(name: str, value: object) -> tuple[float, float]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return (_number(name, value[0]), _number(name, value[1]))
    raise FaultError(f"{name} must be a pair [dx, dy], got {value!r}")


def parse_fault(kind: object, **params: object) -> Fault:
    """Validate a fault request (as `twin.fault` receives it); None values count as absent."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
    given = {k: v for k, v in params.items() if v is not None}
    extra = set(given) - _PARAMS[kind]
    if extra:
        allowed = ", ".join(sorted(_PARAMS[kind])) or "none"
        raise FaultError(f"fault {kind!r} takes no {', '.join(sorted(extra))} (it takes: {allowed})")
    count = given.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise FaultError(f"count must be an integer >= 1 (or absent: until cleared), got {count!r}")
    methods = given.get("methods")
    if methods is not None:
        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, list | tuple | set | frozenset) or not methods:
            raise FaultError(f"methods must be a non-empty list of method names, got {methods!r}")
        unknown = [m for m in methods if m not in FAULTABLE_METHODS]
        if unknown:
            raise FaultError(f"transport faults apply to {', '.join(FAULTABLE_METHODS)}; not to {unknown}")
        methods = frozenset(methods)
    fault = Fault(kind=kind, count=count, methods=methods)
    if kind == "slow":
        seconds = _number("seconds", given.get("seconds", DEFAULT_SLOW_S))
        if not 0 < seconds <= 3600:
            raise FaultError(f"seconds must be in (0, 3600], got {seconds}")
        fault = Fault(kind, count, methods, seconds=seconds)
    elif kind == "error":
        code = given.get("code", DEFAULT_ERROR_CODE)
        if isinstance(code, bool) or not isinstance(code, int) or not -(2**31) <= code < 2**31:
            raise FaultError(f"code must be an integer error code, got {code!r}")
        fault = Fault(kind, count, methods, code=code)
    elif kind == "overshoot":
        units = given.get("units", DEFAULT_OVERSHOOT_UNITS)
        pair = _pair("units", units) if isinstance(units, list | tuple) else (_number("units", units),) * 2
        fault = Fault(kind, count, units=pair)
    elif kind == "jump":
        if "units" not in given:
            raise FaultError("fault 'jump' needs units: [dx, dy] (motor units)")
        fault = Fault(kind, units=_pair("units", given["units"]))
    return fault


class FaultBoard:
    """The active faults; consuming one use is atomic, so concurrent calls never double-count."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next = 1
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault = Fault(fault.kind, fault.count, fault.methods, fault.seconds, fault.units, fault.code,
                          ident=self._next)
            self._next += 1
            self._faults.append(fault)
            return fault

    def clear(self) -> int:
        with self._lock:
            n = len(self._faults)
            self._faults.clear()
            return n

    def _use(self, index: int) -> Fault:
        fault = self._faults[index]
        if fault.count is None:
            return fault
        if fault.count <= 1:
            del self._faults[index]
        else:
            self._faults[index] = Fault(fault.kind, fault.count - 1, fault.methods, fault.seconds,
                                        fault.units, fault.code, ident=fault.ident)
        return fault

    def take_transport(self, method: str) -> Fault | None:
        """The oldest transport fault matching `method`, one use consumed; None if none."""
        if method not in FAULTABLE_METHODS:
            return None
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.kind in TRANSPORT_KINDS and (fault.methods is None or method in fault.methods):
                    return self._use(i)
        return None

    def take(self, kind: str) -> Fault | None:
        """The oldest active fault of a hardware `kind`, one use consumed; None if none."""
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.kind == kind:
                    return self._use(i)
        return None

    def peek(self, kind: str) -> Fault | None:
        """The oldest active fault of `kind`, nothing consumed."""
        with self._lock:
            return next((f for f in self._faults if f.kind == kind), None)

    def snapshot(self) -> list[JsonObject]:
        with self._lock:
            return [f.to_json() for f in self._faults]
