"""Where the frames of a wobble come from: the camera over the protocol, or the screen.

The camera gives raw counts. The screen (the paper's way: a user-defined region of the camera
software's live view, grabbed with mss) gives exactly what the operator sees, in any acquisition
software, at the price of 8-bit display levels and a display latency. Both deliver `Frame`s of
any size; the wobble does not care which it has."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from temalign.clock import Clock, RealClock
from temalign.frames import Frame, FrameKind
from temalign.microscope import Microscope
from temalign.wobble.errors import SourceError

if TYPE_CHECKING:
    import mss

    from temalign.config.schema import SourceSettings


@runtime_checkable
class ImageSource(Protocol):
    """Anything that delivers one frame on demand."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> FrameKind: ...

    def grab(self) -> Frame: ...


class CameraSource:
    """Frames from `camera.acquire`: raw detector counts as float32. Protocol errors pass through
    unchanged (the wobble restores C1 and re-raises them)."""

    name = "camera"
    kind: FrameKind = "raw"

    def __init__(self, microscope: Microscope, exposure_s: float | None = None,
                 clock: Clock | None = None) -> None:
        if exposure_s is not None and not exposure_s > 0:
            raise ValueError(f"exposure_s must be > 0 (or None: the server's default), got {exposure_s}")
        self.microscope = microscope
        self.exposure_s = exposure_s
        self.clock = clock or RealClock()

    def grab(self) -> Frame:
        counts = self.microscope.acquire(self.exposure_s)
        data = np.asarray(counts)
        if data.ndim != 2 or min(data.shape) < 1:
            raise SourceError(f"the camera returned a frame of shape {data.shape}, expected 2-D")
        return Frame(data.astype(np.float32), self.clock.now(), self.name, self.kind)


@dataclass(frozen=True)
class ScreenRegion:
    """A rectangle of screen pixels (X11 root-window coordinates)."""

    left: int
    top: int
    width: int
    height: int

    @classmethod
    def of(cls, region: object) -> ScreenRegion:
        """From a ScreenRegion, a (left, top, width, height) sequence, a mapping or any object with
        those four attributes (the config's `source.screen.region`)."""
        if isinstance(region, ScreenRegion):
            return region
        values: list[object]
        if isinstance(region, Mapping):
            values = [region.get(k) for k in ("left", "top", "width", "height")]
        elif isinstance(region, tuple | list):
            values = list(region)
        else:
            values = [getattr(region, k, None) for k in ("left", "top", "width", "height")]
        ints = [int(v) for v in values if isinstance(v, int | np.integer) and not isinstance(v, bool)]
        if len(values) != 4 or len(ints) != 4:
            raise SourceError(f"a screen region is four integers (left, top, width, height), got {region!r}")
        left, top, width, height = ints
        if width < 1 or height < 1:
            raise SourceError(f"a screen region needs a positive width and height, got {width} x {height}")
        return cls(left, top, width, height)

    def as_mss(self) -> dict[str, int]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}

    def __str__(self) -> str:
        return f"{self.width}x{self.height} at ({self.left}, {self.top})"


def bgra_to_grey(pixels: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601) of an (H, W, 4) BGRA image as float32 0..255: for a grey live view it is
    the grey level itself, for a coloured LUT the brightness a person sees."""
    b = pixels[..., 0].astype(np.float32)
    g = pixels[..., 1].astype(np.float32)
    r = pixels[..., 2].astype(np.float32)
    grey: np.ndarray = np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b
    return grey


class ScreenSource:
    """Frames grabbed from a region of the screen with mss, as the operator sees them (0..255).

    Each grab first waits `latency_s` on the clock, so that the camera software has shown the frame
    taken after the last settle (the paper measured about half a second). The X connection opens
    at the first grab and is checked then: no display, or a region not wholly on the screen, is a
    `SourceError` that says which. Call `close()` (or use `with`) when done."""

    name = "screen"
    kind: FrameKind = "display"

    def __init__(self, region: object, clock: Clock | None = None, display: str | None = None,
                 latency_s: float = 0.5) -> None:
        if not latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        self.region = ScreenRegion.of(region)
        self.clock = clock or RealClock()
        self.display = display
        self.latency_s = float(latency_s)
        self._sct: mss.MSS | None = None

    def _display_name(self) -> str:
        return self.display or os.environ.get("DISPLAY") or "(DISPLAY is not set)"

    def _open(self) -> mss.MSS:
        if self._sct is not None:
            return self._sct
        try:
            import mss
        except ImportError as error:
            raise SourceError(f"screen capture needs the mss package ({error})") from None
        try:
            sct = mss.MSS(display=self.display) if self.display else mss.MSS()
        except Exception as error:
            raise SourceError(f"cannot open X display {self._display_name()} for screen capture: {error}; "
                              "set source.screen.display (or DISPLAY) to the screen showing the "
                              "camera software") from None
        try:
            screen = sct.monitors[0]
        except Exception as error:
            sct.close()
            raise SourceError(f"cannot read the screen size of display {self._display_name()}: "
                              f"{error}") from None
        self._check_on_screen(screen)
        self._sct = sct
        return sct

    def _check_on_screen(self, screen: Mapping[str, int]) -> None:
        r = self.region
        right, bottom = screen["left"] + screen["width"], screen["top"] + screen["height"]
        if (r.left < screen["left"] or r.top < screen["top"] or r.left + r.width > right
                or r.top + r.height > bottom):
            raise SourceError(
                f"screen region {r} is not wholly on the screen of display {self._display_name()} "
                f"({screen['width']}x{screen['height']} at ({screen['left']}, {screen['top']})); "
                "set source.screen.region to the pixels of the live view (docs/wobble.md)")

    def grab(self) -> Frame:
        sct = self._open()
        self.clock.sleep(self.latency_s)
        try:
            shot = sct.grab(self.region.as_mss())
        except Exception as error:
            raise SourceError(f"screen capture of {self.region} on display {self._display_name()} "
                              f"failed: {error}") from None
        pixels = np.asarray(shot)
        if pixels.shape[:2] != (self.region.height, self.region.width) or pixels.shape[2] < 3:
            raise SourceError(f"screen capture returned {pixels.shape}, expected "
                              f"{self.region.height} x {self.region.width} x 4 (BGRA)")
        return Frame(bgra_to_grey(pixels), self.clock.now(), self.name, self.kind)

    def close(self) -> None:
        if self._sct is not None:
            self._sct.close()
            self._sct = None

    def __enter__(self) -> ScreenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def source_from_settings(source_settings: SourceSettings, microscope: Microscope, clock: Clock,
                         kind: str | None = None) -> CameraSource | ScreenSource:
    """The source the config's `source` section names (`kind` overrides `source.kind`)."""
    kind = kind or source_settings.kind
    if kind == "camera":
        return CameraSource(microscope, source_settings.camera.exposure_s, clock)
    if kind == "screen":
        screen = source_settings.screen
        return ScreenSource(screen.region, clock, display=screen.display, latency_s=screen.latency_s)
    raise SourceError(f"unknown image source {kind!r} (camera or screen)")
