"""Drift, motor, lens, faults, settings and presets of the twin, in-process."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from temalign import optics
from temalign.clock import ScaledClock, SteppedClock
from temalign.errors import ConfigError
from temalign.estimate.spots import measure_spot
from temalign.protocol.errors import InvalidParams, OutOfRange
from temalign_twin.cli import build_settings, parse_assignment
from temalign_twin.drift import HOUR_S, Drift, DriftTrack
from temalign_twin.hardware import Lens, Motor
from temalign_twin.model import Twin, TwinError
from temalign_twin.presets import PRESETS
from temalign_twin.settings import DriftSettings, LensSettings, MotorSettings, TwinSettings

QUIET_MOTOR = {"position_noise_units": 0.0}
NO_DRIFT = {"linear_per_hour": (0, 0), "random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0,
            "beam_shift_linear_per_hour": (0, 0), "beam_shift_random_walk_per_sqrt_hour": 0}


class FrozenClock:
    """Time that moves only when the test sets it; `sleep` returns at once, so a move is still in
    progress when the call returns and the test can look at it half way."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        pass


def twin(seed: int = 0, clock=None, **overrides) -> Twin:
    return Twin(TwinSettings().updated(overrides), clock or SteppedClock(), seed=seed)


# ---- drift ------------------------------------------------------------------------------------


def test_drift_is_a_pure_function_of_seed_and_time() -> None:
    times = [0.0, 1.5, 3599.9, 3600.0, 7322.25, 5 * HOUR_S + 17, 40 * HOUR_S, 2.25 * HOUR_S]
    forward = Drift(DriftSettings(), seed=5)
    a = {t: forward.aligned(t) for t in times}
    s = {t: forward.beam_shift(t) for t in times}
    backward = Drift(DriftSettings(), seed=5)
    for t in reversed(times):
        np.testing.assert_array_equal(backward.aligned(t), a[t])
        np.testing.assert_array_equal(backward.beam_shift(t), s[t])
    jumpy = Drift(DriftSettings(), seed=5)
    jumpy.aligned(200 * HOUR_S)  # a far query first must not change the near past
    np.testing.assert_array_equal(jumpy.aligned(7322.25), a[7322.25])
    other = Drift(DriftSettings(), seed=6)
    assert not np.allclose(other.aligned(40 * HOUR_S), a[40 * HOUR_S])
    np.testing.assert_array_equal(a[0.0], DriftSettings().aligned_start)


def test_drift_is_continuous_in_time() -> None:
    d = Drift(DriftSettings().model_copy(update={"jump_rate_per_hour": 0.0}), seed=1)
    t = np.linspace(3590, 3610, 41)
    steps = np.diff([d.aligned(x) for x in t], axis=0)
    assert np.abs(steps).max() < 1.0, "no step at a block boundary"


def test_drift_rates_are_as_configured() -> None:
    linear = Drift(DriftSettings(random_walk_per_sqrt_hour=5.0, jump_rate_per_hour=0.0), seed=2)
    hours = np.arange(0, 1001, 10.0)
    path = np.array([linear.aligned(h * HOUR_S) for h in hours])
    slope = np.polyfit(hours, path, 1)[0]
    np.testing.assert_allclose(slope, (12.0, -8.0), atol=1.0)

    walk = Drift(DriftSettings(linear_per_hour=(0, 0), jump_rate_per_hour=0.0), seed=3)
    t = (np.arange(600) + 0.5) * HOUR_S
    inc = np.array([walk.aligned(x + HOUR_S) - walk.aligned(x) for x in t])
    assert inc.std() == pytest.approx(5.0, rel=0.15)

    jumps = Drift(DriftSettings(), seed=4).jumps.events(0, 2000 * HOUR_S)
    assert 150 <= len(jumps) <= 250, len(jumps)
    sizes = np.array([j[1:] for j in jumps])
    assert sizes.std() == pytest.approx(25.0, rel=0.2)

    shift = Drift(DriftSettings(), seed=5)
    assert 0 < np.abs(shift.beam_shift(HOUR_S) - shift.beam_shift(0)).max() < 0.02, "s drifts slowly"


def test_injected_jump_and_reconfiguration_keep_the_past() -> None:
    track = DriftTrack(DriftSettings(), seed=7)
    before = track.aligned(100.0)
    track.inject_jump(100.0, (30.0, -20.0))
    np.testing.assert_allclose(track.aligned(100.0) - before, (30.0, -20.0))
    np.testing.assert_allclose(track.aligned(99.0), DriftTrack(DriftSettings(), seed=7).aligned(99.0))
    at = track.aligned(500.0)
    track.reconfigure(DriftSettings(linear_per_hour=(100.0, 0.0)), 500.0)
    np.testing.assert_allclose(track.aligned(500.0), at, atol=1e-9)
    assert track.aligned(500.0 + HOUR_S)[0] - at[0] > 60


