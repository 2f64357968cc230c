"""Shared fixtures: a real twin served over TCP in this process, a TcpMicroscope on it, and an X
server (Xvfb) for the screen-capture path.

The twin runs on a ScaledClock fast enough that a 2 s settle costs 2 ms of wall time; tests that
wait on the twin use the same clock object, as `temalign demo` does."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from temalign.clock import ScaledClock
from temalign_twin.model import Twin
from temalign_twin.settings import NO_DRIFT, TwinSettings

FAST_SCALE = 1000.0
"""Twin seconds per wall second for tests over TCP: a wobble's 7 x 2 s of settling take 14 ms."""

QUIET = NO_DRIFT
"""No drift: at 1000x a test's few seconds are an hour of twin time."""


@dataclass
class ServedTwin:
    """A twin on an ephemeral loopback port, with a raw client for the twin.* methods."""

    twin: Twin
    server: Any
    clock: ScaledClock
    client: Any

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[:2]

    def call(self, method: str, **params: Any) -> Any:
        return self.client.call(method, params)

    def truth(self) -> dict[str, Any]:
        return self.call("twin.truth")

    def fault(self, kind: str, **params: Any) -> Any:
        return self.call("twin.fault", kind=kind, **params)

    def lens_reads(self) -> float:
        """C1 as the lens holds it (not as last commanded)."""
        return float(self.truth()["c1_setpoint"])


hypothesis_settings.register_profile("ci", derandomize=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
"""CI (.ci/run sets HYPOTHESIS_PROFILE=ci) replays the same examples every run, so a landing does
not hang on what a random draw finds; a local `make test` draws new ones and finds new bugs."""


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_a_person_has_it() -> Iterator[None]:
    """A runner started in the background by a non-interactive shell inherits SIGINT ignored, and
    so would every process the tests start: the Ctrl-C tests would test nothing. Put Python's own
    handler back for the session (children then start with the default, as from a terminal)."""
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def make_twin() -> Iterator[Callable[..., ServedTwin]]:
    """Factory: `make_twin(overrides=None, seed=1, scale=FAST_SCALE)` starts a served twin; all are
    closed at teardown."""
    from temalign.protocol.client import ProtocolClient
    from temalign_twin.service import TwinServer

    started: list[ServedTwin] = []

    def start(overrides: dict[str, Any] | None = None, *, seed: int = 1,
              scale: float = FAST_SCALE) -> ServedTwin:
        settings = TwinSettings().updated(QUIET)
        if overrides:
            settings = settings.updated(overrides)
        clock = ScaledClock(scale)
        twin = Twin(settings, clock, seed=seed)
        server = TwinServer(twin, host="127.0.0.1", port=0).start()
        host, port = server.address[:2]
        served = ServedTwin(twin, server, clock, ProtocolClient(host, port, call_timeout_s=10.0))
        started.append(served)
        return served

    yield start
    for served in started:
        served.client.close()
        served.server.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temp dir: Unix socket paths have a 107-byte limit that pytest's tmp_path can break."""
    with tempfile.TemporaryDirectory(prefix="ta-") as d:
        yield Path(d)


@pytest.fixture
def twin_server(make_twin: Callable[..., ServedTwin]) -> ServedTwin:
    """A served twin with default settings (no drift), aligned, C1 at c_f."""
    return make_twin()


@pytest.fixture
def connect() -> Iterator[Callable[..., Any]]:
    """Factory: `connect(served, **timeouts)` gives a TcpMicroscope on it, closed at teardown."""
    from temalign.protocol.tcp_microscope import TcpMicroscope

    opened: list[Any] = []

    def open_(served: ServedTwin, **kwargs: Any) -> Any:
        microscope = TcpMicroscope(served.address, client_name="temalign-test", **kwargs)
        opened.append(microscope)
        return microscope

    yield open_
    for microscope in opened:
        microscope.close()


@pytest.fixture
def microscope(twin_server: ServedTwin, connect: Callable[..., Any]) -> Any:
    return connect(twin_server)


XVFB = "Xvfb"
XVFB_START_S = 15.0


@pytest.fixture(scope="session")
def xvfb() -> Iterator[str]:
    """A private X server (Xvfb, 1280x1024x24) on a display number it picks itself; yields ":N".

    Skips, with the reason, only when no Xvfb binary exists; an Xvfb that is there and fails to
    start is an error."""
    binary = shutil.which(XVFB)
    if binary is None:
        pytest.skip("no X server for the screen-capture tests: Xvfb is not installed "
                    "(apt-get install xvfb; .ci/run does it)")
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_fd)
    try:
        number = b""
        deadline = time.monotonic() + XVFB_START_S
        while not number.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                raise RuntimeError(f"Xvfb did not report a display within {XVFB_START_S:g} s")
            chunk = os.read(read_fd, 64)
            if not chunk:
                err = process.stderr.read().decode(errors="replace") if process.poll() is not None else ""
                raise RuntimeError(f"Xvfb exited before it was ready: {err.strip()[-500:]}")
            number += chunk
        yield f":{int(number)}"
    finally:
        os.close(read_fd)
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
