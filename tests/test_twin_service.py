"""The twin over TCP: protocol v1 and twin.* methods, transport faults, the CLI and the outside
conformance check (../shared/conformance/twin-geometry)."""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("temalign.protocol.server", reason="protocol/server.py (the protocol core) is not there")

from temalign.clock import SteppedClock
from temalign.estimate.spots import measure_spot
from temalign_twin.model import Twin
from temalign_twin.service import TwinServer
from temalign_twin.settings import TwinSettings

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance" / "twin-geometry"


class Raw:
    """A bare NDJSON JSON-RPC client, so these tests see exactly what goes over the wire."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rwb")
        self.n = 0

    def send(self, method: str, params: dict | None = None) -> bytes:
        self.n += 1
        line = {"jsonrpc": "2.0", "id": self.n, "method": method, "params": params or {}}
        self.file.write((json.dumps(line) + "\n").encode())
        self.file.flush()
        return self.file.readline()

    def reply(self, method: str, params: dict | None = None) -> dict:
        line = self.send(method, params)
        assert line, f"{method}: connection closed"
        reply = json.loads(line)
        assert reply["id"] == self.n
        return reply

    def call(self, method: str, **params):
        reply = self.reply(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, method: str, **params) -> dict:
        reply = self.reply(method, params)
        assert "error" in reply, reply
        return reply["error"]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served() -> Iterator[tuple[Twin, TwinServer]]:
    twin = Twin(TwinSettings(), SteppedClock(), seed=1)
    with TwinServer(twin) as server:
        yield twin, server


@pytest.fixture
def client(served) -> Iterator[Raw]:
    raw = Raw(served[1].address)
    raw.call("hello", client="test")
    yield raw
    raw.close()


def test_round_trip(served, client: Raw) -> None:
    twin, server = served
    other = Raw(server.address)
    hello = other.call("hello", client="test")
    assert hello["protocol"] == 1 and hello["server"] == "temalign-twin"
    assert "twin.truth" in hello["capabilities"]
    assert hello["limits"]["lens"]["C1"] == list(twin.settings.lens.limits)
    other.close()
    start = client.call("aperture.get", name="condenser")
    assert (start["x"], start["y"]) == twin.aperture()
    moved = client.call("aperture.move", name="condenser", x=start["x"] + 120, y=start["y"])
    assert abs(moved["x"] - start["x"] - 120) <= 2 and (moved["x"], moved["y"]) == twin.aperture()
    assert client.call("lens.set", name="C1", value=1.236) == {"value": 1.236}
    assert client.call("lens.get", name="C1") == {"value": 1.236}
    assert client.call("twin.advance", seconds=2.0)["time"] == pytest.approx(twin.clock.now())
    frame = client.call("camera.acquire", exposure_s=0.05)
    pixels = np.frombuffer(base64.b64decode(frame["data"]), "<u2").reshape(frame["height"], frame["width"])
    truth = client.call("twin.truth")
    spot = measure_spot(pixels)
    assert np.hypot(*np.subtract(spot.centre, truth["spot"]["centre"])) * 256 < 1.0
    assert truth["c1"] == 1.236 and truth["time"] == pytest.approx(twin.clock.now())


def test_errors_over_the_wire(served, client: Raw) -> None:
    twin, _ = served
    assert client.error("aperture.move", name="condenser", x=9_000_000, y=0)["code"] == -32602
    twin.configure({"motor": {"limits_x": (-5000, 5000)}})
    assert client.error("aperture.move", name="condenser", x=6000, y=0)["code"] == 1001
    assert client.error("lens.set", name="C1", value=5.0)["code"] == 1001
    assert client.error("twin.advance")["code"] == -32602
    assert "camera.width" in client.error("twin.configure", overrides={"camera": {"width": 2}})["message"]
    assert client.error("twin.fault", kind="gremlins")["code"] == -32602
    assert client.error("twin.truth", verbose=True)["code"] == -32602
    assert client.error("twin.viewer")["code"] == 1002
    twin.viewer_region = (10, 20, 512, 512)
    assert client.call("twin.viewer") == {"left": 10, "top": 20, "width": 512, "height": 512}
    settings = client.call("twin.configure", overrides={"camera": {"width": 128, "height": 96}})["settings"]
    assert settings["camera"]["width"] == 128
    assert client.call("camera.acquire")["height"] == 96


def test_transport_faults(served, client: Raw) -> None:
    address = served[1].address
    client.call("twin.fault", kind="error", count=1, methods=["aperture.get"])
    assert client.call("lens.get", name="C1")["value"] == 1.2, "other methods unaffected"
    assert client.error("aperture.get", name="condenser")["code"] == 1003
    assert client.call("aperture.get", name="condenser"), "count used up"

    client.call("twin.fault", kind="malformed", count=1)
    with pytest.raises(ValueError):
        json.loads(client.send("lens.get", {"name": "C1"}))
    fresh = Raw(address)
    fresh.call("hello", client="test")

    fresh.call("twin.fault", kind="slow", seconds=0.3, count=1)
    t0 = time.monotonic()
    fresh.call("lens.get", name="C1")
    assert time.monotonic() - t0 >= 0.25

    fresh.call("twin.fault", kind="drop", count=1)
    assert fresh.call("twin.truth")["faults"][0]["kind"] == "drop", "twin.* never faulted"
    assert fresh.send("aperture.get", {"name": "condenser"}) == b""
    fresh.close()

    quiet = Raw(address, timeout=0.5)
    quiet.call("hello", client="test")
    quiet.call("twin.fault", kind="silence", count=1)
    with pytest.raises(TimeoutError):
        quiet.send("lens.get", {"name": "C1"})
    quiet.close()
    again = Raw(address)
    again.call("hello", client="test")
    assert again.call("twin.truth")["faults"] == []
    again.call("twin.fault", kind="error", code=1002)
    assert again.error("lens.get", name="C1")["code"] == 1002
    assert again.call("twin.clear_faults") == {"cleared": 1}
    assert again.call("lens.get", name="C1")["value"] == 1.2
    again.close()


def test_token_is_required() -> None:
    twin = Twin(TwinSettings(), SteppedClock(), seed=0)
    with TwinServer(twin, token="s3cret") as server:
        raw = Raw(server.address)
        assert raw.error("aperture.get", name="condenser")["code"] == 1004
        assert raw.error("hello", client="test", token="wrong")["code"] == 1004
        raw.call("hello", client="test", token="s3cret")
        assert raw.call("aperture.get", name="condenser")["x"] == 2150
        raw.close()


def test_real_client_and_microscope(served) -> None:
    client_mod = pytest.importorskip("temalign.protocol.client", reason="protocol/client.py not there yet")
    scope_mod = pytest.importorskip("temalign.protocol.tcp_microscope", reason="tcp_microscope.py not there")
    twin, server = served
    host, port = server.address[:2]
    client = client_mod.ProtocolClient(host, port, call_timeout_s=5.0, token=None)
    try:
        assert client.call("aperture.get", {"name": "condenser"})["x"] == twin.aperture()[0]
        assert client.call("twin.truth", {})["seed"] == 1
    finally:
        client.close()
    scope = scope_mod.TcpMicroscope((host, port))
    try:
        from temalign.microscope import Position

        start = scope.aperture()
        end = scope.move_aperture(Position(start.x + 50, start.y))
        assert (end.x, end.y) == twin.aperture()
        assert scope.set_c1(1.22) == pytest.approx(1.22) and scope.c1() == pytest.approx(1.22)
        frame = scope.acquire()
        assert frame.dtype == np.uint16 and frame.shape == (256, 256)
        twin.inject("stuck", count=1)
        end2 = scope.move_aperture(Position(start.x + 300, start.y))
        assert end2.x == start.x + 300 and scope.aperture().x == end.x, "only the read-back tells"
    finally:
        scope.close()


# ---- the command line and the outside check ---------------------------------------------------


def _twin_command() -> list[str]:
    """`temalign twin` as the console script runs it."""
    return [sys.executable, "-m", "temalign", "twin"]


def _start(*args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*_twin_command(), "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("temalign-twin listening on 127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"no listening line: {line!r} {proc.communicate()[1][-2000:]}")
    return proc, int(line.split(":")[1].split()[0])


def test_cli_serves_until_sigterm_and_exits_cleanly() -> None:
    proc, port = _start("--seed", "3", "--time-scale", "0", "--preset", "n6", "--set", "camera.width=128")
    try:
        raw = Raw(("127.0.0.1", port))
        raw.call("hello", client="test")
        assert raw.call("lens.get", name="C1")["value"] == pytest.approx(1.02 * 1.2)
        assert raw.call("twin.advance", seconds=5)["time"] == 5
        assert raw.call("camera.acquire")["width"] == 128
        raw.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("args,message", [
    (["--set", "camera.width=3"], "camera.width"),
    (["--preset", "n99"], "unknown twin preset"),
    (["--time-scale", "-1"], "time-scale"),
    (["--settings", "/nonexistent/twin.yaml"], "cannot read"),
])
def test_cli_bad_arguments_exit_2_without_traceback(args: list[str], message: str) -> None:
    proc = subprocess.run([*_twin_command(), "--port", "0", *args], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(not CONFORMANCE.exists(), reason=f"the outside check {CONFORMANCE} is not there")
def test_outside_conformance_check_passes() -> None:
    proc, port = _start("--seed", "1", "--time-scale", "20")
    try:
        check = subprocess.run([sys.executable, str(CONFORMANCE), "--port", str(port)], capture_output=True,
                               text=True, timeout=120, env={**os.environ})
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip().endswith("conforms")
    assert proc.returncode == 0
