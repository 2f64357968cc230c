"""The daemon's cycle driven by the screen-capture source (issue 4): the twin's live-view window on
a private X server (Xvfb), grabbed with mss through ScreenSource, feeds the same `run_cycle` that
tests/test_cycle.py drives with camera frames.

The twin is served over TCP in this process (the `make_twin` fixture, 1000x time) and its viewer
(`run_viewer`) runs in a thread of this process, so a test moves the aperture through the served
twin object and reads the truth from it. The viewer sits at (640, 0), clear of the window that
tests/test_screen_capture.py puts at (0, 0) on the same X server. The settle is twin time
(2 ms of wall time); the screen latency is wall time (the viewer refreshes every 40 ms).

The calibration is measured through the screen with `calibrate()`, as a user would. The
camera software's usual auto-contrast (0.5-99.5 %) hides the focused spot of the middle frame;
the last test pins what the loop does then. Skips only when Xvfb is not installed."""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from temalign.clock import RealClock
from temalign.config.schema import Settings
from temalign.estimate.calibration import Calibration, nominal_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelEstimator
from temalign.frames import Frame
from temalign.protocol.errors import Busy
from temalign.record.journal import Journal
from temalign.record.state import StateStore
from temalign.service.calibrate import calibrate
from temalign.service.cycle import Parts, run_cycle
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import ScreenSource

pytestmark = [pytest.mark.xvfb, pytest.mark.timeout(120)]

SHIPPED = Path(__file__).resolve().parents[1] / "daemon" / "temalign" / "models" / "wobble_physics.tflite"
CAMERA = 256
ZOOM = 2
POSITION = (640, 0)
REFRESH_S = 0.04
LATENCY_S = 0.15
"""Wall seconds before each grab: almost four refreshes of the live view after the settle."""
WIDE_PERCENTILES = [0.5, 99.99]
"""Auto-contrast that keeps the focused spot measurable on screen (docs/wobble.md)."""
USUAL_PERCENTILES = [0.5, 99.5]
"""The camera software's usual stretch (the twin's default)."""


def offset(served: Any, dx: int, dy: int) -> None:
    """Put the aperture (dx, dy) off the aligned position, as drift would (as in test_cycle.py)."""
    aligned = served.truth()["aligned"]
    served.twin.move_aperture(round(aligned[0] + dx), round(aligned[1] + dy))


def misalignment(served: Any) -> float:
    return math.hypot(*served.truth()["misalignment"])


class RecordingScreen(ScreenSource):
    """A ScreenSource that keeps every frame it delivered, to show the loop really ran on them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[Frame] = []

    def grab(self) -> Frame:
        frame = super().grab()
        self.frames.append(frame)
        return frame


def _wait_for_viewer(served: Any, thread: threading.Thread, failed: list[BaseException],
                     timeout: float = 20.0) -> tuple[int, int, int, int]:
    """The viewer's image region, served as twin.viewer (as test_screen_capture.py waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        if failed:
            raise failed[0]
        try:
            r = served.call("twin.viewer")
            return r["left"], r["top"], r["width"], r["height"]
        except Busy:
            if time.monotonic() > deadline or not thread.is_alive():
                raise
            time.sleep(0.05)


@pytest.fixture
def live_view(xvfb: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any], RecordingScreen]]:
    """Factory: `live_view(served)` shows the served twin's live view on Xvfb (run_viewer in a
    thread) and returns a RecordingScreen on its region; the window is closed at teardown."""
    from temalign_twin.viewer import run_viewer

    monkeypatch.setenv("DISPLAY", xvfb)
    shown: list[tuple[threading.Event, threading.Thread]] = []
    sources: list[ScreenSource] = []

    def show(served: Any) -> RecordingScreen:
        stop = threading.Event()
        failed: list[BaseException] = []

        def viewer() -> None:
            try:
                run_viewer(served.twin, served.twin.settings.display, position=POSITION, stop_event=stop)
            except BaseException as error:  # reported by _wait_for_viewer
                failed.append(error)
            finally:
                gc.collect()  # Tk objects must die in the thread that made them

        thread = threading.Thread(target=viewer, name="live-view", daemon=True)
        thread.start()
        shown.append((stop, thread))
        region = _wait_for_viewer(served, thread, failed)
        assert region == (*POSITION, CAMERA * ZOOM, CAMERA * ZOOM)
        source = RecordingScreen(region, RealClock(), display=xvfb, latency_s=LATENCY_S)
        sources.append(source)
        return source

    yield show
    for source in sources:
        source.close()
    for stop, thread in shown:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the live-view window did not close"


