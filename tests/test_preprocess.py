"""The one preprocessing function: raw counts and 8-bit display frames of one scene give nearly the
same input; dtype, dose, dark offset and camera size do not matter; non-square frames keep the
FOV; bad stacks are refused by name."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from temalign import optics
from temalign.clock import SteppedClock
from temalign.estimate import preprocess
from temalign.estimate.preprocess import (
    physics,
    physics_64,
    physics_128,
    preprocess_batch,
    resolve,
    standard,
    standard_64,
    standard_128,
)
from temalign_twin.display import to_display
from temalign_twin.model import Twin
from temalign_twin.settings import TwinSettings

CLEAN = {"camera": {"shot_noise": False, "read_noise": 0.0, "hot_pixel_fraction": 0.0}}


def render(offset: tuple[float, float] = (0, 0), *, width: int = 256, height: int | None = None,
           overrides: dict | None = None, fraction: float = 0.03,
           seed: int = 5) -> tuple[np.ndarray, TwinSettings]:
    """A wobble stack of raw frames rendered directly by the twin (no drift, lens settled)."""
    settings = TwinSettings().updated({"camera": {"width": width, "height": height or width},
                                       "motor": {"start_offset": offset, "position_noise_units": 0.0},
                                       "drift": {"random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0}})
    if overrides:
        settings = settings.updated(overrides)
    twin = Twin(settings, SteppedClock(), seed=seed)
    frames = []
    for c in optics.wobble_values(twin.c1(), fraction):
        twin.set_c1(float(c))
        twin.clock.advance(2.0)
        frames.append(twin.acquire())
    return np.stack(frames), settings


@pytest.mark.parametrize("offset", [(0, 0), (150, -100), (-240, 240)])
def test_raw_and_display_frames_of_one_scene_give_close_inputs(offset: tuple[int, int]) -> None:
    raw, settings = render(offset)
    display = np.stack([to_display(frame, settings.display) for frame in raw])
    assert raw.dtype == np.uint16 and display.dtype == np.uint8
    a, b = standard_128(raw), standard_128(display)
    # the daemon's sources deliver float32 frames: the same levels give the same input
    assert np.array_equal(standard_128(display.astype(np.float32)), b)
    assert np.array_equal(standard_128(raw.astype(np.float32)), a)
    per_frame = np.abs(a - b).mean(axis=(0, 1, 2))
    assert per_frame.max() < 0.05, per_frame
    assert np.abs(a - b).mean() < 0.01
    # a disc with a plateau near 1 on a background near 0, in every frame
    for k in range(7):
        assert a[0, ..., k].max() > 0.8 and np.median(a[0, ..., k]) < 0.02


def test_a_display_with_a_fixed_lut_looks_alike_too() -> None:
    raw, settings = render((100, 50))
    fixed = settings.display.model_copy(update={"contrast": "fixed", "fixed_range": (50.0, 3000.0)})
    display = np.stack([to_display(frame, fixed) for frame in raw])
    assert np.abs(standard_128(raw) - standard_128(display)).mean() < 0.03


def test_dtype_dose_and_dark_offset_do_not_matter() -> None:
    raw, _ = render((80, 40))
    reference = standard_64(raw)
    for variant in (raw.astype(np.float32), raw.astype(np.float64), raw.astype(np.int32),
                    raw.astype(np.float64) * 7.5 + 1000.0, raw.astype(np.float64) * 0.01 - 3.0):
        assert np.abs(standard_64(variant) - reference).max() < 1e-4
    assert reference.shape == (1, 64, 64, 7) and reference.dtype == np.float32


def test_a_twice_the_dose_twin_render_gives_nearly_the_same_input() -> None:
    low, _ = render((120, 0))
    high, _ = render((120, 0), overrides={"beam": {"electrons_per_s": 5e7}, "camera": {"dark_offset": 400.0}})
    assert np.abs(standard_64(low) - standard_64(high)).mean() < 0.01


def test_camera_size_does_not_matter() -> None:
    small, _ = render((100, -60), width=128, overrides=CLEAN)
    large, _ = render((100, -60), width=512, overrides=CLEAN)
    odd, _ = render((100, -60), width=200, overrides=CLEAN)
    ref = standard_64(large)
    assert np.abs(standard_64(small) - ref).mean() < 0.02
    assert np.abs(standard_64(odd) - ref).mean() < 0.02


def test_area_average_not_striding_hot_pixels_and_noise_average_out() -> None:
    stack = np.full((7, 256, 256), 100, dtype=np.uint16)
    stack[:, 64:192, 64:192] = 1100
    hot = stack.copy()
    hot[:, ::37, ::41] = 65535
    a, b = standard_64(stack), standard_64(hot)
    assert a[0, 32, 32, 0] == pytest.approx(1.0, abs=1e-3)
    assert np.abs(a - b).max() <= 2.0 / 16 + 1e-6  # one hot pixel of 16 in a bin, clipped at 2


def test_pixel_edges_are_exact_for_non_multiple_sizes() -> None:
    stack = np.ones((7, 100, 100), dtype=np.float64)
    stack[:, :, :40] = 2.0  # 40 of 100 columns: the edge falls 60 % into output column 25 of 64
    out = standard(stack, 64)
    assert out[0, 10, :25, 0] == pytest.approx(np.ones(25), abs=1e-5)
    assert out[0, 10, 25, 0] == pytest.approx(0.6, abs=1e-4)
    assert out[0, 10, 26:, 0] == pytest.approx(np.zeros(38), abs=1e-5)
    assert out.sum() == pytest.approx(7 * 64 * 25.6, rel=1e-4)


def test_non_square_frames_keep_the_field_of_view() -> None:
    square, _ = render((60, 90), width=256, overrides=CLEAN)
    wide, _ = render((60, 90), width=256, height=192, overrides=CLEAN)
    tall, _ = render((60, 90), width=256, height=320, overrides=CLEAN)
    ref, w, t = standard_64(square), standard_64(wide), standard_64(tall)
    # 192 rows of 256: 32 rows missing at top and bottom = 8 output rows each, padded as background
    assert np.all(w[0, :8] == 0) and np.all(w[0, -8:] == 0)
    assert np.abs(w[0, 8:-8] - ref[0, 8:-8]).mean() < 0.02
    assert np.abs(t - ref).mean() < 0.02  # a taller frame is cropped to the square


def test_deterministic_and_input_untouched() -> None:
    raw, _ = render((30, 30))
    copy = raw.copy()
    assert np.array_equal(standard_128(raw), standard_128(raw))
    assert np.array_equal(raw, copy)


@pytest.mark.parametrize(("stack", "words"), [
    (np.zeros((6, 32, 32)), "(7, H, W)"),
    (np.zeros((32, 32)), "(7, H, W)"),
    (np.zeros((7, 1, 32)), "too small"),
    (np.array([[["a"] * 4] * 4] * 7), "numeric"),
])
def test_wrong_stacks_are_refused_by_name(stack: np.ndarray, words: str) -> None:
    with pytest.raises(ValueError, match=r"\(7, H, W\)" if words == "(7, H, W)" else words):
        standard_64(stack)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_with_their_place(bad: float) -> None:
    stack = np.ones((7, 32, 32), dtype=np.float32)
    stack[3, 4, 5] = bad
    with pytest.raises(ValueError, match=r"NaN or inf.*frame 3, row 4, col 5"):
        standard_64(stack)


def test_resolve_names_and_errors() -> None:
    assert resolve("temalign.estimate.preprocess:standard_128") is standard_128
    with pytest.raises(ValueError, match="module:function"):
        resolve("temalign.estimate.preprocess.standard_128")
    with pytest.raises(ValueError, match="cannot import"):
        resolve("temalign.nonexistent:standard_128")
    with pytest.raises(ValueError, match="has no 'nope'"):
        resolve("temalign.estimate.preprocess:nope")
    with pytest.raises(ValueError, match="not callable"):
        resolve("temalign.estimate.preprocess:STEPS")


def test_batch_stacks_the_tensors() -> None:
    raw, _ = render((0, 0), width=64)
    batch = preprocess_batch([raw, raw.astype(np.float32)], standard_64)
    assert batch.shape == (2, 64, 64, 7) and batch.dtype == np.float32
    assert np.array_equal(batch[0], standard_64(raw)[0])
    with pytest.raises(ValueError, match="no stacks"):
        preprocess_batch([], standard_64)


def test_the_runtime_module_does_not_import_tensorflow() -> None:
    code = ("import sys, temalign.estimate.preprocess, temalign.estimate.model_estimator; "
            "assert not any(m.startswith(('tensorflow', 'keras')) for m in sys.modules), 'TF imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert preprocess.__name__ == "temalign.estimate.preprocess"


# ---- physics: the wobble_physics model's input (docs/model-design.md) ----------------------------

def _reference_physics(stack: np.ndarray, side: int) -> np.ndarray:
    """The design note's original preprocessing (own_models.preprocess_stack as it was measured),
    with the hot-pixel cap at the third-brightest neighbour: an independent oracle for `physics`
    (a full sort of the neighbours, explicit area-weight matrices, median-padded rows)."""
    s = np.asarray(stack, dtype=np.float32)
    p = np.pad(s, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = s.shape[1:]
    third = np.sort([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3) if (i, j) != (1, 1)],
                    axis=0)[-3]  # the third-brightest neighbour
    s = np.minimum(s, third)
    if h < w:
        out = np.broadcast_to(np.median(s.reshape(7, -1), axis=1)[:, None, None], (7, w, w)).copy()
        out[:, (w - h) // 2:(w - h) // 2 + h] = s
        s = out
    elif h > w:
        s = s[:, (h - w) // 2:(h - w) // 2 + w]
    edges = np.linspace(0.0, w, side + 1)
    m = np.zeros((side, w), np.float32)
    for i in range(side):
        lo, hi = edges[i], edges[i + 1]
        for j in range(math.floor(lo), min(w, math.ceil(hi))):
            m[i, j] = min(hi, j + 1) - max(lo, j)
        m[i] /= hi - lo
    small = np.einsum("ih,khw,jw->kij", m, s, m, optimize=True)
    flat = small.reshape(7, -1)
    lo_k, hi_k = flat.shape[1] // 5, min(flat.shape[1] - 1, round(0.999 * flat.shape[1]))
    part = np.partition(flat, (lo_k, hi_k), axis=1)
    bg = part[:, lo_k][:, None, None]
    small = (small - bg) / np.maximum(part[:, hi_k][:, None, None] - bg, 1e-6)
    return np.transpose(small, (1, 2, 0))[None].astype(np.float32)


@pytest.mark.parametrize(("height", "width"), [(256, 256), (192, 192), (384, 384), (512, 512), (200, 200),
                                               (192, 256), (320, 256), (130, 128)])
def test_physics_matches_the_measured_reference(height: int, width: int) -> None:
    raw, _ = render((90, -60), width=width, height=height)
    raw[:, 5, 7] = 60000  # a hot pixel
    for side in (128, 64):
        assert np.abs(physics(raw, side) - _reference_physics(raw, side)).max() < 1e-5


@pytest.mark.parametrize("cluster", [[(40, 40)], [(40, 40), (40, 41)], [(40, 40), (40, 41), (41, 41)],
                                     [(40, 40), (41, 40), (42, 40)]])
def test_physics_removes_hot_pixels_and_small_clusters(cluster: list[tuple[int, int]]) -> None:
    """Up to three adjacent hot pixels vanish (two adjacent ones once became a dim frame's "disc")."""
    clean, _ = render((90, -60))
    hot = clean.copy()
    for r, c in cluster:
        hot[:, r, c] = 65535
    assert np.abs(physics(hot, 128) - physics(clean, 128)).max() < 0.05


def test_physics_128_shape_dtype_invariance_and_no_clip() -> None:
    raw, _ = render((120, -80))
    x = physics_128(raw)
    assert x.shape == (1, 128, 128, 7) and x.dtype == np.float32
    assert physics_64(raw).shape == (1, 64, 64, 7)
    for variant in (raw.astype(np.float32), raw.astype(np.float64), raw.astype(np.int32),
                    raw.astype(np.float64) * 7.5 + 1000.0):
        assert np.abs(physics_128(variant) - x).max() < 1e-4
    # per frame: background (20th percentile) at 0, the 99.9th percentile at 1, and nothing clipped
    flat = x[0].reshape(-1, 7)
    ordered = np.sort(flat, axis=0)
    assert np.abs(ordered[len(flat) // 5]).max() < 1e-6
    assert np.abs(ordered[round(0.999 * len(flat))] - 1.0).max() < 1e-5
    assert flat.min() < 0.0 and flat.max() > 1.0  # noise below the background, peaks above the top
    assert resolve("temalign.estimate.preprocess:physics_128") is physics_128


def test_physics_caps_a_hot_pixel_at_its_neighbours() -> None:
    stack = np.full((7, 256, 256), 100.0, dtype=np.float32)
    stack[:, 64:192, 64:192] = 1100.0
    hot = stack.copy()
    hot[:, 20, 30] = 65535.0  # isolated, on the background
    hot[:, 128, 128] = 65535.0  # isolated, on the disc
    assert np.array_equal(physics_128(hot), physics_128(stack))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_physics_refuses_nan_and_bad_shapes(bad: float) -> None:
    stack = np.ones((7, 32, 32), dtype=np.float32)
    stack[2, 3, 4] = bad
    with pytest.raises(ValueError, match=r"NaN or inf.*frame 2, row 3, col 4"):
        physics_128(stack)
    with pytest.raises(ValueError, match=r"\(7, H, W\)"):
        physics_128(np.zeros((6, 32, 32)))


def test_physics_is_exact_on_a_high_dynamic_range_stack() -> None:
    """At a non-integer ratio (192 -> 128 px) the area average reads cumulative sums along a row:
    unclipped, a focused spot can be 1e4 times the frame's top level, so they are float64 here
    (float32, as `standard` uses on its clipped frames, put 1 % of the peak onto the background)."""
    yy, xx = np.mgrid[0:192, 0:192]
    stack = 50.0 + np.random.default_rng(4).normal(0.0, 5.0, (7, 192, 192))
    for k in range(7):
        r = 1.5 + 12.0 * abs(k - 3)
        stack[k] += 1.2e6 / r**2 * ((yy - 90.3) ** 2 + (xx - 101.7) ** 2 < r * r)
    a, b = physics(stack, 128), _reference_physics(stack, 128)
    assert np.abs(a).max() > 1e4  # the focused spot, far above the 99.9th percentile
    assert (np.abs(a - b) / np.maximum(1.0, np.abs(b))).max() < 1e-5


# ---- spots: the spot network's input --------------------------------------------------------------

def test_spots_is_bounded_per_frame_and_blind_to_dtype_dose_and_offset() -> None:
    raw, _ = render((120, -80))
    x = preprocess.spots_128(raw)
    assert x.shape == (1, 128, 128, 7) and x.dtype == np.float32
    flat = x[0].reshape(-1, 7)
    assert np.abs(np.sort(flat, axis=0)[len(flat) // 5]).max() < 1e-6  # the background at 0
    assert np.abs(flat.max(axis=0) - 1.0).max() < 1e-6  # each frame's brightest pixel at 1
    for variant in (raw.astype(np.float32), raw.astype(np.int32), raw.astype(np.float64) * 7.5 + 1000.0):
        assert np.abs(preprocess.spots_128(variant) - x).max() < 1e-4
    assert resolve("temalign.estimate.preprocess:spots_128") is preprocess.spots_128


@pytest.mark.parametrize("cluster", [[(40, 40)], [(40, 40), (40, 41)], [(40, 40), (41, 41)]])
def test_spots_caps_hot_pixels_before_they_set_the_scale(cluster: list[tuple[int, int]]) -> None:
    """A hot pixel or a pair (one pixel once binned) would otherwise be the frame's brightest
    and squash the disc towards 0."""
    clean, _ = render((90, -60))
    hot = clean.copy()
    for r, c in cluster:
        hot[:, r, c] = 65535
    assert np.abs(preprocess.spots_128(hot) - preprocess.spots_128(clean)).max() < 0.05


@pytest.mark.parametrize(("width", "height"), [(256, 256), (512, 512), (200, 200), (256, 192), (128, 160)])
def test_spots_takes_any_camera_to_the_same_field_of_view(width: int, height: int) -> None:
    """Block means for a camera that divides the input, exact pixel overlaps otherwise; a non-square
    frame sits in the square FOV like `standard` puts it (padded rows at the background)."""
    reference, _ = render((150, 100), overrides=CLEAN)
    raw, _ = render((150, 100), width=width, height=height, overrides=CLEAN)
    x, ref = preprocess.spots_128(raw)[0], preprocess.spots_128(reference)[0]
    centre = (np.arange(128) + 0.5) / 128 - 0.5
    for k in (0, 6):  # the disc's centroid lands on the same place of the field
        weights = np.clip(x[:, :, k], 0, None)
        rweights = np.clip(ref[:, :, k], 0, None)
        got = (weights.sum(0) @ centre / weights.sum(), weights.sum(1) @ centre / weights.sum())
        want = (rweights.sum(0) @ centre / rweights.sum(), rweights.sum(1) @ centre / rweights.sum())
        assert np.allclose(got, want, atol=1.5 / 128), (width, height, k, got, want)


def test_spots_refuses_what_it_cannot_use_by_name() -> None:
    with pytest.raises(ValueError, match="shape"):
        preprocess.spots_128(np.zeros((5, 64, 64)))
    bad = np.zeros((7, 64, 64))
    bad[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="frame 2, row 3, col 4"):
        preprocess.spots_128(bad)