# ---- motor ------------------------------------------------------------------------------------


def test_motor_speed_settle_and_reply() -> None:
    tw = twin(motor=QUIET_MOTOR)
    x0, y0 = tw.aperture()
    t0 = tw.clock.now()
    # y reverses (the start state is 'approached from below'), so it stops short by the play
    assert tw.move_aperture(x0 + 200, y0 - 50) == (x0 + 200, y0 - 48)
    assert tw.clock.now() - t0 == pytest.approx(200 / 200.0 + 0.3)
    assert tw.aperture() == (x0 + 200, y0 - 48)
    t1 = tw.clock.now()
    tw.move_aperture(x0 + 200, y0 - 450)
    assert tw.clock.now() - t1 == pytest.approx(400 / 200.0 + 0.3)


def test_motion_is_interpolated_and_frames_show_it() -> None:
    clock = FrozenClock()
    tw = twin(clock=clock, motor=QUIET_MOTOR, drift=NO_DRIFT)
    tw.set_c1(1.2 * 1.03)
    clock.t = 10.0
    x0, y0 = tw.aperture()
    start = tw.truth()["spot"]["centre"]
    tw.move_aperture(x0 + 400, y0)  # 2 s of travel from t = 10
    clock.t = 11.0
    assert tw.aperture() == (x0 + 200, y0)
    assert tw.truth()["moving"]
    mid = measure_spot(tw.live_frame()).centre
    clock.t = 12.5
    end = tw.truth()["spot"]["centre"]
    np.testing.assert_allclose(mid, (np.add(start, end)) / 2, atol=0.5 / 256)
    assert tw.aperture() == (x0 + 400, y0) and not tw.truth()["moving"]


def test_backlash_on_reversal_only() -> None:
    m = Motor(MotorSettings(position_noise_units=0.0, backlash_units=2.0), np.array([0.0, 0.0]), seed=0)
    assert m.move((100, 0), 0.0).end.tolist() == [100.0, 0.0]
    assert m.move((150, 0), 10.0).end.tolist() == [150.0, 0.0]
    reversed_ = m.move((50, 0), 20.0)
    assert reversed_.end.tolist() == [52.0, 0.0], "stops short by the play after a reversal"
    assert reversed_.travel_s == pytest.approx((100 + 2) / 200.0)
    assert m.move((20, 0), 30.0).end.tolist() == [22.0, 0.0]
    assert m.move((60, 0), 40.0).end.tolist() == [60.0, 0.0]


def test_position_noise_is_seeded_and_of_the_configured_size() -> None:
    def ends(seed: int) -> np.ndarray:
        m = Motor(MotorSettings(backlash_units=0.0), np.zeros(2), seed=seed)
        return np.array([m.move((10 * (i + 1), -10 * (i + 1)), float(i)).end for i in range(400)])

    a, b = ends(1), ends(1)
    np.testing.assert_array_equal(a, b)
    err = a - np.array([[10 * (i + 1), -10 * (i + 1)] for i in range(400)])
    assert err.std() == pytest.approx(0.5, rel=0.15)
    assert not np.array_equal(a, ends(2))


def test_out_of_range_moves_and_values_change_nothing() -> None:
    tw = twin(motor={"limits_x": (-5000, 5000), "limits_y": (-5000, 5000)}, lens={"limits": (1.0, 1.4)})
    before, t0 = tw.aperture(), tw.clock.now()
    with pytest.raises(OutOfRange):
        tw.move_aperture(6000, 0)
    with pytest.raises(OutOfRange):
        tw.set_c1(1.5)
    with pytest.raises(InvalidParams):
        tw.move_aperture(1.5, 0)  # type: ignore[arg-type]
    assert tw.aperture() == before and tw.c1() == 1.2 and tw.clock.now() == t0
    assert tw.limits() == {"aperture": {"x": [-5000, 5000], "y": [-5000, 5000]}, "lens": {"C1": [1.0, 1.4]}}


# ---- lens -------------------------------------------------------------------------------------


