"""Image sources: the camera over TCP at several detector sizes, and the screen source's pieces
that need no X server (region parsing, BGRA to grey, the errors without a display)."""

from __future__ import annotations

import numpy as np
import pytest

from temalign.clock import SteppedClock
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.errors import SourceError
from temalign.wobble.sources import (
    CameraSource,
    ImageSource,
    ScreenRegion,
    ScreenSource,
    bgra_to_grey,
    source_from_settings,
)
from temalign.wobble.stack import wobble

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("width", "height"), [(256, 256), (512, 512), (384, 200)])
def test_camera_source_frames_any_size(make_twin, connect, width, height) -> None:
    served = make_twin({"camera": {"width": width, "height": height}})
    clock = SteppedClock(start=5.0)
    source = CameraSource(connect(served), clock=clock)
    assert isinstance(source, ImageSource)
    frame = source.grab()
    assert frame.data.shape == (height, width) and frame.data.dtype == np.float32
    assert (frame.kind, frame.source, frame.time) == ("raw", "camera", 5.0)
    assert frame.data.min() >= 0 and frame.data.max() <= 65535
    assert float(frame.data.max()) == 65535.0, "the focused spot saturates: raw counts, not rescaled"


def test_camera_source_passes_the_exposure(twin_server, connect) -> None:
    microscope = connect(twin_server)
    dark = twin_server.twin.settings.camera.dark_offset
    twin_server.call("twin.configure", overrides={"camera": {"hot_pixel_fraction": 0}})
    microscope.set_c1(1.236)  # a wide disc: no saturation, signal proportional to the exposure
    twin_server.clock.sleep(2.0)
    short = CameraSource(microscope, exposure_s=0.05).grab().data.astype(float) - dark
    long = CameraSource(microscope, exposure_s=0.1).grab().data.astype(float) - dark
    assert long.sum() / short.sum() == pytest.approx(2.0, rel=0.02)


def test_camera_source_stack_512(make_twin, connect, tmp_path) -> None:
    served = make_twin({"camera": {"width": 512, "height": 512}})
    microscope = connect(served)
    stack = wobble(microscope, CameraSource(microscope, clock=served.clock), fraction=0.03, settle_s=2.0,
                   clock=served.clock, memory=C1Memory(tmp_path))
    assert stack.images.shape == (7, 512, 512) and stack.images.dtype == np.float32


def test_camera_source_refuses_bad_exposure(microscope) -> None:
    with pytest.raises(ValueError, match="exposure_s"):
        CameraSource(microscope, exposure_s=0.0)


class Settings:
    """The shape of the config's `source` section, for source_from_settings."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.camera = type("Camera", (), {"exposure_s": 0.05})()
        self.screen = type("Screen", (), {"region": (1, 2, 30, 40), "display": ":5", "latency_s": 0.25})()


def test_source_from_settings(microscope) -> None:
    camera = source_from_settings(Settings("camera"), microscope, SteppedClock())
    assert isinstance(camera, CameraSource) and camera.exposure_s == 0.05
    screen = source_from_settings(Settings("camera"), microscope, SteppedClock(), kind="screen")
    assert isinstance(screen, ScreenSource)
    assert (screen.region, screen.display, screen.latency_s) == (ScreenRegion(1, 2, 30, 40), ":5", 0.25)
    with pytest.raises(SourceError, match="unknown image source"):
        source_from_settings(Settings("film"), microscope, SteppedClock())


def test_source_from_the_real_config_schema(microscope) -> None:
    from temalign.config.schema import Settings as Config

    config = Config.model_validate({"microscope": {"address": "127.0.0.1:1"},
                                    "source": {"kind": "screen", "screen": {
                                        "region": {"left": 10, "top": 20, "width": 512, "height": 256}}}})
    source = source_from_settings(config.source, microscope, SteppedClock())
    assert isinstance(source, ScreenSource) and source.region == ScreenRegion(10, 20, 512, 256)
    assert source.latency_s == config.source.screen.latency_s


@pytest.mark.parametrize("given", [(0, 0, 16, 32), [0, 0, 16, 32],
                                   {"left": 0, "top": 0, "width": 16, "height": 32},
                                   ScreenRegion(0, 0, 16, 32), np.array([0, 0, 16, 32])])
def test_screen_region_forms(given) -> None:
    if isinstance(given, np.ndarray):
        given = tuple(given)  # numpy integers
    assert ScreenRegion.of(given) == ScreenRegion(0, 0, 16, 32)


@pytest.mark.parametrize("given", [(0, 0, 16), (0, 0, 0, 10), (0, 0, 10.5, 10), {"left": 0}, "0,0,16,16",
                                   (True, 0, 16, 16)])
def test_screen_region_refuses(given) -> None:
    with pytest.raises(SourceError):
        ScreenRegion.of(given)


def test_bgra_to_grey() -> None:
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[0, 0, :3] = 200  # grey stays its level
    pixels[0, 1] = (0, 0, 255, 255)  # pure red (BGRA)
    pixels[0, 2] = (255, 0, 0, 0)  # pure blue; alpha ignored
    pixels[1, :, 1] = 255  # green
    grey = bgra_to_grey(pixels)
    assert grey.dtype == np.float32 and grey.shape == (2, 3)
    np.testing.assert_allclose(grey, [[200, 0.299 * 255, 0.114 * 255], [0.587 * 255] * 3], rtol=1e-5)


def test_screen_source_without_a_display_says_so(monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    source = ScreenSource((0, 0, 64, 64), SteppedClock(), latency_s=0.0)
    with pytest.raises(SourceError, match=r"cannot open X display \(DISPLAY is not set\)"):
        source.grab()


def test_screen_source_with_a_dead_display_says_which(monkeypatch) -> None:
    source = ScreenSource((0, 0, 64, 64), SteppedClock(), display=":4095", latency_s=0.0)
    with pytest.raises(SourceError, match="cannot open X display :4095"):
        source.grab()


def test_screen_source_refuses_negative_latency() -> None:
    with pytest.raises(ValueError, match="latency_s"):
        ScreenSource((0, 0, 64, 64), SteppedClock(), latency_s=-1)