def make_served(make_twin: Callable[..., Any], percentiles: list[float]) -> Any:
    return make_twin({"display": {"refresh_s": REFRESH_S, "auto_percentiles": percentiles}})


def settings_for(served: Any, source: ScreenSource, tmp_path: Path) -> Settings:
    """The config a user would write for this screen source (the defaults for every limit)."""
    host, port = served.address
    region = source.region
    return Settings.model_validate({
        "microscope": {"address": f"{host}:{port}"}, "paths": {"state_dir": str(tmp_path / "state")},
        "schedule": {"mode": "live"},
        "source": {"kind": "screen", "screen": {
            "region": region.as_mss(), "display": source.display, "latency_s": source.latency_s}},
    })


def measure_calibration(served: Any, microscope: Any, source: ScreenSource,
                        settings: Settings) -> Calibration:
    """`temalign calibrate`'s measurement, through the screen."""
    return calibrate(microscope, source, wobble_settings=settings.wobble, quality_settings=settings.quality,
                     clock=served.clock, memory=C1Memory(settings.paths.ensure_state_dir()))


def make_parts(served: Any, microscope: Any, source: ScreenSource, settings: Settings,
               calibration: Calibration) -> Parts:
    """Parts as test_cycle.py builds them, with the screen as the image source."""
    state_dir = settings.paths.ensure_state_dir()
    estimator = CombinedEstimator(ModelEstimator(SHIPPED), calibration, settings.estimator, settings.quality)
    return Parts(microscope=microscope, source=source, estimator=estimator, settings=settings,
                 clock=served.clock, memory=C1Memory(state_dir),
                 journal=Journal(state_dir, clock=served.clock),
                 state=StateStore(state_dir), session_start=None)


def relative_gap(a: Calibration, b: Calibration) -> float:
    return float(np.linalg.norm(a.array - b.array) / np.linalg.norm(b.array))


def assert_screen_frames(source: RecordingScreen, wobbles: int) -> None:
    """Every frame of the cycle came from the screen: 8-bit levels, the viewer's size."""
    assert len(source.frames) == 7 * wobbles
    for frame in source.frames:
        assert (frame.source, frame.kind) == ("screen", "display")
        assert frame.data.shape == (CAMERA * ZOOM, CAMERA * ZOOM)
        assert frame.data.min() >= 0 and frame.data.max() <= 255


def test_screen_source_corrects_a_misaligned_aperture(make_twin: Callable[..., Any], connect: Any,
                                                       live_view: Any, tmp_path: Path) -> None:
    """Calibrated through the screen, one live cycle on screen frames corrects 150 units at gain 0.8."""
    served = make_served(make_twin, WIDE_PERCENTILES)
    microscope = connect(served)
    source = live_view(served)
    settings = settings_for(served, source, tmp_path)
    calibration = measure_calibration(served, microscope, source, settings)
    # the region is exactly the image: the screen's geometry is the camera's, so M is the twin's
    assert calibration.source == "measured" and relative_gap(calibration, nominal_calibration()) < 0.05

    offset(served, 150, 0)
    c1_before = served.lens_reads()
    m_before = misalignment(served)
    source.frames.clear()
    result = run_cycle(make_parts(served, microscope, source, settings, calibration))

    assert result.outcome == "corrected", result
    assert_screen_frames(source, wobbles=2)
    assert result.before is not None and result.before.trusted and result.before.reason == "agree"
    assert result.before.classical is not None and result.before.classical.frames_used == 7
    assert result.before.misalignment == pytest.approx(m_before, abs=10.0)
    m_after = misalignment(served)
    assert m_after < 40.0, served.truth()  # gain 0.8: about 30 units left, plus the motor
    assert result.after is not None and result.after.misalignment == pytest.approx(m_after, abs=10.0)
    assert served.lens_reads() == pytest.approx(c1_before, rel=1e-9)


def test_screen_source_leaves_an_aligned_aperture_alone(make_twin: Callable[..., Any], connect: Any,
                                                        live_view: Any, tmp_path: Path) -> None:
    """Aligned: the screen frames say so (trusted, under the deadband) and nothing moves."""
    served = make_served(make_twin, WIDE_PERCENTILES)
    microscope = connect(served)
    source = live_view(served)
    settings = settings_for(served, source, tmp_path)
    calibration = measure_calibration(served, microscope, source, settings)
    offset(served, 0, 0)
    aperture = served.truth()["aperture"]
    c1_before = served.lens_reads()
    source.frames.clear()
    result = run_cycle(make_parts(served, microscope, source, settings, calibration))

    assert result.outcome == "within_deadband", result
    assert_screen_frames(source, wobbles=1)
    assert result.before is not None and result.before.trusted
    assert result.before.misalignment is not None
    assert result.before.misalignment <= settings.safety.deadband_units
    assert served.truth()["aperture"] == aperture
    assert served.lens_reads() == pytest.approx(c1_before, rel=1e-9)


