"""Bad input, hypothesis-driven (issue 5, item 5): whatever a microscope server replies, whatever
images reach the estimators and whatever a config file holds, the answer is a clear error or a
refusal, never another exception, and never a move on a bad reading.

The fake microscope is a raw TCP server in this process: a twin stands behind it so that a clean
exchange is a real column (cycles do correct), and a script drawn by hypothesis replaces chosen
replies with garbage, wrong types, wrong ids, huge numbers, NaN, bad frames or a closed connection.
It records every request, so the tests judge what the daemon sent, not only what it returned."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import math
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from temalign.clock import SteppedClock
from temalign.config.loader import parse_config
from temalign.config.schema import QualitySettings, Settings
from temalign.errors import ConfigError, TemalignError
from temalign.estimate.calibration import nominal_calibration
from temalign.estimate.classical import ClassicalEstimate, classical_estimate
from temalign.estimate.combined import CombinedEstimator, Measurement
from temalign.estimate.model_estimator import ModelError, ModelEstimator
from temalign.estimate.quality import StackQuality, assess_stack
from temalign.frames import WobbleStack
from temalign.microscope import HARDWARE_RANGE, Position
from temalign.optics import wobble_values
from temalign.protocol.errors import ProtocolError
from temalign.protocol.messages import encode_frame
from temalign.protocol.tcp_microscope import TcpMicroscope
from temalign.record.journal import Journal
from temalign.record.result import OUTCOMES as CYCLE_OUTCOMES
from temalign.record.result import CycleResult
from temalign.record.state import StateStore
from temalign.service.cycle import Parts, run_cycle
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import CameraSource
from temalign_twin.model import Twin
from temalign_twin.settings import TwinSettings

SHIPPED = Path(__file__).resolve().parents[1] / "daemon" / "temalign" / "models" / "wobble_physics.tflite"
QUIET = {"drift": {"linear_per_hour": (0, 0), "random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0,
                   "beam_shift_linear_per_hour": (0, 0), "beam_shift_random_walk_per_sqrt_hour": 0}}
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- the fake microscope -------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
NOT_INT = (st.text(max_size=8) | st.none() | st.booleans() | st.lists(st.integers(), max_size=2)
           | st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not float(v).is_integer())
           | st.integers(HARDWARE_RANGE[1] + 1, 2**80) | st.integers(-(2**80), HARDWARE_RANGE[0] - 1))
NOT_NUMBER = (st.text(max_size=8) | st.none() | st.booleans() | st.lists(st.integers(), max_size=2)
              | st.just({}))
NOT_ANYTHING = st.none() | st.just({}) | st.just([[]]) | st.just([{}])
"""Invalid for every field of every result (no field takes null, an empty object or a nested list)."""
INT_FIELDS = ("x", "y", "width", "height", "protocol")
RAW_NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "nan", "0x10", "1.", ".5",
                               "01", "+1", "1e", "--1"])


@dataclass(frozen=True)
class Bad:
    """How one reply goes wrong; `arg` as the kind needs it."""

    kind: str
    arg: Any = None


BAD_REPLIES = st.one_of(
    st.builds(Bad, st.just("bytes"), st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b)),
    st.builds(Bad, st.just("json"), JSON_VALUES),
    st.builds(Bad, st.just("result"), JSON_VALUES.filter(lambda v: not isinstance(v, dict))),
    st.builds(Bad, st.just("field"), st.tuples(st.integers(0, 3), NOT_INT, NOT_ANYTHING)),
    st.builds(Bad, st.just("raw-number"), RAW_NUMBERS),
    st.builds(Bad, st.just("id"), st.integers(-5, 10**6) | st.text(max_size=4) | st.none() | st.floats()
              | st.booleans()),
    st.builds(Bad, st.just("frame"), st.tuples(st.integers(-3, 20000), st.integers(-3, 20000),
                                               st.integers(0, 300)).filter(lambda a: a[2] != 2 * a[0] * a[1])
              ),
    st.builds(Bad, st.just("error"), st.tuples(st.integers(-40000, 40000) | NOT_NUMBER, JSON_VALUES)),
    st.builds(Bad, st.just("image"), st.sampled_from(["zero", "saturated"])),
    st.just(Bad("close")),
    st.just(Bad("partial")),
    st.just(Bad("both")),
)


class _Partial(Exception):
    """Send these bytes (a reply cut short, no newline), then close."""


@dataclass
class Received:
    """One request as the fake server read it, and whether its reply was a bad one."""

    index: int
    method: str
    params: dict[str, Any]
    bad: Bad | None


@dataclass
class FakeMicroscope:
    """A raw TCP server answering each request from `twin`, or badly where `script` says so (keyed by
    the request's index over all connections). `received` is what the client sent."""

    twin: Twin
    script: dict[int, Bad]
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as lines:
            for line in lines:
                request = json.loads(line)
                with self._lock:
                    index = len(self.received)
                    bad = self.script.get(index)
                    self.received.append(Received(index, request["method"], request.get("params", {}), bad))
                try:
                    reply = self._reply(request, bad)
                except _Partial as partial:
                    conn.sendall(partial.args[0])
                    return
                if reply is None:
                    return
                conn.sendall(reply)

    def _good(self, method: str, params: dict[str, Any]) -> Any:
        twin = self.twin
        if method == "hello":
            return {"protocol": 1, "server": "fake", "capabilities": [], "limits": twin.limits()}
        if method == "aperture.get":
            x, y = twin.aperture()
            return {"x": x, "y": y}
        if method == "aperture.move":
            x, y = twin.move_aperture(params["x"], params["y"])
            return {"x": x, "y": y}
        if method == "lens.get":
            return {"value": twin.c1()}
        if method == "lens.set":
            return {"value": twin.set_c1(params["value"])}
        if method == "camera.acquire":
            return encode_frame(twin.acquire(params.get("exposure_s")))
        raise AssertionError(f"the daemon sent an unknown method {method!r}")

    def _reply(self, request: dict[str, Any], bad: Bad | None) -> bytes | None:
        """The reply line; None closes the connection."""
        rid, method = request["id"], request["method"]
        result = self._good(method, request.get("params", {}))
        if bad is None:
            return _line({"jsonrpc": "2.0", "id": rid, "result": result})
        kind, arg = bad.kind, bad.arg
        if kind == "bytes":
            return arg + b"\n"
        if kind == "json":
            return _line(arg)
        if kind == "result":
            return _line({"jsonrpc": "2.0", "id": rid, "result": arg})
        if kind == "field":
            key = sorted(result)[arg[0] % len(result)]
            value = arg[1] if key in INT_FIELDS else arg[2]
            return _line({"jsonrpc": "2.0", "id": rid, "result": {**result, key: value}})
        if kind == "raw-number":
            key = {"hello": "protocol", "camera.acquire": "width"}.get(
                method, "value" if "lens" in method else "x")
            text = json.dumps({**result, key: "@@"}).replace('"@@"', arg)
            return f'{{"jsonrpc": "2.0", "id": {rid}, "result": {text}}}\n'.encode()
        if kind == "id":
            other = arg + 1 if type(arg) is int and arg == rid else arg
            return _line({"jsonrpc": "2.0", "id": other, "result": result})
        if kind == "frame":
            width, height, nbytes = arg
            data = base64.b64encode(bytes(nbytes)).decode()
            return _line({"jsonrpc": "2.0", "id": rid, "result": {"width": width, "height": height,
                                                                   "dtype": "uint16", "data": data}})
        if kind == "error":
            error = {"code": arg[0], "message": "no", "data": arg[1]}
            return _line({"jsonrpc": "2.0", "id": rid, "error": error})
        if kind == "image":
            if method != "camera.acquire":
                return _line({"jsonrpc": "2.0", "id": rid, "error": {"code": 1003, "message": "fault"}})
            value = 0 if arg == "zero" else 65535
            frame = np.full((result["height"], result["width"]), value, dtype=np.uint16)
            return _line({"jsonrpc": "2.0", "id": rid, "result": encode_frame(frame)})
        if kind == "partial":
            raise _Partial(_line({"jsonrpc": "2.0", "id": rid, "result": result})[:-5])
        if kind == "both":
            error = {"code": 1, "message": "x"}
            return _line({"jsonrpc": "2.0", "id": rid, "result": result, "error": error})
        return None  # close


def _line(value: Any) -> bytes:
    return json.dumps(value).encode() + b"\n"


@contextlib.contextmanager
def fake_microscope(script: dict[int, Bad], *, camera: int = 64, offset: tuple[int, int] = (0, 0)
                    ) -> Iterator[tuple[FakeMicroscope, TcpMicroscope, SteppedClock]]:
    """A twin (`camera` px, no drift, the aperture `offset` units off), its fake server, a client."""
    clock = SteppedClock()
    twin_settings = TwinSettings().updated({**QUIET, "camera": {"width": camera, "height": camera}})
    twin = Twin(twin_settings, clock, seed=2)
    aligned = twin.aligned()
    twin.move_aperture(round(aligned[0] + offset[0]), round(aligned[1] + offset[1]))
    server = FakeMicroscope(twin, script)
    client = TcpMicroscope(server.address, call_timeout_s=5.0, connect_timeout_s=5.0, acquire_timeout_s=5.0,
                           client_name="bad-input-test")
    try:
        yield server, client, clock
    finally:
        client.close()
        server.close()


SCRIPTS = st.dictionaries(st.integers(0, 40), BAD_REPLIES, max_size=6)
CALLS = st.lists(st.sampled_from(["aperture", "c1", "set_c1", "acquire", "move", "limits"]), min_size=1,
                 max_size=12)


@settings(FUZZ, max_examples=60)
@given(SCRIPTS, CALLS)
def test_a_hostile_server_gives_valid_values_or_a_protocol_error(script: dict[int, Bad], calls: list[str]
                                                                 ) -> None:
    """Each call returns a checked value or raises ProtocolError; a move is never sent outside the
    limits of the connection's hello."""
    with fake_microscope(script) as (server, microscope, _):
        for call in calls:
            try:
                if call == "aperture":
                    p = microscope.aperture()
                    lo, hi = HARDWARE_RANGE
                    assert all(type(v) is int and lo <= v <= hi for v in (p.x, p.y))
                elif call == "c1":
                    assert math.isfinite(microscope.c1())
                elif call == "set_c1":
                    assert math.isfinite(microscope.set_c1(server.twin.c1()))
                elif call == "acquire":
                    frame = microscope.acquire(0.1)
                    assert frame.dtype == np.uint16 and frame.shape == (64, 64)
                elif call == "move":
                    x, y = server.twin.aperture()
                    microscope.move_aperture(Position(x + 5, y - 5))
                else:
                    limits = microscope.limits
                    assert limits.aperture_x[0] <= limits.aperture_x[1]
            except ProtocolError as error:
                assert str(error)
                event(type(error).__name__)
    lo_x, hi_x = server.twin.settings.motor.limits_x
    lo_y, hi_y = server.twin.settings.motor.limits_y
    for r in server.received:
        if r.method == "aperture.move":
            assert lo_x <= r.params["x"] <= hi_x and lo_y <= r.params["y"] <= hi_y, r


@functools.cache
def shipped_model() -> ModelEstimator:
    return ModelEstimator(SHIPPED)


@contextlib.contextmanager
def cycle_parts(microscope: TcpMicroscope, clock: SteppedClock) -> Iterator[Parts]:
    """The daemon's parts on `microscope`: live, the shipped model, the nominal calibration."""
    state_dir = Path(tempfile.mkdtemp(prefix="ta-bad-"))
    s = Settings.model_validate({"microscope": {"address": "127.0.0.1:1"},
                                 "paths": {"state_dir": str(state_dir)},
                                 "control": {"socket": str(state_dir / "c.sock")},
                                 "metrics": {"enabled": False}, "schedule": {"mode": "live"}})
    journal = Journal(state_dir, clock=clock)
    try:
        estimator = CombinedEstimator(shipped_model(), nominal_calibration(), s.estimator, s.quality)
        yield Parts(microscope=microscope, source=CameraSource(microscope, 0.1, clock), estimator=estimator,
                    settings=s, clock=clock, memory=C1Memory(state_dir), journal=journal,
                    state=StateStore(state_dir), session_start=None)
    finally:
        journal.close()
        shutil.rmtree(state_dir, ignore_errors=True)


def check_moves(received: list[Received], result: CycleResult) -> None:
    """No move on a bad reading: before the first move, a bad reply may only have come after the
    wobble's last frame, in putting C1 back (retried and read back); every later move is a rollback
    to where the cycle found the aperture."""
    moves = [r for r in received if r.method == "aperture.move"]
    if not moves:
        return
    first = moves[0]
    last_frame = max((r.index for r in received[: first.index] if r.method == "camera.acquire"), default=-1)
    for r in received[: first.index]:
        if r.bad is not None:
            assert r.index > last_frame and r.method in ("lens.set", "lens.get", "hello"), (
                f"{first} sent after the bad reply to {r}: {result.outcome} {result.detail}")
    for rollback in moves[1:]:
        assert (rollback.params["x"], rollback.params["y"]) == result.position_before, (rollback, result)


@settings(FUZZ, max_examples=30)
@given(st.dictionaries(st.integers(0, 60), BAD_REPLIES, max_size=3))
def test_a_cycle_on_a_hostile_server_never_raises_and_never_moves_on_a_bad_reading(script: dict[int, Bad]
                                                                                   ) -> None:
    """A whole cycle with some replies gone bad (in the first wobble, the move, the verification or
    the rollback): an outcome, never an exception, and no move on what a bad reply said."""
    with fake_microscope(script, camera=256, offset=(110, -70)) as (server, microscope, clock), \
            cycle_parts(microscope, clock) as parts:
        result = run_cycle(parts)
        assert isinstance(result, CycleResult) and result.outcome in CYCLE_OUTCOMES, result
        check_moves(server.received, result)
        event(f"outcome {result.outcome}")


def test_the_fake_server_lets_a_clean_cycle_correct() -> None:
    """Without bad replies the cycle moves: the move property above is not vacuous."""
    with fake_microscope({}, camera=256, offset=(110, -70)) as (server, microscope, clock), \
            cycle_parts(microscope, clock) as parts:
        result = run_cycle(parts)
    assert result.outcome == "corrected", (result.outcome, result.detail)
    assert [r.method for r in server.received].count("aperture.move") == 1


# ---- images into the estimators -------------------------------------------------------------------


@functools.cache
def twin_stack() -> np.ndarray:
    """A real 256 px wobble stack of the default twin 120 units off (float32, as the source gives)."""
    twin = Twin(TwinSettings().updated(QUIET), SteppedClock(), 3)
    a = twin.aligned()
    twin.move_aperture(round(a[0] + 120), round(a[1] - 60))
    frames = []
    for c in wobble_values(twin.settings.lens.start_over_cf * twin.settings.optics.c_f, 0.03):
        twin.set_c1(float(c))
        twin.clock.advance(2.0)
        frames.append(twin.acquire())
    return np.stack(frames).astype(np.float32)


DTYPES = st.sampled_from([np.uint16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_,
                          np.complex64, np.float16, object])
SHAPES = st.sampled_from([(7, 64, 64), (7, 256, 256), (7, 1, 64), (7, 64, 1), (7, 1, 1), (7, 3, 3),
                          (7, 4, 300), (1, 7 * 64), (6, 64, 64), (8, 32, 32), (64, 64), (7, 32, 32, 1), (7,),
                          (), (0, 5, 5), (7, 0, 0), (7, 1, 2000)])
FILLS = st.sampled_from(["zero", "saturated", "nan", "inf", "-inf", "huge", "tiny", "negative", "noise",
                         "one-pixel", "constant"])
CORRUPTIONS = st.sampled_from(["nan-pixel", "inf-pixel", "zero-frame", "saturate-frame", "huge-scale",
                               "negative", "drop-frame", "transpose", "float16", "int8", "swap-frames",
                               "tiny-scale", "nan-frame", "crop-1xN"])


def _fill(shape: tuple[int, ...], dtype: Any, fill: str, rng: np.random.Generator) -> np.ndarray:
    values = {"zero": 0.0, "saturated": 65535.0, "nan": math.nan, "inf": math.inf, "-inf": -math.inf,
              "huge": 1e38, "tiny": 1e-38, "negative": -1000.0, "constant": 777.0}
    if fill == "noise":
        data = rng.uniform(0, 65535, size=shape)
    elif fill == "one-pixel":
        data = np.zeros(shape)
        if data.size:
            data.flat[rng.integers(data.size)] = 65535.0
    else:
        data = np.full(shape, values[fill])
    with np.errstate(all="ignore"):
        return data.astype(dtype)


def _corrupt(stack: np.ndarray, how: str, k: int) -> np.ndarray:
    s = stack.copy()
    with np.errstate(all="ignore"):
        if how == "nan-pixel":
            s[k, 100, 100] = np.nan
        elif how == "inf-pixel":
            s[k, 0, 0] = np.inf
        elif how == "nan-frame":
            s[k] = np.nan
        elif how == "zero-frame":
            s[k] = 0
        elif how == "saturate-frame":
            s[k] = 65535
        elif how == "huge-scale":
            s = s * np.float32(1e30)
        elif how == "tiny-scale":
            s = s * np.float32(1e-30)
        elif how == "negative":
            s = -s
        elif how == "drop-frame":
            s = np.delete(s, k, axis=0)
        elif how == "transpose":
            s = np.transpose(s, (1, 2, 0))
        elif how == "float16":
            s = s.astype(np.float16)
        elif how == "int8":
            s = s.astype(np.int8)
        elif how == "swap-frames":
            s = s[::-1].copy()
            s[k] = 0
        elif how == "crop-1xN":
            s = s[:, 128:129, :]
    return s


IMAGES = st.one_of(
    st.builds(lambda shape, dtype, fill, seed: _fill(shape, dtype, fill, np.random.default_rng(seed)),
              SHAPES, DTYPES, FILLS, st.integers(0, 2**16)),
    st.builds(lambda how, k: _corrupt(twin_stack(), how, k), CORRUPTIONS, st.integers(0, 6)),
)


def _stack(images: np.ndarray, kind: str = "raw") -> WobbleStack:
    twin = TwinSettings()
    c1 = twin.lens.start_over_cf * twin.optics.c_f
    values = tuple(float(v) for v in wobble_values(c1, 0.03))
    return WobbleStack(images=images, c1_values=values, times=tuple(range(7)), c1_before=c1,
                       wobble_fraction=0.03, source="test", kind=kind)  # type: ignore[arg-type]


def _finite_pair(v: tuple[float, float] | None) -> bool:
    return v is not None and all(math.isfinite(x) for x in v)


@settings(FUZZ, max_examples=150)
@given(IMAGES, st.sampled_from(["raw", "display"]))
def test_bad_images_are_refused_by_each_estimator(images: np.ndarray, kind: str) -> None:
    """A ValueError/ModelError from the model, a doubtful quality, a classical failure: never another
    exception; a combined measurement on such a stack is never trusted with a non-finite delta."""
    stack = _stack(images, kind)
    try:
        estimate = shipped_model().predict(images)
    except (ValueError, ModelError) as error:
        assert str(error)
    else:
        assert _finite_pair(estimate.delta), f"the model returned {estimate.delta} for a {images.dtype} " \
                                             f"{images.shape} stack instead of refusing it"

    quality = assess_stack(stack, QualitySettings())
    assert isinstance(quality, StackQuality)
    if quality.ok:
        assert images.ndim == 3 and images.shape[0] == 7 and np.isfinite(images).all() and np.any(images)
    else:
        assert quality.reasons and all(quality.reasons)

    try:
        classical = classical_estimate(stack, nominal_calibration(), quality.frame_usable,
                                       quality.spots or None)
    except (ValueError, TemalignError) as error:
        assert str(error)
    else:
        assert isinstance(classical, ClassicalEstimate)
        assert classical.delta is None or _finite_pair(classical.delta)

    for calibration in (nominal_calibration(), None):
        s = Settings.model_validate({"microscope": {"address": "127.0.0.1:1"}})
        m = CombinedEstimator(shipped_model(), calibration, s.estimator, s.quality).measure(stack)
        assert isinstance(m, Measurement)
        if m.trusted:
            assert quality.ok and _finite_pair(m.delta), m
        assert not (m.trusted and not np.isfinite(images).all()), m


def test_classical_estimate_refuses_an_object_array() -> None:
    images = np.zeros((7, 64, 64), dtype=object)
    result = classical_estimate(_stack(images), nominal_calibration())
    assert result.delta is None and result.reason


def test_the_real_stack_is_trusted() -> None:
    """The image property is not vacuous: the uncorrupted stack gives a trusted estimate."""
    s = Settings.model_validate({"microscope": {"address": "127.0.0.1:1"}})
    m = CombinedEstimator(shipped_model(), nominal_calibration(), s.estimator, s.quality).measure(
        _stack(twin_stack()))
    assert m.trusted and m.reason == "agree", m


# ---- config sections beyond tests/test_config.py's fuzzing ----------------------------------------

SECTIONS = ("estimator", "quality", "safety", "schedule", "metrics", "control", "journal")
SECTION_KEYS = {name: sorted(Settings.model_fields[name].annotation.model_fields)  # type: ignore[union-attr]
                for name in SECTIONS}
YAML_SCALARS = st.sampled_from([
    ".nan", ".NaN", ".inf", "-.inf", "1e400", "-1e400", "0", "-0.0", "-1", "1e-320",
    "100000000000000000000000", "yes", "no", "on", "off", "null", "~", "''", "[]", "{}", "[1, 2]", "{a: 1}",
    "2024-01-01", "!!binary aGk=", "0x1F", "0o17", "1_000", "9.999", "10", "86400", "86400.0001", "16",
    "65535", "65536", "0.5", "1.0", "3600",
    "17179869184", "17179869185", "65536", "'9641'", "127.0.0.1", "/tmp/x.sock", "relative.sock", "model",
    "classical", "combined", "adaptive", "true", "'true'", "!!float 1", "!!int '7'", "!!str 5", "*a", "&a 5",
    "!!python/object:os.system x", "!custom 1", "? complex key", "'\\x00'", "\"\\0\"", "1e308", "1e-5",
])
YAML_NUMBERS = (st.integers(-(10**12), 10**12).map(str)
                | st.floats(allow_nan=False, allow_infinity=False).map(repr))
KEYS = st.sampled_from(sorted({k for keys in SECTION_KEYS.values() for k in keys})) | st.from_regex(
    r"\A[a-z_]{1,10}\Z")
"""Keys of any section (a key in the wrong section), or made up (a typo)."""


DEFAULTS = Settings.model_validate({"microscope": {"address": "127.0.0.1:7801"}}).model_dump(mode="json")


@st.composite
def config_documents(draw: st.DrawFn) -> tuple[str, dict[str, list[str]]]:
    """A YAML document of some new sections: keys of the section (now and then a made-up one), each
    at its default or, one time in five, a random value; the keys written."""
    lines = ["microscope: {address: '127.0.0.1:7801'}"]
    written: dict[str, list[str]] = {}
    for section in draw(st.lists(st.sampled_from(SECTIONS), min_size=1, max_size=3, unique=True)):
        if draw(st.integers(0, 19)) == 0:
            lines.append(f"{section}: {draw(YAML_SCALARS | YAML_NUMBERS)}")
            written[section] = []
            continue
        keys: list[str] = []
        for _ in range(draw(st.integers(1, 5))):
            key = draw(st.sampled_from(SECTION_KEYS[section]) if draw(st.integers(0, 7)) else KEYS)
            if key not in keys:
                keys.append(key)
        lines.append(f"{section}:")
        for key in keys:
            default = DEFAULTS[section].get(key)
            if key in DEFAULTS[section] and draw(st.integers(0, 4)):
                value = json.dumps(default)
            else:
                value = draw(YAML_SCALARS | YAML_NUMBERS)
            lines.append(f"  {key}: {value}")
        written[section] = keys
    return "\n".join(lines) + "\n", written


SOURCE = "/nonexistent-temalign/bad-input.yaml"


def _floats(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _floats(v)


@settings(FUZZ, max_examples=200)
@given(config_documents())
def test_random_new_sections_give_settings_or_a_config_error_naming_the_key(
        document: tuple[str, dict[str, list[str]]]) -> None:
    text, written = document
    try:
        loaded = parse_config(text.encode(), SOURCE)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(f"{SOURCE}: ") and "Traceback" not in message, message
        named = [f"{section}.{key}" for section, keys in written.items() for key in keys] + [
            section for section, keys in written.items() if not keys] + ["line "]
        assert any(n in message for n in named), f"{message!r} names none of {named}\n{text}"
        event("ConfigError, YAML" if "line " in message.splitlines()[0] else "ConfigError, a key")
    else:
        dumped = loaded.model_dump(mode="python")
        for section in SECTIONS:
            bad = [v for v in _floats(dumped[section]) if not math.isfinite(v)]
            assert not bad, f"{section} accepted a non-finite value {bad}:\n{text}"
        event("Settings")
        sch = loaded.schedule
        assert sch.jitter_s < sch.interval_s / 2


@pytest.mark.parametrize("text", [
    "microscope: {address: 'a:1'}\nschedule: {interval_s: .nan}\n",
    "microscope: {address: 'a:1'}\nsafety: {gain: .inf}\n",
    "microscope: {address: 'a:1'}\njournal: {max_bytes: 1e400}\n",
])
def test_non_finite_numbers_in_new_sections_are_named(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text.encode(), SOURCE)
    key = text.split("\n")[1].split(":")[0] + "." + text.split("{")[2].split(":")[0]
    assert key in str(caught.value), str(caught.value)
