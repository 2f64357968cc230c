"""Where the beam is in one frame: a robust classical measurement of the spot.

Works on raw detector counts and on 8-bit display frames of any size, because it only relies on
order statistics of the frame itself: background and noise from the low percentiles, the disc's
level from the pixels well above them. Steps: hot pixels out (a pixel far above its neighbours
takes their second largest value), background off, a soft mask that ramps from a quarter to three
quarters of the disc's level (so the edge contributes sub-pixel information and the texture inside
does not), its centroid and area. A disc cut by the detector's border is measured by a circle fitted to its
visible edge, which also gives the fraction on the detector.

Coordinates follow temalign/optics.py: FOV, origin at the image centre, x right, y down, 1.0 = width,
pixel (i, j) centred at ((j + 0.5) / W - 0.5, (i + 0.5) / W - 0.5 H / W)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from temalign.frames import WobbleStack

MAX_SIDE = 1024
"""Larger frames are binned to at most this many pixels a side first (plenty for the geometry)."""
MIN_PIXELS = 4
"""Fewer pixels above half the level are clutter (a pair of hot pixels), not a spot."""
MAX_SCATTER = 2.0
"""A disc's second moment is area / (2 pi); a mask scattered more widely than this many times
that is not a spot."""
MAX_GAP_FRACTION = 0.25
"""An elongated blob may be cut across (a biprism wire's shadow, hologram fringes) by gaps up to
this fraction of its length and still be one beam."""
_Z10, _Z30 = -1.2815516, -0.5244005  # standard normal quantiles at 10 % and 30 %


@dataclass(frozen=True)
class Spot:
    """One frame's spot. `found` is False for a frame without a beam (then centre is nan).

    centre, radius: FOV; radius is the equivalent-disc radius (of the fitted circle when the disc
    is cut by the border). total: background-subtracted signal under the mask, image units.
    on_detector: fraction of the disc's area inside the frame (nan when a sliver at the border
    cannot be measured: centre and radius are then those of the sliver). saturated_fraction:
    fraction of the disc's pixels at the frame's clipping level. background, noise, level (the
    disc's plateau above the background): image units. truncated: the disc touches the border."""

    found: bool
    centre: tuple[float, float]
    radius: float
    total: float
    on_detector: float
    saturated_fraction: float
    background: float
    noise: float
    level: float
    truncated: bool = False


def _bin(image: np.ndarray, k: int) -> np.ndarray:
    """k x k block means (trailing rows and columns that do not fill a block are dropped)."""
    if k == 1:
        return image.astype(np.float32, copy=False)
    h, w = image.shape
    hh, ww = h // k * k, w // k * k
    means: np.ndarray = image[:hh, :ww].astype(np.float32).reshape(hh // k, k, ww // k, k).mean(axis=(1, 3))
    return means


_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _background(img: np.ndarray) -> tuple[float, float]:
    """Background level and noise (rms) from the 10/20/30 % order statistics: right whenever at
    least a third of the frame is background, whatever the spot does."""
    flat = img.reshape(-1)
    if flat.size > 1 << 14:
        flat = flat[:: max(2, flat.size // (1 << 15)) | 1]  # an odd stride samples rows evenly
    n = flat.size
    low = np.partition(flat, (n // 10, n // 5, 3 * n // 10))
    p10, p20, p30 = float(low[n // 10]), float(low[n // 5]), float(low[3 * n // 10])
    noise = max((p30 - p10) / (_Z30 - _Z10), 1e-6)
    return p20 + 0.8416212 * noise, noise


def _remove_hot(img: np.ndarray, background: float, noise: float) -> np.ndarray:
    """Pixels far above the second largest of their 8 neighbours take that value; a pair of
    adjacent hot pixels (common on large detectors) still stands out against it. Only pixels
    well above the background are examined, so large frames stay cheap."""
    w = img.shape[1]
    flat = img.reshape(-1)
    cand = np.flatnonzero(flat > background + 6.0 * noise)
    if cand.size == 0:
        return img
    padded = np.pad(img.astype(np.float32, copy=False), 1, constant_values=-np.inf).reshape(-1)
    r, c = np.divmod(cand, w)
    at = (r + 1) * (w + 2) + (c + 1)
    first = np.full(cand.size, -np.inf, dtype=np.float32)
    second = first.copy()
    for di, dj in _NEIGHBOURS:
        v = padded[at + di * (w + 2) + dj]
        np.maximum(second, np.minimum(first, v), out=second)
        np.maximum(first, v, out=first)
    value = flat[cand]
    excess = value - second
    hot = (excess > 6.0 * noise) & (excess > 0.6 * (value - background))
    if not hot.any():
        return img
    out = img.astype(np.float32, copy=True)
    out.reshape(-1)[cand[hot]] = second[hot]
    return out


def _box3(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    rows = p[0:h + 2, 0:w] + p[0:h + 2, 1:w + 1] + p[0:h + 2, 2:w + 2]
    box: np.ndarray = (rows[0:h] + rows[1:h + 1] + rows[2:h + 2]) / 9.0
    return box


def _shift_any(mask: np.ndarray) -> np.ndarray:
    """Pixels with at least one 4-neighbour in `mask`."""
    out = np.zeros_like(mask)
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _fit_circle(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float] | None:
    """Algebraic (Kasa) circle fit; None if degenerate."""
    if xs.size < 8:
        return None
    mx, my = xs.mean(), ys.mean()
    u, v = xs - mx, ys - my
    a = np.column_stack([u, v, np.ones_like(u)])
    b = -(u * u + v * v)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = -sol[0] / 2, -sol[1] / 2
    r2 = cx * cx + cy * cy - sol[2]
    if not r2 > 0:
        return None
    return float(cx + mx), float(cy + my), float(math.sqrt(r2))


def _one_elongated_blob(wgt: np.ndarray, core: np.ndarray, cx: float, cy: float, area: float) -> bool:
    """Whether a mask too spread out for a round disc is one elongated blob: a line focus or the
    ellipse of astigmatic (stigmated) illumination, which is a beam, not clutter. An ellipse's
    second-moment matrix has determinant (area / 4 pi)^2 at any aspect ratio, where scattered
    noise has far more; and along its long axis the blob has no long gap (two spots in a row
    would)."""
    ii, jj = np.nonzero(wgt)
    weights = wgt[ii, jj]
    dx, dy = jj - cx, ii - cy
    sxx = float((weights * dx * dx).sum()) / area
    syy = float((weights * dy * dy).sum()) / area
    sxy = float((weights * dx * dy).sum()) / area
    det = sxx * syy - sxy * sxy
    if not (det > 0.0 and 4.0 * math.pi * math.sqrt(det) <= MAX_SCATTER * area):
        return False
    angle = 0.5 * math.atan2(2.0 * sxy, sxx - syy)
    ci, cj = np.nonzero(core)
    along = np.floor((cj - cx) * math.cos(angle) + (ci - cy) * math.sin(angle)).astype(np.int64)
    empty = np.bincount(along - along.min()) == 0
    if not empty.any():
        return True
    # the longest run of empty rows across the long axis: a wire's shadow or fringes cut a beam
    # by a few pixels, two separate spots leave a gap about as long as themselves
    edges = np.diff(np.concatenate(([0], empty.astype(np.int8), [0])))
    longest = int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
    return bool(longest <= MAX_GAP_FRACTION * empty.size)


def _not_found(background: float, noise: float) -> Spot:
    return Spot(False, (math.nan, math.nan), math.nan, 0.0, 0.0, 0.0, background, noise, 0.0)


def measure_spot(image: np.ndarray) -> Spot:
    """Measure the beam spot in one 2-D frame (any numeric dtype, any size).

    A faint spot that is not found at full sampling is looked for again in 2x2, 4x4... binned
    frames (down to 64 px a side): a wide disc at low dose on a large camera has only a few
    electrons a pixel."""
    if image.ndim != 2 or min(image.shape) < 4:
        raise ValueError(f"a frame is 2-D and at least 4 x 4, got shape {image.shape}")
    k = max(1, math.ceil(max(image.shape) / MAX_SIDE))
    if k == 1:
        spot = _measure(image.astype(np.float32, copy=False), 1, image.shape)
        if spot.found or min(image.shape) < 256:
            return spot
        k = 2
    clean = _remove_hot(image.astype(np.float32, copy=False), *_background(image))
    while True:
        binned = _bin(clean, k)
        spot = _measure(binned, k, image.shape)
        if spot.found or min(binned.shape) < 128:
            return spot
        k *= 2


def _level(g: np.ndarray, sigma: float, smooth: bool) -> tuple[np.ndarray, float] | None:
    """The disc's level in `g` (background off) if the disc stands clear of the noise there: the
    raw frame when its plateau is clean, else the 3x3-smoothed one (faint discs, tiny spots on a
    noisy display)."""
    flat = g.reshape(-1)
    bright = flat[flat > 6.0 * sigma]
    if bright.size < 5:
        return None
    peak = float(np.partition(bright, bright.size - 5)[-5:].mean())
    level = float(np.median(flat[flat > 0.3 * peak]))
    if not (peak > 8.0 * sigma and level > 10.0 * sigma):
        return None
    if not smooth:
        inner = g > 0.5 * level
        diffs = np.abs(np.diff(g, axis=1))[inner[:, 1:] & inner[:, :-1]]
        if diffs.size and level < 6.0 * float(np.median(diffs)) / 0.954:
            return None
    return g, level


def _measure(img: np.ndarray, k: int, shape: tuple[int, ...]) -> Spot:
    height, width = shape
    h, w = img.shape
    background, noise = _background(img)
    img = _remove_hot(img, background, noise)
    top_level = float(img.max())
    f = img - background
    chosen = _level(f, noise, smooth=False) or _level(_box3(f), noise / 3.0, smooth=True)
    if chosen is None:
        return _not_found(background, noise)
    g, level = chosen
    wgt = np.clip(2.0 * g / level - 0.5, 0.0, 1.0)
    core = wgt >= 0.5
    core &= _box3(core.astype(np.float32)) > 2.5 / 9.0  # no isolated noise pixels
    if np.count_nonzero(core) < MIN_PIXELS:
        return _not_found(background, noise)
    support = _shift_any(core) | core
    wgt = np.where(support, wgt, 0.0)
    area = float(wgt.sum())
    if area <= 0.0:
        return _not_found(background, noise)

    rows = np.arange(h, dtype=np.float64)
    cols = np.arange(w, dtype=np.float64)
    col_sums, row_sums = wgt.sum(axis=0), wgt.sum(axis=1)
    cx = float((col_sums * cols).sum() / area)
    cy = float((row_sums * rows).sum() / area)
    spread2 = float((col_sums * (cols - cx) ** 2).sum() + (row_sums * (rows - cy) ** 2).sum()) / area
    radius_px = math.sqrt(area / math.pi)
    on_detector = 1.0
    edge_rows = core[0].any() or core[-1].any()
    edge_cols = core[:, 0].any() or core[:, -1].any()
    truncated = bool(edge_rows or edge_cols)
    if not truncated and 2.0 * math.pi * spread2 > MAX_SCATTER * area \
            and not _one_elongated_blob(wgt, core, cx, cy, area):
        return _not_found(background, noise)  # not one blob: noise or clutter passed the threshold
    if truncated:
        boundary = (core & _shift_any(~core)) | (~core & _shift_any(core))
        boundary[:2] = boundary[-2:] = False
        boundary[:, :2] = boundary[:, -2:] = False
        ii, jj = np.nonzero(boundary)
        fit = _fit_circle(jj.astype(np.float64), ii.astype(np.float64))
        if fit is not None and fit[2] < 4.0 * max(h, w):
            cx, cy, radius_px = fit
            on_detector = min(1.0, area / (math.pi * radius_px**2))
        else:
            on_detector = math.nan

    sat = img >= top_level
    n_sat = int(np.count_nonzero(sat & core))
    core_n = int(np.count_nonzero(core))
    saturated = n_sat / core_n if n_sat >= 3 and core_n else 0.0
    total = float(f[support].sum()) * k * k

    # binned pixel (i, j) is centred on original pixel k*i + (k-1)/2
    col = k * cx + (k - 1) / 2
    row = k * cy + (k - 1) / 2
    x = (col + 0.5) / width - 0.5
    y = (row + 0.5) / width - 0.5 * height / width
    return Spot(True, (x, y), radius_px * k / width, total, on_detector, saturated, background, noise,
                level, truncated)


def measure_stack(stack: WobbleStack) -> list[Spot]:
    """The spot of each frame of a stack."""
    return [measure_spot(image) for image in stack.images]