def test_usual_auto_contrast_hides_the_focused_spot_and_the_loop_still_works(
        make_twin: Callable[..., Any], connect: Any, live_view: Any, tmp_path: Path) -> None:
    """With the usual 0.5-99.5 % stretch about 0.7 % of the focused frame's pixels are white, so the
    3 px spot is not found there (docs/wobble.md). The quality check leaves that frame out instead
    of calling the stack doubtful (every wide disc is there): calibrate and the cycle work on the
    six other frames and the model, C1 restored."""
    served = make_served(make_twin, USUAL_PERCENTILES)
    microscope = connect(served)
    source = live_view(served)
    settings = settings_for(served, source, tmp_path)
    calibration = measure_calibration(served, microscope, source, settings)
    assert relative_gap(calibration, nominal_calibration()) < 0.05

    offset(served, 150, 0)
    c1_before = served.lens_reads()
    m_before = misalignment(served)
    source.frames.clear()
    result = run_cycle(make_parts(served, microscope, source, settings, calibration))

    assert result.outcome == "corrected", result
    assert result.before is not None and result.before.quality.ok
    assert result.before.quality.frame_usable == (True, True, True, False, True, True, True)
    assert result.before.classical is not None and result.before.classical.frames_used == 6
    assert result.before.misalignment == pytest.approx(m_before, abs=10.0)
    assert misalignment(served) < 40.0, served.truth()
    assert served.lens_reads() == pytest.approx(c1_before, rel=1e-9)
    assert_screen_frames(source, wobbles=2)
    focused = source.frames[3].data
    assert 0.002 < np.count_nonzero(focused >= 255) / focused.size < 0.02  # white background, not a spot



def calibrated_on_screen(make_twin: Callable[..., Any], connect: Any, live_view: Any, tmp_path: Path,
                         percentiles: Any) -> tuple[Any, RecordingScreen, Parts]:
    """A twin on the screen, calibrated through it, the aperture a few units off (4, -3)."""
    served = make_served(make_twin, percentiles)
    microscope = connect(served)
    source = live_view(served)
    settings = settings_for(served, source, tmp_path)
    parts = make_parts(served, microscope, source, settings,
                       measure_calibration(served, microscope, source, settings))
    offset(served, 4, -3)
    return served, source, parts


def check_stops_at_two_frames(served: Any, source: RecordingScreen, parts: Parts) -> None:
    """One check: it ends there ("checked"), on two screen frames, its delta near the truth."""
    mx, my = served.truth()["misalignment"]
    source.frames.clear()
    result = run_cycle(parts, look="check")
    assert result.outcome == "checked", result
    assert len(source.frames) == 2 and result.check is not None
    assert result.check.delta == pytest.approx((-mx, -my), abs=2.0)


def test_a_check_on_screen_frames(make_twin: Callable[..., Any], connect: Any, live_view: Any,
                                  tmp_path: Path) -> None:
    """The wide stretch shows the focused spot: the check stops at two frames, C1 as it is and
    the upper end, and sees the few units the aperture is off."""
    served, source, parts = calibrated_on_screen(make_twin, connect, live_view, tmp_path, WIDE_PERCENTILES)
    check_stops_at_two_frames(served, source, parts)


def test_a_check_whose_focused_frame_is_hidden_takes_both_ends_from_then_on(
        make_twin: Callable[..., Any], connect: Any, live_view: Any, tmp_path: Path) -> None:
    """The usual stretch hides the focused spot (above): the first check cannot tell and hands over
    to the full wobble; it says so in the journal, and later checks take both ends (two settles)."""
    served, source, parts = calibrated_on_screen(make_twin, connect, live_view, tmp_path, USUAL_PERCENTILES)
    c1_before = served.lens_reads()
    source.frames.clear()
    first = run_cycle(parts, look="check")
    assert first.check is not None and first.check.delta is None
    assert first.outcome == "within_deadband" and len(source.frames) == 2 + 7
    assert parts.check_steps == (0, 6)
    assert any(e["kind"] == "check.steps" for e in parts.journal.entries())

    check_stops_at_two_frames(served, source, parts)
    assert served.lens_reads() == pytest.approx(c1_before, rel=1e-9)
