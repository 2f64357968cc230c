"""The one way a wobble stack becomes a model's input, shared by training (tools/) and the daemon.

A model card names its function as "temalign.estimate.preprocess:standard_128"; the daemon calls
that same function on every stack, so the model sees exactly what it was trained on. numpy only.

What it does to a `(7, H, W)` stack of any numeric dtype and size:

1. Per frame, a robust background level `b` (the median: the discs of a wobble cover well under
   half of the frame) and a noise level `s` (the MAD; at least one level for integer data,
   integral floats included, since the sources deliver counts and grey levels as float32).
2. Per frame, a robust signal level `L`: the median of the pixels more than 5 s above `b`; in a
   frame whose brightest 2x2 block `h` is within that of the noise (a focused spot that an
   auto-contrast display stretched the noise around) `L = h` instead. Each frame becomes
   `clip((x - f) / (L - f), 0, 2)` with the floor `f = b + min(2 s, (h - b) / 2)`: background and
   its noise 0, the disc's plateau 1, fringes and the saturated focused spot bounded, hot pixels
   bounded before they are averaged.
3. The frame is placed in a square of side W (the FOV is 1.0 wide, twin.md): rows are padded
   with background or cropped, symmetrically; then area-averaged to `side x side` (exact pixel
   overlaps, so any ratio works and noise and hot pixels average out instead of aliasing).

Why per frame and not per stack: raw counts keep the beam-current law (mean intensity ~ 1/r^2
between frames), but an 8-bit display with auto-contrast stretches every frame on its own and an
independent renderer has its own dose, dark level and contrast. Normalising each frame to its own
plateau makes raw and display frames of the same scene nearly equal and removes dose, dark offset
and contrast; what identifies the wobble step is kept in the geometry (disc centre, size, edge),
which is what the alignment depends on.

`physics` (`physics_128`, `physics_64`) is the input of the `wobble_physics` model
(docs/model-design.md): the same checks, square placement and area averaging, but hot pixels capped
at the camera's sampling first, levels from two percentiles after resampling, and no clip (the
model finds each disc's plateau itself).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from typing import cast

import numpy as np

STEPS = 7
STAT_SAMPLES = 1 << 16
"""Statistics are taken on at most this many pixels per frame (an even 2-D stride), which at
256 px is the whole frame; larger cameras sample the same FOV more finely, so features keep their
share of samples."""
BACKGROUND_SAMPLES = 1 << 14
CLIP_HIGH = 2.0
NOISE_K = 5.0
"""A pixel is signal above `NOISE_K` noise sigmas (or above half the peak, in a frame whose
peak is within that of the noise: a display that auto-stretched a focused spot)."""
FLOOR_K = 2.0
"""What maps to 0: the background plus this many noise sigmas, so stretched noise stays near 0."""

Preprocess = Callable[[np.ndarray], np.ndarray]


def _check(stack: np.ndarray) -> np.ndarray:
    array = np.asarray(stack)
    if array.ndim != 3 or array.shape[0] != STEPS:
        raise ValueError(f"a wobble stack is ({STEPS}, H, W), got shape {array.shape}")
    if array.shape[1] < 2 or array.shape[2] < 2:
        raise ValueError(f"frames of {array.shape[2]}x{array.shape[1]} pixels are too small")
    if array.dtype.kind not in "uifb":
        raise ValueError(f"a wobble stack must be numeric, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"the stack holds NaN or inf (first at frame {bad[0]}, row {bad[1]}, col {bad[2]})")
    return array


def _median(values: np.ndarray) -> np.ndarray:
    """Median along the last axis (the lower middle element: np.median's copies cost more than the
    statistics here are worth)."""
    mid = values.shape[-1] // 2
    return np.partition(values, mid, axis=-1)[..., mid]


def _sample(frames: np.ndarray, limit: int) -> np.ndarray:
    """The frames on an even 2-D stride that leaves at most about `limit` pixels each."""
    stride = max(1, math.ceil(math.sqrt(frames.shape[1] * frames.shape[2] / limit)))
    return frames[:, ::stride, ::stride]


def _levels(frames: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame floor (what maps to 0) and scale (floor to signal plateau)."""
    n = frames.shape[0]
    quick = _sample(frames, BACKGROUND_SAMPLES).reshape(n, -1)
    background = _median(quick)
    noise = 1.4826 * _median(np.abs(quick - background[:, None]))
    if integer or np.array_equal(quick, np.rint(quick)):
        noise = np.maximum(noise, 1.0)  # integer levels: counts, or grey levels passed as floats
    sample = _sample(frames, STAT_SAMPLES)
    sh, sw = (sample.shape[1] // 2) * 2, (sample.shape[2] // 2) * 2
    blocks = 0.25 * (sample[:, 0:sh:2, 0:sw:2] + sample[:, 1:sh:2, 0:sw:2]
                     + sample[:, 0:sh:2, 1:sw:2] + sample[:, 1:sh:2, 1:sw:2])
    high = blocks.reshape(n, -1).max(axis=1)
    span = np.maximum(high - background, 0.0)
    noisy = NOISE_K * noise > 0.5 * span
    threshold = background + np.where(noisy, 0.5 * span, NOISE_K * noise)
    flat = sample.reshape(n, -1)
    level = high.astype(np.float64)
    for k in range(n):
        if not noisy[k]:
            above = flat[k][flat[k] > threshold[k]]
            if above.size:
                level[k] = float(_median(above))
    floor = background + np.minimum(FLOOR_K * noise, 0.5 * span)
    tiny = 1e-6 * np.maximum(np.abs(background), 1.0)
    return floor, np.maximum(level - floor, tiny)


def _area_weights(edges: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Index and fraction to read the cumulative sum at fractional pixel `edges` (clipped to the
    image: outside counts as zero, i.e. background after normalisation)."""
    e = np.clip(edges, 0.0, float(length))
    j = np.minimum(np.floor(e).astype(np.intp), length - 1)
    return j, (e - j).astype(np.float32)


def _resample_axis(data: np.ndarray, axis: int, start: float, width: float, side: int,
                   wide: bool = False) -> np.ndarray:
    """Area average along `axis` of bins `[start + i w, start + (i + 1) w)`, i < side, w = width/side.
    `wide`: float64 cumulative sums at any length (unclipped data, where a peak can be thousands of
    times the level that matters, would otherwise carry float32 rounding of its sum along the row)."""
    length = data.shape[axis]
    step = width / side
    if start == 0.0 and width == length and length % side == 0:
        k = length // side
        if k == 1:
            return data
        index = [slice(None)] * data.ndim
        index[axis] = slice(0, length, k)
        total = data[tuple(index)].copy()  # added to in place: no array per step
        for offset in range(1, k):
            index[axis] = slice(offset, length, k)
            total += data[tuple(index)]
        total *= np.float32(1.0 / k)
        return total
    cum = np.cumsum(data, axis=axis, dtype=np.float64 if wide or length > 2048 else np.float32)
    pad = [(0, 0)] * data.ndim
    pad[axis] = (1, 0)
    cum = np.pad(cum, pad)
    j, frac = _area_weights(start + step * np.arange(side + 1), length)
    lo = np.take(cum, j, axis=axis)
    hi = np.take(cum, j + 1, axis=axis)
    shape = [1] * data.ndim
    shape[axis] = side + 1
    at = lo + frac.reshape(shape) * (hi - lo)
    binned: np.ndarray = (np.diff(at, axis=axis) / step).astype(np.float32)
    return binned


def _prebin(array: np.ndarray, side: int) -> np.ndarray:
    """float32 frames, first area-averaged by an integer factor when the camera has at least eight
    times the output's pixels per side: a 4096 px stack is normalised at 512 px for a 128 px
    input, at a thirtieth of the cost. At least 4 x 4 normalised pixels still go into each output
    pixel, so a hot pixel, clipped, weighs no more than at a lower sampling."""
    n, h, w = array.shape
    factor = w // (4 * side)
    while factor >= 2 and (h % factor or w % factor):
        factor -= 1
    if factor < 2:
        return array.astype(np.float32)
    rows = array.reshape(n, h // factor, factor, w).sum(axis=2, dtype=np.float32)
    binned: np.ndarray = rows.reshape(n, h // factor, w // factor, factor).sum(axis=3, dtype=np.float32)
    binned *= np.float32(1.0 / (factor * factor))
    return binned


def standard(stack: np.ndarray, side: int) -> np.ndarray:
    """`stack` (7, H, W), any numeric dtype, raw counts or 8-bit display frames, as the model input
    `(1, side, side, 7)` float32, channels last (frame k is channel k)."""
    _check_side(side)
    array = _check(stack)
    integer = array.dtype.kind in "uib"
    frames = _prebin(array, side)
    floor, scale = _levels(frames, integer)
    frames -= floor.astype(np.float32)[:, None, None]
    frames *= (1.0 / scale).astype(np.float32)[:, None, None]
    np.clip(frames, 0.0, CLIP_HIGH, out=frames)
    frames = _square(frames, side)
    return np.ascontiguousarray(frames.transpose(1, 2, 0))[None]


def _check_side(side: int) -> None:
    if isinstance(side, bool) or not isinstance(side, int) or side < 4:
        raise ValueError(f"side must be an integer >= 4, got {side!r}")


def _square(frames: np.ndarray, side: int, wide: bool = False) -> np.ndarray:
    """(n, H, W) frames placed in a square of side W (the FOV is 1.0 wide, twin.md; rows padded
    with zeros or cropped, symmetrically) and area-averaged to (n, side, side) (`wide`: see
    `_resample_axis`)."""
    _, h, w = frames.shape
    frames = _resample_axis(frames, 2, 0.0, float(w), side, wide)
    return _resample_axis(frames, 1, (h - w) / 2.0, float(w), side, wide)


def standard_64(stack: np.ndarray) -> np.ndarray:
    """`standard` at 64 x 64."""
    return standard(stack, 64)


def standard_128(stack: np.ndarray) -> np.ndarray:
    """`standard` at 128 x 128."""
    return standard(stack, 128)


def standard_256(stack: np.ndarray) -> np.ndarray:
    """`standard` at 256 x 256 (the paper's input size)."""
    return standard(stack, 256)


HOT_RANK = 3
"""A pixel is capped at the HOT_RANK-th brightest of its 8 neighbours: a hot pixel, or a cluster of
up to three (each with at most two hot neighbours), vanishes, while a disc's edge pixel (three or
more bright neighbours) keeps its level. The brightest alone (rank 1) left two adjacent hot pixels
standing, and such a pair, twenty times the plateau, became the "disc" of a dim wide frame."""


def _clamp_hot(frames: np.ndarray, rank: int = HOT_RANK) -> np.ndarray:
    """Each pixel capped at the `rank`-th brightest of its 8 neighbours, at the camera's own
    sampling, before resampling can smear hot pixels into a larger cluster."""
    p = np.pad(frames, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = frames.shape[1:]
    top = [np.full_like(frames, -np.inf) for _ in range(rank)]  # the rank largest, descending
    low, spare = np.empty_like(frames), np.empty_like(frames)  # in place: no array per step
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            if di == 1 and dj == 1:
                continue
            v = p[:, di:di + h, dj:dj + w]
            for k in range(rank):  # insert v; what it displaces moves down a rank
                if k < rank - 1:
                    np.minimum(top[k], v, out=low)
                np.maximum(top[k], v, out=top[k])
                if k < rank - 1:
                    v = low
                    low, spare = spare, low
    clamped: np.ndarray = np.minimum(frames, top[rank - 1])
    return clamped


def physics(stack: np.ndarray, side: int) -> np.ndarray:
    """`stack` (7, H, W), any numeric dtype, as the input `(1, side, side, 7)` float32 of the
    `wobble_physics` model (tools/trainkit/own_models.py, docs/model-design.md): hot pixels and
    small clusters of them capped at the camera's own sampling (HOT_RANK), the frame placed in a
    square and area-averaged like `standard` (padded rows hold the frame's median), each frame's
    background (its 20th percentile) subtracted and the frame divided by its 99.9th percentile
    above that. No clipping: the model finds the
    disc's plateau itself, and a clip (as in `standard`, at 2x a level it estimates) can merge a
    halo into the disc."""
    _check_side(side)
    frames = _clamp_hot(_check(stack).astype(np.float32))
    n, h, w = frames.shape
    if h != w:  # padded rows read as zeros: make the frame's median the zero, so they hold it
        frames = frames - np.median(frames.reshape(n, -1), axis=1).astype(np.float32)[:, None, None]
    small = _square(frames, side, wide=True)  # unclipped: a saturated spot can be 1e4 x the top
    flat = small.reshape(n, -1)
    count = flat.shape[1]
    lo_k, hi_k = count // 5, min(count - 1, round(0.999 * count))  # 20th and 99.9th percentiles
    part = np.partition(flat, (lo_k, hi_k), axis=1)  # one partial sort for both levels
    background = part[:, lo_k][:, None, None]
    top = part[:, hi_k][:, None, None] - background
    small = (small - background) / np.maximum(top, 1e-6)
    return np.ascontiguousarray(small.transpose(1, 2, 0))[None].astype(np.float32)


def physics_64(stack: np.ndarray) -> np.ndarray:
    """`physics` at 64 x 64."""
    return physics(stack, 64)


def physics_128(stack: np.ndarray) -> np.ndarray:
    """`physics` at 128 x 128 (the `wobble_physics` model's recommended input)."""
    return physics(stack, 128)


SPOT_HOT_RANK = 2
"""`spots` caps each pixel at the second brightest of its 8 neighbours, after binning: a camera's
hot pixel or pair becomes one output pixel, which this removes; a disc's edge keeps its level."""


def spots(stack: np.ndarray, side: int) -> np.ndarray:
    """`stack` (7, H, W), any numeric dtype, as the input `(1, side, side, 7)` float32 of the
    learned spot network (tools/trainkit/spotnet.py, docs/model-design.md): area-averaged into the
    square FOV like `standard` (padded rows hold the frame's median), hot pixels capped at the
    output's sampling (SPOT_HOT_RANK), then each frame shifted so that its 20th percentile (the
    background) is 0 and scaled so that its brightest pixel is 1. Bounded and cheap (about a
    tenth of `physics` at 256 px): the network, not a threshold, tells a disc from a fringe."""
    _check_side(side)
    array = _check(stack)
    n, h, w = array.shape
    if h == w and w % side == 0:  # the usual camera: block means straight to the input's size
        binned = _square(array.astype(np.float32, copy=False), side)
    else:
        frames = _prebin(array, side)
        if h != w:  # padded rows read as zeros: make the frame's median the zero, so they hold it
            frames = frames - _median(_sample(frames, BACKGROUND_SAMPLES).reshape(n, -1))[:, None, None]
        binned = _square(frames, side)
    small = _clamp_hot(binned, SPOT_HOT_RANK)
    flat = small.reshape(n, -1)
    lo_k = flat.shape[1] // 5
    background = np.partition(flat, lo_k, axis=1)[:, lo_k]
    top = flat.max(axis=1) - background
    small -= background[:, None, None]
    small *= (1.0 / np.maximum(top, 1e-6)).astype(np.float32)[:, None, None]
    return np.ascontiguousarray(small.transpose(1, 2, 0))[None]


def spots_128(stack: np.ndarray) -> np.ndarray:
    """`spots` at 128 x 128 (the spot network's input)."""
    return spots(stack, 128)


def preprocess_batch(stacks: Iterable[np.ndarray], fn: Preprocess) -> np.ndarray:
    """`fn` over every stack, as one (N, side, side, 7) float32 array."""
    tensors = [fn(stack) for stack in stacks]
    if not tensors:
        raise ValueError("no stacks to preprocess")
    return np.concatenate(tensors, axis=0).astype(np.float32, copy=False)


def resolve(name: str) -> Preprocess:
    """The function a model card names as "module:function"; ValueError says what is wrong."""
    if not isinstance(name, str) or name.count(":") != 1:
        raise ValueError(f"a preprocessing function is named 'module:function', got {name!r}")
    module_name, attr = name.split(":")
    if not module_name or not attr:
        raise ValueError(f"a preprocessing function is named 'module:function', got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"preprocessing {name!r}: cannot import {module_name!r} ({error})") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"preprocessing {name!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"preprocessing {name!r} is not callable ({type(fn).__name__})")
    return cast(Preprocess, fn)  # what it returns is checked by its caller (ModelEstimator.tensor)
