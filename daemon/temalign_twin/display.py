"""A camera frame as the camera software shows it on screen: contrast stretch, gamma, 8 bits.

The screen-capture path (paper, section 2) sees only this, never the counts, so the twin's
live view must lose what a real display loses: the dynamic range above the white point (the
focused spot is flat white), the levels below the black point, and everything finer than one
grey level."""

from __future__ import annotations

import numpy as np

from temalign_twin.settings import DisplaySettings

PERCENTILE_SAMPLES = 1 << 18
"""Auto-contrast reads its percentiles from at most this many pixels (evenly strided): a 4096 px
frame then costs a few milliseconds, and the levels differ from the full frame's by far less
than one grey level."""


def contrast_limits(counts: np.ndarray, settings: DisplaySettings) -> tuple[float, float]:
    """The counts shown as black and as white."""
    if settings.contrast == "fixed":
        lo, hi = settings.fixed_range
    else:
        flat = counts.reshape(-1)
        if flat.size > PERCENTILE_SAMPLES:
            flat = flat[:: flat.size // PERCENTILE_SAMPLES | 1]
        lo, hi = np.percentile(flat, settings.auto_percentiles)
    return float(lo), float(hi)


def to_display(counts: np.ndarray, settings: DisplaySettings) -> np.ndarray:
    """8-bit grey levels of a 2-D frame: counts at or below the black point are 0, at or above the
    white point 255, in between `255 * v ** (1 / gamma)` (v the position between the two), rounded.

    A flat frame (white point not above the black point) shows as black, as a stretch of zero
    width would."""
    if counts.ndim != 2:
        raise ValueError(f"a frame is 2-D, got shape {counts.shape}")
    lo, hi = contrast_limits(counts, settings)
    if not hi > lo:
        return np.zeros(counts.shape, dtype=np.uint8)
    v = (counts.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(v, 0.0, 1.0, out=v)
    if settings.gamma != 1.0:
        np.power(v, np.float32(1.0 / settings.gamma), out=v)
    v *= 255.0
    grey: np.ndarray = np.rint(v, out=v).astype(np.uint8)
    return grey


def zoom_nearest(image: np.ndarray, zoom: float) -> np.ndarray:
    """`image` magnified by `zoom` (any factor) with nearest-neighbour sampling, as a viewer does:
    screen pixel s shows camera pixel floor((s + 0.5) / zoom), so the picture keeps its geometry
    (the centre of the image stays the centre, a FOV coordinate means the same on both)."""
    h, w = image.shape[:2]
    out_h, out_w = max(1, round(h * zoom)), max(1, round(w * zoom))
    rows = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.intp), w - 1)
    zoomed: np.ndarray = image[rows[:, None], cols[None, :]]
    return zoomed
