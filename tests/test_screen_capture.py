"""The screen-capture path end to end: the twin's live-view window on a private X server (Xvfb),
grabbed with mss through ScreenSource, must show the spot where the camera counts put it.

The display conversion (twin/display.py) is tested first without any X server. The Xvfb tests
skip only when Xvfb is not installed (the `xvfb` fixture says so)."""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from temalign import optics
from temalign.clock import RealClock, SteppedClock
from temalign.estimate.spots import measure_spot
from temalign.optics import wobble_values
from temalign.protocol.errors import Busy
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.errors import SourceError
from temalign.wobble.sources import ScreenSource
from temalign.wobble.stack import wobble
from temalign_twin.display import contrast_limits, to_display, zoom_nearest
from temalign_twin.model import Twin
from temalign_twin.settings import DisplaySettings, TwinSettings

pytestmark = pytest.mark.timeout(120)

CAMERA = 256
ZOOM = 2
C_F = 1.2
SERIES = wobble_values(C_F, 0.03)
WIDE_PERCENTILES = [0.5, 99.99]
"""Auto-contrast that keeps the focused spot (0.05 % of the frame) above the white point of the
background, so that it is measurable on screen; the default 99.5 % is not (see the test)."""


# ---- the display conversion (no X server) -------------------------------------------------------


def test_auto_contrast_maps_the_percentiles_to_black_and_white() -> None:
    counts = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    shown = to_display(counts, DisplaySettings(contrast="auto", auto_percentiles=(1.0, 99.0)))
    assert shown.dtype == np.uint8 and shown.shape == counts.shape
    lo, hi = np.percentile(counts, (1.0, 99.0))
    assert shown[counts <= lo].max() == 0 and shown[counts >= hi].min() == 255
    assert np.all(np.diff(shown.reshape(-1).astype(int)) >= 0), "the stretch must be monotonic"
    assert len(np.unique(shown)) == 256


def test_fixed_lut_and_gamma() -> None:
    counts = np.array([[0, 100, 1325, 5000, 65535]], dtype=np.uint16)
    shown = to_display(counts, DisplaySettings(contrast="fixed", fixed_range=(100.0, 5000.0)))
    assert shown.tolist() == [[0, 0, 64, 255, 255]]
    v = np.array([[0.0, 0.36, 1.0]]) * 4900 + 100
    shown = to_display(v, DisplaySettings(contrast="fixed", fixed_range=(100.0, 5000.0), gamma=2.0))
    assert shown.tolist() == [[0, 153, 255]]  # 255 * 0.36 ** (1 / 2)


def test_flat_frame_is_black_and_bad_shapes_refused() -> None:
    assert not to_display(np.full((8, 8), 100.0), DisplaySettings()).any()
    with pytest.raises(ValueError, match="2-D"):
        to_display(np.zeros((2, 8, 8)), DisplaySettings())


def test_auto_contrast_of_a_large_frame_uses_a_sample() -> None:
    counts = np.random.default_rng(0).normal(1000, 100, (2048, 2048))
    lo, hi = contrast_limits(counts, DisplaySettings())
    want = np.percentile(counts, (0.5, 99.5))
    assert abs(lo - want[0]) < 2.0 and abs(hi - want[1]) < 2.0  # a grey level is 1.5 counts here


@pytest.mark.parametrize("zoom", [1.0, 1.5, 2.0, 3.0])
def test_zoom_keeps_the_geometry(zoom: float) -> None:
    # hot pixels off: magnified 3x they become 3x3 blocks that the spot measurement takes for a beam
    settings = TwinSettings().updated({"camera": {"hot_pixel_fraction": 0.0}})
    twin = Twin(settings, SteppedClock(), seed=2)
    a_star = np.round(twin.aligned()).astype(int)
    twin.move_aperture(int(a_star[0]) + 180, int(a_star[1]) - 60)
    twin.set_c1(SERIES[5])
    twin.advance(2.0)
    frame = twin.acquire()
    shown = zoom_nearest(to_display(frame, settings.display.model_copy(
        update={"auto_percentiles": (0.5, 99.99)})), zoom)
    assert shown.shape == (round(CAMERA * zoom), round(CAMERA * zoom))
    if zoom == 2.0:
        assert np.array_equal(shown[::2, ::2], shown[1::2, 1::2])
    on_screen, counted = measure_spot(shown.astype(np.float32)), measure_spot(frame)
    assert math.dist(on_screen.centre, counted.centre) * CAMERA < 0.5


