"""The twin's live-view window: what the camera software would show on the microscope PC's screen.

The screen-capture source (wobble/sources.py) grabs a region of the screen exactly as the paper
did; this window gives it something real to grab. It shows `to_display(twin.live_frame())`,
magnified by the display zoom, refreshed every `refresh_s` wall seconds, and publishes where its
image lies on screen as `twin.viewer_region` (served as `twin.viewer`), so a test never guesses
coordinates. Changes to the twin's `display` settings (twin.configure) apply at the next refresh."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import TYPE_CHECKING

import numpy as np

from temalign.errors import TemalignError
from temalign_twin.display import to_display, zoom_nearest
from temalign_twin.settings import DisplaySettings

if TYPE_CHECKING:
    import tkinter as tk

    from temalign_twin.model import Twin

TITLE = "temalign twin: live view"


class ViewerError(TemalignError):
    """The live-view window cannot be shown (no display, no Tk)."""


def ppm_bytes(grey: np.ndarray) -> bytes:
    """A 2-D uint8 image as binary PGM, which Tk's photo image reads without any extra library."""
    h, w = grey.shape
    return b"P5\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(grey, dtype=np.uint8).tobytes()


def _open_window(position: tuple[int, int] | None) -> tk.Tk:
    try:
        import tkinter as tk
    except ImportError as error:
        raise ViewerError(f"the live view needs tkinter, which this Python lacks ({error}); "
                          "install python3-tk") from None
    try:
        root = tk.Tk()
    except tk.TclError as error:
        raise ViewerError(f"cannot open the live-view window: {error}. Set DISPLAY to a running X "
                          "server (for example Xvfb :99 and DISPLAY=:99)") from None
    root.title(TITLE)
    root.resizable(False, False)
    if position is not None:
        root.geometry(f"+{int(position[0])}+{int(position[1])}")
    return root


class _LiveView:
    """The window's state: one label holding the current picture, re-rendered on a Tk timer."""

    def __init__(self, root: tk.Tk, twin: Twin, settings: DisplaySettings,
                 stop_event: threading.Event) -> None:
        import tkinter as tk

        self.root = root
        self.twin = twin
        self.settings = settings
        self._twin_display = self._current_twin_display()
        self.stop_event = stop_event
        self.photo: tk.PhotoImage | None = None
        self.label = tk.Label(root, borderwidth=0, highlightthickness=0, padx=0, pady=0)
        self.label.pack(padx=0, pady=0)
        # the toplevel's <Configure> also fires when the window is moved on screen
        root.bind("<Configure>", lambda event: self.publish_region())
        self.label.bind("<Map>", lambda event: self.publish_region())
        self._complained = False

    def _current_twin_display(self) -> DisplaySettings:
        return self.twin.settings.display

    def _display_settings(self) -> DisplaySettings:
        """The settings given at start, until the twin's own display section changes."""
        now = self._current_twin_display()
        if now is not self._twin_display:
            self._twin_display = now
            self.settings = now
        return self.settings

    def render(self) -> None:
        import tkinter as tk

        settings = self._display_settings()
        picture = zoom_nearest(to_display(self.twin.live_frame(), settings), settings.zoom)
        photo = tk.PhotoImage(master=self.root, data=ppm_bytes(picture), format="PPM")
        resized = self.photo is None or (photo.width(), photo.height()) != (self.photo.width(),
                                                                              self.photo.height())
        self.label.configure(image=photo)
        self.photo = photo
        if resized:
            self.root.update_idletasks()
            self.publish_region()

    def publish_region(self) -> None:
        """Screen pixels of the picture (not the window frame), once the window is on screen."""
        if self.photo is None or not self.label.winfo_ismapped():
            return
        self.twin.viewer_region = (self.label.winfo_rootx(), self.label.winfo_rooty(),
                                   self.photo.width(), self.photo.height())

    def tick(self) -> None:
        if self.stop_event.is_set():
            self.root.destroy()
            return
        try:
            self.render()
        except Exception as error:  # a live view keeps going; the first failure is reported
            if not self._complained:
                print(f"temalign twin: live view could not render a frame: {error}", file=sys.stderr)
                self._complained = True
        delay_ms = max(1, round(self._display_settings().refresh_s * 1000))
        self.root.after(delay_ms, self.tick)


def run_viewer(twin: Twin, settings: DisplaySettings, position: tuple[int, int] | None = None,
               stop_event: threading.Event | None = None) -> None:
    """Show the live view until `stop_event` is set or the window is closed; call from the thread
    that owns Tk (the main thread in `temalign twin --viewer`). Raises ViewerError without a display."""
    stop_event = stop_event or threading.Event()
    root = _open_window(position)
    view = _LiveView(root, twin, settings, stop_event)
    root.protocol("WM_DELETE_WINDOW", root.destroy)
    try:
        view.render()
        root.after(1, view.tick)
        root.mainloop()
    finally:
        twin.viewer_region = None
        with contextlib.suppress(Exception):  # already destroyed by tick or the window manager
            root.destroy()
