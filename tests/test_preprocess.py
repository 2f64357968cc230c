"""The one preprocessing function: raw counts and 8-bit display frames of one scene give nearly the
same input; dtype, dose, dark offset and camera size do not matter; non-square frames keep the
FOV; bad stacks are refused by name."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from temalign.clock import SteppedClock
from temalign.estimate import preprocess
from temalign.estimate.preprocess import preprocess_batch, resolve, standard, standard_64, standard_128
from temalign.twin import optics
from temalign.twin.display import to_display
from temalign.twin.model import Twin
from temalign.twin.settings import TwinSettings

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


def test_fast_enough_for_the_daemon() -> None:
    raw, _ = render((50, 50))
    standard_128(raw)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        standard_128(raw)
        times.append(time.perf_counter() - start)
    assert float(np.median(times)) < 0.015  # about 2 ms on one core here; generous for a busy CI


def test_the_runtime_module_does_not_import_tensorflow() -> None:
    code = ("import sys, temalign.estimate.preprocess as p; "
            "assert not any(m.startswith(('tensorflow', 'keras')) for m in sys.modules), 'TF imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert preprocess.__name__ == "temalign.estimate.preprocess"