def test_lens_settles_part_way() -> None:
    lens = Lens(LensSettings(settle_s=1.5), 1.2)
    assert lens.effective(0.0) == 1.2 and lens.settled(0.0)
    lens.set(1.236, now=10.0)
    mid = lens.effective(10.5)
    assert 1.2 < mid < 1.236
    assert lens.effective(11.5) == 1.236 and lens.settled(11.5)

    tw = twin(drift=NO_DRIFT)
    tw.set_c1(1.2 * 1.03)
    tw.advance(0.3)
    early = measure_spot(tw.acquire(exposure_s=0.01)).radius
    assert tw.truth()["c1_effective"] < 1.236 and not tw.truth()["lens_settled"]
    tw.advance(1.2)
    late = measure_spot(tw.acquire(exposure_s=0.01)).radius
    assert 0.02 < early < 0.9 * late
    assert late == pytest.approx(optics.spot_radius(1.236, 1.2), rel=0.03)


# ---- hardware faults --------------------------------------------------------------------------


def test_stuck_motor_is_seen_only_by_read_back() -> None:
    tw = twin(drift=NO_DRIFT)
    tw.set_c1(1.2 * 1.03)
    tw.advance(2)
    x0, y0 = tw.aperture()
    before = measure_spot(tw.acquire()).centre
    tw.inject("stuck", count=1)
    assert tw.move_aperture(x0 + 150, y0) == (x0 + 150, y0), "the command is echoed"
    assert tw.aperture() == (x0, y0)
    np.testing.assert_allclose(measure_spot(tw.acquire()).centre, before, atol=0.5 / 256)
    assert tw.truth()["faults"] == []
    reply = tw.move_aperture(x0 + 150, y0)
    assert abs(reply[0] - (x0 + 150)) <= 2 and tw.aperture() == reply


def test_overshoot_and_lens_ignore_are_seen_only_by_read_back() -> None:
    tw = twin(drift=NO_DRIFT, motor=QUIET_MOTOR)
    x0, y0 = tw.aperture()
    tw.inject("overshoot", units=25)
    assert tw.move_aperture(x0 + 100, y0 - 100) == (x0 + 100, y0 - 100)
    assert tw.aperture() == (x0 + 125, y0 - 125 + 2)  # y reversed: the play too
    assert tw.move_aperture(x0 + 300, y0 - 100) == (x0 + 300, y0 - 100)
    assert tw.aperture()[0] == x0 + 325, "until cleared"
    assert tw.clear_faults() == 1
    tw.inject("lens_ignore", count=2)
    assert tw.set_c1(1.236) == 1.236
    assert tw.c1() == 1.2
    tw.advance(2)
    assert measure_spot(tw.acquire()).radius == pytest.approx(0.012, rel=0.1), "still focused"
    assert tw.set_c1(1.23) == 1.23 and tw.c1() == 1.2
    assert tw.set_c1(1.236) == 1.236 and tw.c1() == 1.236
    truth = tw.truth()
    assert truth["c1"] == truth["c1_setpoint"] == 1.236


def test_blank_frames_and_counts() -> None:
    tw = twin()
    tw.inject("blank", count=2)
    assert tw.truth()["faults"][0]["remaining"] == 2
    for _ in range(2):
        frame = tw.acquire()
        assert not measure_spot(frame).found
        assert abs(float(np.median(frame)) - 100) < 3
    assert measure_spot(tw.acquire()).found
    assert tw.truth()["faults"] == []


def test_jump_moves_the_optic_axis_at_once() -> None:
    tw = twin(drift=NO_DRIFT)
    before = np.array(tw.truth()["aligned"])
    tw.inject("jump", units=[30, -20])
    np.testing.assert_allclose(np.array(tw.truth()["aligned"]) - before, (30, -20))
    np.testing.assert_allclose(tw.truth()["misalignment"], -np.array([30, -20]) + 0, atol=1e-9)
    tw.clear_faults()
    np.testing.assert_allclose(np.array(tw.truth()["aligned"]) - before, (30, -20))


@pytest.mark.parametrize("kind,params,match", [
    ("nonsense", {}, "unknown fault kind"),
    ("stuck", {"count": 0}, "count"),
    ("stuck", {"methods": ["aperture.move"]}, "takes no methods"),
    ("slow", {"seconds": -1}, "seconds"),
    ("drop", {"methods": ["twin.truth"]}, r"not to \['twin.truth'\]"),
    ("jump", {}, "needs units"),
    ("error", {"code": "x"}, "code"),
])
def test_bad_fault_requests_are_refused(kind: str, params: dict, match: str) -> None:
    with pytest.raises(TwinError, match=match):
        twin().inject(kind, **params)


def test_transport_faults_count_and_filter() -> None:
    tw = twin()
    tw.inject("error", count=2, methods=["aperture.move"], code=1002)
    tw.inject("slow", seconds=4.0)
    assert tw.take_transport_fault("twin.truth") is None
    assert tw.take_transport_fault("aperture.move").code == 1002
    assert tw.take_transport_fault("lens.get").kind == "slow"
    assert tw.take_transport_fault("aperture.move").kind == "error"
    assert tw.take_transport_fault("aperture.move").kind == "slow"
    assert [f["kind"] for f in tw.truth()["faults"]] == ["slow"]


