"""The classical estimator and its gate: stack quality (safety.md's doubtful stack), the centroid
walk through a 2x2 calibration, remapping a twin-geometry delta onto another column, and the
calibration file."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from temalign import optics
from temalign.clock import SteppedClock
from temalign.config.schema import QualitySettings
from temalign.decide.stack import wide_frames
from temalign.estimate.calibration import (
    CALIBRATION_NAME,
    Calibration,
    load_calibration,
    nominal_calibration,
    save_calibration,
)
from temalign.estimate.classical import classical_estimate, remap
from temalign.estimate.quality import assess_stack
from temalign.frames import WobbleStack
from temalign_twin.model import Twin
from temalign_twin.settings import TwinSettings

QUIET = {"drift": {"linear_per_hour": (0, 0), "random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0}}
QUALITY = QualitySettings()


@functools.cache
def twin_stack(misalignment: tuple[float, float], seed: int = 3, *, ratio: float = 1.0,
               fraction: float = 0.03, blank_frame: int | None = None) -> tuple[WobbleStack, np.ndarray]:
    """A 256 px raw wobble stack of a quiet twin `misalignment` units off (C1 at ratio * c_f), and
    the true delta = a* - a."""
    settings = TwinSettings().updated(QUIET).updated({"lens": {"start_over_cf": ratio}})
    twin = Twin(settings, SteppedClock(), seed)
    a = twin.aligned()
    twin.move_aperture(round(a[0] + misalignment[0]), round(a[1] + misalignment[1]))
    c0 = twin.c1()
    values = tuple(float(c) for c in optics.wobble_values(c0, fraction))
    frames = []
    for k, c in enumerate(values):
        twin.set_c1(c)
        twin.clock.advance(2.0)
        if k == blank_frame:
            twin.inject("blank", count=1)
        frames.append(twin.acquire())
    truth = -np.asarray(twin.truth()["misalignment"], dtype=float)
    stack = WobbleStack(np.stack(frames).astype(np.float32), values, tuple(range(7)), c0, fraction, "twin")
    return stack, truth


def with_images(stack: WobbleStack, images: np.ndarray, **changes: object) -> WobbleStack:
    return dataclasses.replace(stack, images=images, **changes)


# ---- quality ---------------------------------------------------------------------------------


def test_a_clean_stack_is_ok_even_with_the_focused_spot_saturated() -> None:
    stack, _ = twin_stack((150.0, -90.0))
    assert stack.images[3].max() >= 65535, "the twin's focused spot should saturate at the defaults"
    quality = assess_stack(stack, QUALITY)
    assert quality.ok and quality.reasons == () and quality.frame_usable == (True,) * 7


def test_a_blanked_frame_is_named() -> None:
    stack, _ = twin_stack((100.0, 50.0), blank_frame=4)
    quality = assess_stack(stack, QUALITY)
    assert not quality.ok
    assert any("no beam in frame 4" in r for r in quality.reasons), quality.reasons
    assert quality.frame_usable == (True, True, True, True, False, True, True)


def test_a_display_may_hide_the_focused_spot_but_not_a_wide_disc() -> None:
    """Auto-contrast can drown the focused spot (frame 3) on a display: left out, not doubtful; a
    missing wide disc, or a missing spot in raw counts, still makes the stack doubtful."""
    stack, _ = twin_stack((120.0, -60.0))
    display = np.clip(stack.images / stack.images[0].max() * 255.0, 0, 255).astype(np.float32)
    hidden = display.copy()
    hidden[3] = np.median(display[3])  # no spot to find in the focused frame
    quality = assess_stack(with_images(stack, hidden, kind="display"), QUALITY)
    assert quality.ok and quality.frame_usable == (True, True, True, False, True, True, True), quality
    wide_gone = hidden.copy()
    wide_gone[0] = np.median(display[0])
    assert not assess_stack(with_images(stack, wide_gone, kind="display"), QUALITY).ok
    raw = stack.images.copy()
    raw[3] = np.median(raw[3])
    assert not assess_stack(with_images(stack, raw), QUALITY).ok


def test_a_dim_frame_is_beam_absent() -> None:
    stack, _ = twin_stack((0.0, 0.0))
    images = stack.images.copy()
    images[2] = 100.0 + (images[2] - 100.0) * 0.1  # a tenth of the dose above the dark level
    quality = assess_stack(with_images(stack, images), QUALITY)
    assert not quality.ok
    assert any(r.startswith("no beam in frame 2") for r in quality.reasons), quality.reasons


@pytest.mark.parametrize("how", ["zeros", "dark", "nan", "inf", "shape", "six"])
def test_broken_stacks_are_doubtful_not_exceptions(how: str) -> None:
    stack, _ = twin_stack((0.0, 0.0))
    images = stack.images.copy()
    if how == "zeros":
        images[:] = 0
    elif how == "dark":
        images[:] = 100.0 + np.random.default_rng(0).normal(0, 3, images.shape)
    elif how == "nan":
        images[5, 10, 10] = np.nan
    elif how == "inf":
        images[1, 0, 0] = np.inf
    elif how == "shape":
        images = images[0]
    else:
        images = images[:6]
    quality = assess_stack(with_images(stack, images), QUALITY)
    assert not quality.ok and quality.reasons and len(quality.frame_usable) == 7
    if how == "nan":
        assert "frame 5" in quality.reasons[0]
    if how == "inf":
        assert "frame 1" in quality.reasons[0]
    estimate = classical_estimate(with_images(stack, images), nominal_calibration())
    assert estimate.delta is None and estimate.reason


def test_disc_off_the_detector_in_the_wide_frames_is_lost() -> None:
    # 500 units along the direction the 30 deg Larmor turn sends straight to +x: the extreme discs
    # centre 0.625 FOV out, beyond the edge at 0.5
    m = 500.0 * np.array([math.cos(math.radians(-30)), math.sin(math.radians(-30))])
    stack, _ = twin_stack((float(m[0]), float(m[1])))
    quality = assess_stack(stack, QUALITY)
    assert not quality.ok
    lost = [r for r in quality.reasons if "disc lost" in r]
    assert any(r.startswith("frame 0:") for r in lost) and any(r.startswith("frame 6:") for r in lost), \
        quality.reasons
    assert not quality.frame_usable[0] and not quality.frame_usable[6]
    assert all(quality.frame_usable[2:5])


def test_saturated_wide_frames_are_doubtful_on_raw_frames_only() -> None:
    stack, _ = twin_stack((60.0, 40.0))
    over = np.clip(100.0 + (stack.images - 100.0) * 300.0, 0, 65535).astype(np.float32)
    quality = assess_stack(with_images(stack, over), QUALITY)
    assert not quality.ok
    named = {int(r.split()[1]) for r in quality.reasons if "saturated" in r}
    assert named == set(wide_frames()), quality.reasons
    display = np.clip(over / 65535.0 * 255.0, 0, 255).astype(np.float32)
    assert assess_stack(with_images(stack, display, kind="display"), QUALITY).ok
    assert not assess_stack(with_images(stack, display, kind="display"), QUALITY, saturation_level=255.0).ok


# ---- the classical estimate ---------------------------------------------------------------------


def test_nominal_calibration_is_the_first_order_geometry() -> None:
    first_order = (1.0 / 0.03) * optics.D_FOV * optics.rotation(math.radians(optics.THETA0_DEG)) / 1000
    assert np.allclose(nominal_calibration().array, first_order, rtol=0.005)
    off = nominal_calibration(1.02, 0.02)
    # d/drho of u R(theta(u)) at u0 = 0.02: the rotation, plus u0 dtheta/du of a quarter turn
    theta, kappa = optics.larmor_angle(0.02), math.radians(optics.THETA_PER_U_DEG)
    slope = optics.rotation(theta) + 0.02 * kappa * optics.rotation(theta + math.pi / 2)
    assert np.allclose(off.array, 1.02 / 0.03 * optics.D_FOV * slope / 1000, rtol=0.01)


@pytest.mark.parametrize(("ratio", "fraction", "bound"), [(1.0, 0.03, 1.0), (1.02, 0.02, 4.0)])
def test_classical_estimate_recentres_twin_stacks(ratio: float, fraction: float, bound: float) -> None:
    """Measured: centred 3 % wobble rmse 0.08, max 0.17 units over 20 stacks; N 6-like (c0 = 1.02
    c_f, 2 %) rmse 0.33, max 1.5 units."""
    calibration = nominal_calibration(ratio, fraction, c1=1.2 * ratio)
    rng = np.random.default_rng(7)
    errors = []
    for seed in range(6):
        r, angle = rng.uniform(0, 240), rng.uniform(0, 2 * math.pi)
        misalignment = (round(r * math.cos(angle), 1), round(r * math.sin(angle), 1))
        stack, truth = twin_stack(misalignment, seed, ratio=ratio, fraction=fraction)
        quality = assess_stack(stack, QUALITY)
        assert quality.ok, quality.reasons
        estimate = classical_estimate(stack, calibration, quality.frame_usable)
        assert estimate.delta is not None and estimate.frames_used == 7
        assert estimate.residual_px < 1.0
        errors.append(np.asarray(estimate.delta) - truth)
    assert np.abs(errors).max() < bound, errors
    stack, truth = twin_stack((-240.0, 0.0), ratio=ratio, fraction=fraction)
    estimate = classical_estimate(stack, calibration)
    assert np.allclose(estimate.delta, truth, atol=bound), (estimate.delta, truth)


def test_classical_estimate_with_frames_left_out() -> None:
    stack, truth = twin_stack((180.0, -120.0))
    calibration = nominal_calibration()
    partial = classical_estimate(stack, calibration, [False, True, True, True, True, True, False])
    assert partial.frames_used == 5 and np.allclose(partial.delta, truth, atol=5.0)
    few = classical_estimate(stack, calibration, [False, False, True, False, True, False, False])
    assert few.delta is None and "at least 3" in few.reason


def test_a_misplaced_calibration_gives_a_wrong_estimate() -> None:
    """The check above can fail: a column rotated 90 deg from the twin misleads the estimator."""
    stack, truth = twin_stack((150.0, 0.0))
    turned = Calibration(matrix=(nominal_calibration().array @ optics.rotation(math.pi / 2)).tolist(),
                         wobble_fraction=0.03, c1=1.2, measured_at="2024-01-01T00:00:00+00:00",
                         source="measured")
    assert np.linalg.norm(np.asarray(classical_estimate(stack, turned).delta) - truth) > 100


@pytest.mark.parametrize("mirror", [False, True])
def test_remap_recovers_the_truth_on_a_rotated_or_mirrored_column(mirror: bool) -> None:
    basis = nominal_calibration()
    transform = 1.3 * optics.rotation(math.radians(-70.0))
    if mirror:
        transform = transform @ np.diag([1.0, -1.0])
    column = Calibration(matrix=(transform @ basis.array).tolist(), wobble_fraction=0.03, c1=1.2,
                         measured_at="2024-01-01T00:00:00+00:00", source="measured")
    truth = np.array([37.0, -112.0])
    # on that column the spot walks column.M @ m; a twin-trained model reads it in twin geometry
    walk = -column.array @ truth
    model_delta = -np.linalg.solve(basis.array, walk)
    assert not np.allclose(model_delta, truth, atol=10.0)
    assert np.allclose(remap(tuple(model_delta), basis, column), truth, atol=1e-9)
    assert np.allclose(remap(tuple(truth), basis, basis), truth)


# ---- the calibration and its file ----------------------------------------------------------------


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    assert load_calibration(tmp_path) is None
    calibration = dataclasses.replace(nominal_calibration(), source="measured", residual_fov=0.001)
    path = save_calibration(tmp_path, calibration)
    assert path == tmp_path / CALIBRATION_NAME and not list(tmp_path.glob(".*.tmp"))
    assert load_calibration(tmp_path) == calibration


@pytest.mark.parametrize(("text", "named"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"wobble_fraction": 0.03}', "missing field"),
    ("MATRIX", "calibration matrix"),
    ("SINGULAR", "ill-conditioned"),
    ("C1", "calibration c1"),
    ("SOURCE", "calibration source"),
])
def test_a_corrupt_calibration_file_is_a_clear_error(tmp_path: Path, text: str, named: str) -> None:
    good = nominal_calibration().to_json()
    if text == "MATRIX":
        text = json.dumps({**good, "matrix": [[1.0, "x"], [0.0, 1.0]]})
    elif text == "SINGULAR":
        text = json.dumps({**good, "matrix": [[1.0, 2.0], [2.0, 4.0]]})
    elif text == "C1":
        text = json.dumps({**good, "c1": -1})
    elif text == "SOURCE":
        text = json.dumps({**good, "source": "guessed"})
    (tmp_path / CALIBRATION_NAME).write_text(text)
    with pytest.raises(ValueError, match=named) as caught:
        load_calibration(tmp_path)
    assert CALIBRATION_NAME in str(caught.value)


def test_an_ill_conditioned_matrix_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="ill-conditioned"):
        Calibration(matrix=((0.04, 0.0), (0.0, 0.0001)), wobble_fraction=0.03, c1=1.2,
                    measured_at="2024-01-01T00:00:00+00:00", source="measured")