def test_viewer_without_a_display_says_so(monkeypatch) -> None:
    from temalign_twin.viewer import ViewerError, run_viewer

    monkeypatch.delenv("DISPLAY", raising=False)
    twin = Twin(TwinSettings(), SteppedClock(), seed=0)
    with pytest.raises(ViewerError, match=r"cannot open the live-view window.*DISPLAY"):
        run_viewer(twin, twin.settings.display)
    assert twin.viewer_region is None


# ---- the live view on Xvfb ----------------------------------------------------------------------


@dataclass
class ViewerTwin:
    process: subprocess.Popen
    address: tuple[str, int]
    client: Any
    display: str
    region: tuple[int, int, int, int]

    def call(self, method: str, **params: Any) -> Any:
        return self.client.call(method, params)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"temalign twin printed nothing in {timeout:g} s")
    return process.stdout.readline()


def _wait_for_viewer(client: Any, timeout: float = 20.0) -> tuple[int, int, int, int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = client.call("twin.viewer", {})
            return r["left"], r["top"], r["width"], r["height"]
        except Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def viewer_twin(xvfb: str) -> Iterator[ViewerTwin]:
    """`temalign twin --viewer` as a subprocess on Xvfb, stepped clock (time moves only when a
    test advances it), live view refreshed every 40 ms."""
    from temalign.protocol.client import ProtocolClient

    env = {**os.environ, "DISPLAY": xvfb}
    process = subprocess.Popen(
        [sys.executable, "-m", "temalign", "twin", "--port", "0", "--time-scale", "0", "--seed", "5",
         "--viewer", "--viewer-position", "0,0", "--set", "display.refresh_s=0.04",
         "--set", "drift.random_walk_per_sqrt_hour=0", "--set", "drift.jump_rate_per_hour=0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = None
    try:
        line = _read_line(process, 30.0)
        why = process.stderr.read() if process.poll() is not None else ""
        assert line.startswith("temalign-twin listening on "), line + why
        host, port = line.split()[3].rsplit(":", 1)
        client = ProtocolClient(host, int(port))
        region = _wait_for_viewer(client)
        yield ViewerTwin(process, (host, int(port)), client, xvfb, region)
    finally:
        if client is not None:
            client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.fixture
def scope(viewer_twin: ViewerTwin) -> Iterator[Any]:
    """A TcpMicroscope on the viewer twin; the display and C1 are put back afterwards."""
    from temalign.protocol.tcp_microscope import TcpMicroscope

    with TcpMicroscope(viewer_twin.address) as microscope:
        home = microscope.aperture()
        yield microscope
        viewer_twin.call("twin.configure", overrides={"display": DisplaySettings().model_dump(mode="json")
                                                      | {"refresh_s": 0.04}})
        microscope.set_c1(C_F)
        microscope.move_aperture(home)


def _screen(viewer_twin: ViewerTwin, latency_s: float = 0.2) -> ScreenSource:
    return ScreenSource(viewer_twin.region, RealClock(), display=viewer_twin.display, latency_s=latency_s)



@pytest.mark.xvfb
def test_viewer_sits_where_asked(viewer_twin: ViewerTwin) -> None:
    assert viewer_twin.region == (0, 0, CAMERA * ZOOM, CAMERA * ZOOM)
    assert viewer_twin.process.poll() is None


def _compare(viewer_twin: ViewerTwin, microscope: Any, screen: ScreenSource,
             c1: float) -> tuple[Any, Any, float]:
    """Set C1, let it settle in twin time, then measure the spot on the camera and on the screen
    (in camera pixels). A grab that raced the viewer's refresh is taken again, at most twice."""
    microscope.set_c1(c1)
    viewer_twin.call("twin.advance", seconds=2.0)
    counted = measure_spot(microscope.acquire())
    for _ in range(3):
        shown = measure_spot(screen.grab().data)
        error = math.dist(shown.centre, counted.centre) * CAMERA if shown.found else math.inf
        if error <= 1.0:
            break
    return counted, shown, error


MISALIGNMENTS = [(0, 0), (150, 0), (-170, 170)]


@pytest.mark.xvfb
def test_screen_spots_match_the_camera(viewer_twin: ViewerTwin, scope: Any) -> None:
    viewer_twin.call("twin.configure", overrides={"display": {"auto_percentiles": WIDE_PERCENTILES}})
    home = scope.aperture()
    errors = []
    with _screen(viewer_twin) as screen:
        for dx, dy in MISALIGNMENTS:
            scope.move_aperture(type(home)(home.x + dx, home.y + dy))
            for c1 in SERIES:
                counted, shown, error = _compare(viewer_twin, scope, screen, c1)
                assert counted.found and shown.found, f"m=({dx}, {dy}) C1={c1}: spot not found"
                assert error <= 1.0, f"m=({dx}, {dy}) C1={c1}: screen and camera disagree by {error:.2f} px"
                assert shown.radius == pytest.approx(counted.radius, rel=0.1, abs=1.0 / CAMERA)
                errors.append(error)
    assert len(errors) == 21 and float(np.median(errors)) < 0.3


@pytest.mark.xvfb
def test_default_auto_contrast_loses_only_the_focused_spot(viewer_twin: ViewerTwin, scope: Any) -> None:
    """With the camera software's usual 0.5-99.5 % stretch the wide discs match as well; the focused
    spot (0.05 % of the pixels) is no brighter than the stretched background's top 0.5 %, which
    is what a person sees too."""
    home = scope.aperture()
    scope.move_aperture(type(home)(home.x + 150, home.y))
    with _screen(viewer_twin) as screen:
        for k, c1 in enumerate(SERIES):
            counted, _, error = _compare(viewer_twin, scope, screen, c1)
            if k == 3:
                assert counted.found
                continue
            assert error <= 1.0, f"C1={c1}: screen and camera disagree by {error:.2f} px"


@pytest.mark.xvfb
def test_wobble_from_the_screen(viewer_twin: ViewerTwin, scope: Any, tmp_path) -> None:
    """The whole wobble on screen frames, with a clock that moves the twin's stepped time."""
    viewer_twin.call("twin.configure", overrides={"display": {"auto_percentiles": WIDE_PERCENTILES}})

    class TwinTime:
        def now(self) -> float:
            return viewer_twin.call("twin.truth")["time"]

        def sleep(self, seconds: float) -> None:
            viewer_twin.call("twin.advance", seconds=seconds)

    home = scope.aperture()
    scope.move_aperture(type(home)(home.x - 120, home.y - 90))
    c0 = scope.c1()
    with _screen(viewer_twin, latency_s=0.25) as screen:
        stack = wobble(scope, screen, fraction=0.03, settle_s=2.0, clock=TwinTime(),
                       memory=C1Memory(tmp_path))
    assert (stack.kind, stack.source) == ("display", "screen")
    assert stack.images.shape == (7, CAMERA * ZOOM, CAMERA * ZOOM) and stack.images.dtype == np.float32
    assert stack.images.min() >= 0 and stack.images.max() == 255
    truth = viewer_twin.call("twin.truth")
    assert truth["c1_setpoint"] == c0
    for c, image in zip(stack.c1_values, stack.images, strict=True):
        want = optics.spot_centre(c, C_F, truth["misalignment"], truth["beam_shift"])
        assert math.dist(measure_spot(image).centre, want) * CAMERA <= 1.0


@pytest.mark.xvfb
def test_viewer_follows_a_zoom_change(viewer_twin: ViewerTwin, scope: Any) -> None:
    viewer_twin.call("twin.configure", overrides={"display": {"zoom": 1.5}})
    try:
        deadline = time.monotonic() + 10
        while _wait_for_viewer(viewer_twin.client)[2:] != (384, 384):
            assert time.monotonic() < deadline, "the viewer did not resize"
            time.sleep(0.05)
    finally:
        viewer_twin.call("twin.configure", overrides={"display": {"zoom": float(ZOOM)}})
        deadline = time.monotonic() + 10
        while _wait_for_viewer(viewer_twin.client) != viewer_twin.region:
            assert time.monotonic() < deadline, "the viewer did not come back to its size"
            time.sleep(0.05)


@pytest.mark.xvfb
def test_region_off_the_screen_is_refused(viewer_twin: ViewerTwin) -> None:
    source = ScreenSource((1000, 900, 512, 512), RealClock(), display=viewer_twin.display, latency_s=0.0)
    with pytest.raises(SourceError, match=r"not wholly on the screen .* \(1280x1024 at \(0, 0\)\)"):
        source.grab()