# ---- clock, settings, reproducibility ----------------------------------------------------------


def test_advance_needs_a_stepped_clock() -> None:
    tw = twin()
    assert tw.advance(2.5) == 2.5
    with pytest.raises(TwinError, match="stepped"):
        twin(clock=ScaledClock(10)).advance(1)
    with pytest.raises(TwinError):
        tw.advance(-1)


def test_configure_at_run_time() -> None:
    tw = twin()
    tw.configure({"camera": {"width": 320, "height": 200}})
    assert tw.acquire().shape == (200, 320)
    with pytest.raises(TwinError, match=r"camera\.width"):
        tw.configure({"camera": {"width": 3}})
    with pytest.raises(TwinError):
        tw.configure({"no_such_section": {}})
    assert tw.settings.camera.width == 320


def test_seeded_runs_repeat_and_the_live_view_does_not_disturb_them() -> None:
    def run(live: bool) -> list[np.ndarray]:
        tw = twin(seed=11)
        frames = []
        for k, c in enumerate(optics.wobble_values(1.2, 0.03)):
            if live:
                tw.live_frame()
            tw.move_aperture(2150 + 10 * k, -1340)
            tw.set_c1(float(c))
            tw.advance(2)
            frames.append(tw.acquire())
        return frames

    for a, b in zip(run(False), run(True), strict=True):
        np.testing.assert_array_equal(a, b)


def test_concurrent_calls_are_safe() -> None:
    tw = twin(clock=ScaledClock(1000.0))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for k in range(5):
                tw.move_aperture(2150 + 20 * i + k, -1340)
                tw.set_c1(1.2 + 0.005 * k)
                tw.acquire(exposure_s=0.01)
                tw.live_frame()
                tw.truth()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_concurrent_moves_leave_the_motor_consistent() -> None:
    """Moves from several threads at once (the twin serves one thread per connection) each take
    effect whole: after every round, the last command the motor took is the one whose motion it
    made, so the aperture rests where that command put it. Threads switch as often as CPython can
    (a tiny switch interval), so a move interleaved with another shows up within a few rounds."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        clock = FrozenClock()
        tw = twin(clock=clock, motor={"position_noise_units": 0.0, "backlash_units": 0.0})
        threads, rounds = 6, 60
        broken: list[str] = []
        for r in range(rounds):
            barrier = threading.Barrier(threads)

            def move(i: int, r: int = r, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                tw.move_aperture(2000 + 100 * i + r, -1000 - 100 * i)

            workers = [threading.Thread(target=move, args=(i,)) for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            clock.t += 3600.0  # every motion over
            truth = tw.truth()
            if truth["aperture"] != pytest.approx(truth["aperture_commanded"], abs=1e-6):
                broken.append(f"round {r}: commanded {truth['aperture_commanded']}, at {truth['aperture']}")
    finally:
        sys.setswitchinterval(previous)
    assert broken == []


# ---- presets and command-line settings ---------------------------------------------------------


def test_presets_are_valid_and_describe_the_paper() -> None:
    for p in PRESETS.values():
        assert p.description and p.settings() is not None
        assert 0 < p.wobble_fraction <= 0.05 and p.radius > 0 and p.samples > 0
    assert PRESETS["n14"].samples == 84 and PRESETS["n13"].radius == 240
    n6 = PRESETS["n6"]
    assert n6.wobble_fraction == 0.02 and n6.settings().lens.start_over_cf == 1.02
    assert n6.settings().drift.aligned_start != TwinSettings().drift.aligned_start
    assert len({p.seed_offset for p in PRESETS.values()}) == len(PRESETS)
    low = PRESETS["low-dose"].settings().beam.electrons_per_s
    assert low == pytest.approx(TwinSettings().beam.electrons_per_s / 20)


def test_command_line_settings() -> None:
    assert parse_assignment("camera.width=512") == {"camera": {"width": 512}}
    assert parse_assignment("drift.linear_per_hour=[1, 2]") == {"drift": {"linear_per_hour": [1, 2]}}
    st = build_settings("low-dose", None, ["camera.width=512", "camera.shot_noise=false"])
    assert st.camera.width == 512 and not st.camera.shot_noise and st.beam.electrons_per_s < 2e6
    for bad in (["camera.width=3"], ["width=3"], ["camera.nope=1"]):
        with pytest.raises(ConfigError):
            build_settings("default", None, bad)
    with pytest.raises(ConfigError, match="unknown twin preset"):
        build_settings("n99", None, [])
