"""The twin's frames against the normative geometry of twin.md, measured with estimate/spots.py."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from temalign import optics
from temalign.clock import SteppedClock
from temalign.estimate.spots import measure_spot
from temalign_twin.model import Twin
from temalign_twin.render import Beam, Specimen, expected_electrons, render_frame
from temalign_twin.settings import TwinSettings

PX = 256  # tolerances are in pixels of a 256 px camera
NO_DRIFT = {"linear_per_hour": (0, 0), "random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0,
            "beam_shift_linear_per_hour": (0, 0), "beam_shift_random_walk_per_sqrt_hour": 0}
CLEAN = {"optics": {"ellipticity": 0.0}, "specimen": {"texture_contrast": 0.0},
         "camera": {"shot_noise": False, "read_noise": 0.0, "hot_pixel_fraction": 0.0},
         "drift": NO_DRIFT}


def clean_settings(**extra: dict) -> TwinSettings:
    return TwinSettings().updated(CLEAN).updated(extra)


def wobble(twin: Twin, m: tuple[int, int], c0_over_cf: float = 1.0, fraction: float = 0.03):
    """Move to a* + m, run a wobble; per frame: (c, expected centre, expected radius, Spot)."""
    a_star = np.round(twin.aligned()).astype(int)
    twin.move_aperture(int(a_star[0] + m[0]), int(a_star[1] + m[1]))
    c_f = twin.settings.optics.c_f
    out = []
    for c in optics.wobble_values(c0_over_cf * c_f, fraction):
        twin.set_c1(float(c))
        twin.advance(twin.settings.lens.settle_s)
        truth = twin.truth()
        frame = twin.acquire()
        want = optics.spot_centre(c, c_f, truth["misalignment"], truth["beam_shift"])
        out.append((float(c), want, optics.spot_radius(c, c_f), measure_spot(frame)))
    return out


def test_formulas_at_known_points() -> None:
    c_f = 1.2
    assert optics.relative_defocus(1.236, c_f) == pytest.approx(0.03)
    assert optics.spot_radius(c_f, c_f) == pytest.approx(0.012)
    assert optics.spot_radius(1.236, c_f) == pytest.approx(math.hypot(0.156, 0.012))
    assert optics.spot_radius(1.164, c_f) == pytest.approx(math.hypot(0.156, 0.012))
    np.testing.assert_allclose(optics.spot_centre(c_f, c_f, (240, -100), (0.01, 0.02)), [0.01, 0.02])
    th = math.radians(30 + 150 * 0.03)
    want = 1.25 * 0.24 * np.array([math.cos(th), math.sin(th)])
    np.testing.assert_allclose(optics.spot_centre(1.236, c_f, (240, 0)), want, atol=1e-12)
    np.testing.assert_allclose(optics.wobble_values(1.2, 0.03),
                               [1.164, 1.176, 1.188, 1.2, 1.212, 1.224, 1.236])


def test_pixel_convention() -> None:
    x, y = optics.pixel_to_fov(0, 0, 256, 256)
    assert (x, y) == pytest.approx((0.5 / 256 - 0.5, 0.5 / 256 - 0.5))
    assert optics.pixel_to_fov(127.5, 127.5, 256, 256) == pytest.approx((0.0, 0.0))
    assert optics.pixel_to_fov(255.5, 95.5, 512, 192) == pytest.approx((0.0, 0.0))
    col, row = optics.fov_to_pixel(*optics.pixel_to_fov(17.0, 201.0, 320, 240), 320, 240)
    assert (col, row) == pytest.approx((17.0, 201.0))


@pytest.mark.parametrize("m", [(0, 0), (120, 0), (0, -120), (240, 0), (-170, 170), (85, -226)])
def test_each_frame_matches_the_formula(m: tuple[int, int]) -> None:
    twin = Twin(clean_settings(), SteppedClock(), seed=3)
    for c, want, r_want, spot in wobble(twin, m):
        assert spot.found
        err_px = np.hypot(*(np.asarray(spot.centre) - want)) * PX
        assert err_px < 0.5, f"c={c:.4f} m={m}: centroid {err_px:.2f} px from the formula"
        tol = 0.08 if abs(optics.defocus_g(c, 1.2)) < 0.1 else 0.03  # the focused spot saturates
        assert spot.radius == pytest.approx(r_want, rel=tol)


def test_larmor_rotation_is_in_the_frames() -> None:
    twin = Twin(clean_settings(), SteppedClock(), seed=4)
    frames = wobble(twin, (240, 0))
    s = np.asarray(twin.truth()["beam_shift"])
    for c, want, _, spot in frames:
        u = optics.relative_defocus(c, 1.2)
        g = u / 0.03
        m = np.array(twin.truth()["misalignment"])
        fixed = s + g * 1.25 * optics.rotation(math.radians(30)) @ m / 1000
        assert np.hypot(*(np.asarray(spot.centre) - want)) * PX < 0.5
        if abs(g) == pytest.approx(1.0):
            assert np.hypot(*(np.asarray(spot.centre) - fixed)) * PX > 3.0, "theta must vary with u"
    lo = np.asarray(frames[0][3].centre) - s
    hi = np.asarray(frames[-1][3].centre) - s
    turn = math.degrees(math.atan2(hi[1], hi[0]) - math.atan2(-lo[1], -lo[0]))
    assert turn == pytest.approx(150 * 0.06, abs=0.3)


def test_aligned_stack_is_concentric() -> None:
    twin = Twin(clean_settings(), SteppedClock(), seed=5)
    frames = wobble(twin, (0, 0))
    centres = np.array([f[3].centre for f in frames])
    assert np.ptp(centres, axis=0).max() * PX < 0.5
    radii = [f[3].radius for f in frames]
    assert radii[3] == min(radii)
    assert radii[0] > radii[1] > radii[2] and radii[4] < radii[5] < radii[6]


def test_misaligned_stack_walks_along_a_line_through_the_focused_spot() -> None:
    twin = Twin(clean_settings(), SteppedClock(), seed=6)
    frames = wobble(twin, (-170, 170))
    centres = np.array([f[3].centre for f in frames])
    focus = centres[3]
    direction = centres[-1] - centres[0]
    direction /= np.linalg.norm(direction)
    rel = centres - focus
    along = rel @ direction
    across = rel @ np.array([-direction[1], direction[0]])
    assert np.all(np.diff(along) > 0.02), "the spot walks one way through the wobble"
    assert np.abs(across).max() * PX < 6.0, "nearly a line: only the Larmor term bends it"
    assert np.abs(across).max() * PX > 0.5, "and the Larmor term does bend it"


def test_default_rendering_meets_the_conformance_tolerances() -> None:
    twin = Twin(TwinSettings(), SteppedClock(), seed=1)
    a0 = np.array(twin.aperture())
    c0 = twin.c1()

    def at(g: float, d: tuple[int, int]) -> tuple[np.ndarray, float]:
        twin.move_aperture(int(a0[0] + d[0]), int(a0[1] + d[1]))
        twin.set_c1(c0 * (1 + 0.03 * g))
        twin.advance(3.0)
        spots = [measure_spot(twin.acquire()) for _ in range(3)]
        return np.mean([s.centre for s in spots], axis=0), float(np.mean([s.radius for s in spots]))

    for g in (-1.0, 1.0):
        base, r = at(g, (0, 0))
        assert r == pytest.approx(math.hypot(0.156, 0.012), rel=0.10)
        for d in ((100, 0), (0, 100)):
            got = at(g, d)[0] - base
            want = g * 1.25 * optics.rotation(optics.larmor_angle(0.03 * g)) @ (np.array(d) / 1000)
            assert np.abs(got - want).max() * PX < 1.5


def test_cameras_of_any_size_see_the_same_fov_geometry() -> None:
    results = {}
    for width in (256, 512, 4096):
        st = clean_settings(camera={"width": width, "height": width})
        for r in (0.156, 0.05):
            frame = render_frame(Beam((0.1234, -0.2061), r, 2.5e6), st, np.random.default_rng(0))
            assert frame.shape == (width, width)
            results[width, r] = measure_spot(frame)
    for r in (0.156, 0.05):
        for width in (512, 4096):
            a, b = results[256, r], results[width, r]
            assert np.hypot(*(np.subtract(a.centre, b.centre))) * PX < 0.5
            assert b.radius == pytest.approx(a.radius, rel=0.02)
            assert b.centre == pytest.approx((0.1234, -0.2061), abs=0.5 / PX)


def test_specimen_is_the_same_at_every_camera_size() -> None:
    st = TwinSettings()
    small = Specimen(9).texture(st)
    large = Specimen(9).texture(st.updated({"camera": {"width": 512, "height": 512}}))
    binned = large.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    assert small.mean() == pytest.approx(1.0, abs=0.02)
    assert np.corrcoef(small.ravel(), binned.ravel())[0, 1] > 0.9
    other = Specimen(10).texture(st)
    assert abs(np.corrcoef(small.ravel(), other.ravel())[0, 1]) < 0.1


def test_beam_partly_or_wholly_off_the_detector() -> None:
    st = clean_settings()
    frame = render_frame(Beam((0.5, 0.1), 0.156, 2.5e6), st, np.random.default_rng(1))
    spot = measure_spot(frame)
    assert spot.truncated and spot.on_detector == pytest.approx(0.5, abs=0.03)
    assert np.hypot(*(np.subtract(spot.centre, (0.5, 0.1)))) * PX < 1.0
    assert spot.radius == pytest.approx(0.156, rel=0.02)
    gone = render_frame(Beam((0.9, 0.0), 0.156, 2.5e6), st, np.random.default_rng(1))
    assert gone.max() == st.camera.dark_offset
    assert not measure_spot(gone).found
    twin = Twin(clean_settings(), SteppedClock(), seed=2)
    a = np.round(twin.aligned()).astype(int)
    twin.move_aperture(int(a[0] + 500), int(a[1]))
    twin.set_c1(1.2 * 1.03)
    twin.advance(2)
    assert twin.truth()["spot"]["centre"][0] > 0.5, "nothing clips the truth"


def test_total_current_is_conserved_and_intensity_goes_as_one_over_r_squared() -> None:
    st = clean_settings(camera={"dark_offset": 0.0})
    means = {}
    for r in (0.03, 0.08, 0.156):
        mean, box = expected_electrons(Beam((0.05, -0.02), r, 1e6), st)
        assert mean.sum() == pytest.approx(1e6, rel=0.03)
        rows, cols = box
        xs, ys = optics.pixel_to_fov(np.arange(cols.start, cols.stop), np.arange(rows.start, rows.stop),
                                     256, 256)
        inside = np.hypot(xs[None, :] - 0.05, ys[:, None] + 0.02) < 0.7 * r
        means[r] = mean[inside].mean()
    assert means[0.03] / means[0.156] == pytest.approx((0.156 / 0.03) ** 2, rel=0.05)


def test_focused_spot_saturates_and_wide_discs_are_dim() -> None:
    twin = Twin(TwinSettings(), SteppedClock(), seed=0)
    focused = measure_spot(twin.acquire())
    assert focused.saturated_fraction > 0.3
    twin.set_c1(1.2 * 1.03)
    twin.advance(2)
    wide = twin.acquire()
    assert measure_spot(wide).saturated_fraction == 0.0
    assert np.percentile(wide, 99) < 2000


def _display(raw: np.ndarray, gamma: float) -> np.ndarray:
    lo, hi = np.percentile(raw, [0.5, 99.5])
    return np.round(np.clip((raw - lo) / (hi - lo), 0, 1) ** (1 / gamma) * 255).astype(np.uint8)


def test_measure_spot_on_display_frames_and_with_hot_pixels() -> None:
    st = TwinSettings().updated({"camera": {"hot_pixel_fraction": 0.002}})
    rng = np.random.default_rng(2)
    for centre, r in (((0.11, 0.07), 0.156), ((-0.2, 0.05), 0.03), ((0.0, -0.3), 0.06)):
        raw = render_frame(Beam(centre, r, 2.5e6), st, rng, Specimen(2))
        for frame in (raw, _display(raw, 1.0), _display(raw, 2.2)):
            spot = measure_spot(frame)
            assert np.hypot(*(np.subtract(spot.centre, centre))) * PX < 0.5
            if frame is raw:
                assert spot.radius == pytest.approx(r, rel=0.03)
            else:  # gamma and clipping move the half-level edge outwards a little
                assert abs(spot.radius - r) * PX < 1.0
    focused = render_frame(Beam((-0.2, 0.05), 0.012, 2.5e6), st, rng, Specimen(2))
    spot = measure_spot(focused)
    assert np.hypot(*(np.subtract(spot.centre, (-0.2, 0.05)))) * PX < 0.5
    assert spot.saturated_fraction > 0.3
    # Auto-contrast stretches the noise when the spot is tiny: found right, or not found; never wrong.
    spot = measure_spot(_display(focused, 2.2))
    assert not spot.found or np.hypot(*(np.subtract(spot.centre, (-0.2, 0.05)))) * PX < 1.0
    blank = render_frame(Beam((0, 0), 0.1, 0.0), st, rng, Specimen(2))
    assert not measure_spot(blank).found
    assert not measure_spot(_display(blank, 1.0)).found


def test_render_and_measure_are_fast() -> None:
    twin = Twin(TwinSettings(), SteppedClock(), seed=0)
    twin.set_c1(1.2 * 1.02)
    twin.advance(2)
    twin.acquire()  # builds the specimen once
    times, measures = [], []
    for _ in range(30):
        t0 = time.perf_counter()
        frame = twin.acquire()
        t1 = time.perf_counter()
        measure_spot(frame)
        times.append(t1 - t0)
        measures.append(time.perf_counter() - t1)
    assert np.median(times) < 0.010, f"acquire took {np.median(times) * 1e3:.1f} ms"
    assert np.median(measures) < 0.004, f"measure_spot took {np.median(measures) * 1e3:.1f} ms"


def test_n6_like_uncentred_wobble_follows_the_geometry() -> None:
    twin = Twin(clean_settings(lens={"start_over_cf": 1.02}), SteppedClock(), seed=7)
    assert twin.c1() == pytest.approx(1.02 * 1.2)
    for c, want, _, spot in wobble(twin, (140, -140), c0_over_cf=1.02, fraction=0.02):
        if spot.on_detector == 1.0:
            assert np.hypot(*(np.asarray(spot.centre) - want)) * PX < 0.5, f"c={c}"
