"""The safety envelope (safety.md, invariant 1 and the definitions): the invariant of `decide` as a
property over any inputs, every reason code on hand-worked numbers, rounding at the edges, the
trailing-hour rate ledger, "worse" for rollback, motor faults and the failure run toward hold."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from temalign.config.schema import SafetySettings
from temalign.decide.envelope import REASONS, Decision, RateLedger, decide
from temalign.decide.verify import FailureCounter, is_worse, motor_fault
from temalign.microscope import Limits

BASE = SafetySettings(window_units=400.0, max_excursion_units=350.0, max_step_units=250.0, deadband_units=5.0,
                      gain=0.8, rate_limit_units_per_hour=1000.0, on_limit="scale", rollback_margin_units=5.0,
                      motor_tolerance_units=3.0, hold_after_failures=3)
"""The numbers the hand-worked examples below were worked out with (pinned: the shipped defaults
may move with tuning, docs/benchmarks.md)."""


def safety(**changes: object) -> SafetySettings:
    return SafetySettings(**{**BASE.model_dump(), **changes})


def run(position=(0, 0), estimate=(0.0, 0.0), reference=(0, 0), session_start=(0, 0), moved=0.0,
        config=BASE, hardware=None) -> Decision:
    return decide(position=position, estimate=estimate, reference=reference, session_start=session_start,
                  moved_last_hour=moved, settings=config, hardware=hardware)


def spread(low: float, high: float) -> st.SearchStrategy[float]:
    """Values across the range, not only the simple ones and the ends hypothesis prefers."""
    even = st.integers(0, 10000).map(lambda i: low + (high - low) * (i * 7919 % 10001) / 10000)
    return st.one_of(even, even, st.floats(low, high))


@st.composite
def safety_settings(draw: st.DrawFn) -> SafetySettings:
    window = draw(spread(1.0, 5000.0))
    excursion = draw(spread(0.5, min(5000.0, window * math.sqrt(2))))
    max_step = draw(spread(0.5, 1000.0))
    deadband = draw(st.one_of(st.just(0.0), spread(0.0, min(100.0, max_step) * 0.999)))
    return SafetySettings(
        window_units=window,
        max_excursion_units=excursion,
        max_step_units=max_step,
        deadband_units=deadband,
        gain=draw(spread(0.01, 1.0)),
        rate_limit_units_per_hour=draw(st.one_of(spread(0.1, 100000.0),
                                                 st.integers(-10, 50).map(lambda e: 10 ** (e / 10)))),
        on_limit=draw(st.sampled_from(["scale", "refuse"])),
    )


coordinate = st.integers(-8388608, 8388607)
special = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1e308, 1.7e308, math.nan, math.inf, -math.inf]),
)


def component(scale: float) -> st.SearchStrategy[float]:
    """Mostly sizes that could become a move; sometimes tiny, huge or not a number at all."""
    likely = spread(-1.2 * scale, 1.2 * scale)
    return st.one_of(likely, likely, likely, likely, likely, likely, st.floats(-2 * scale, 2 * scale),
                     st.floats(-1.0, 1.0), special)


@st.composite
def hardware_limits(draw: st.DrawFn, around: tuple[int, int]) -> Limits | None:
    if draw(st.booleans()):
        return None
    lows = [around[i] - draw(st.integers(0, 6000)) for i in range(2)]
    highs = [around[i] + draw(st.integers(0, 6000)) for i in range(2)]
    return Limits(aperture_x=(lows[0], highs[0]), aperture_y=(lows[1], highs[1]), c1=(0.0, 1.0))


@st.composite
def cases(draw: st.DrawFn) -> dict:
    config = draw(safety_settings())
    reach = int(draw(st.sampled_from([0.3, 0.6, 1.0, 1.5])) * config.window_units) + 2
    centre = (draw(coordinate), draw(coordinate))
    position = (centre[0] + draw(st.integers(-reach, reach)), centre[1] + draw(st.integers(-reach, reach)))
    reference = draw(st.one_of(st.none(), st.just(centre)))
    session_start = centre if reference is None else (draw(coordinate), draw(coordinate))
    rate = config.rate_limit_units_per_hour
    scale = min(config.window_units, config.max_step_units) / config.gain
    return dict(
        position=position,
        estimate=(draw(component(scale)), draw(component(scale))),
        reference=reference,
        session_start=session_start,
        moved_last_hour=draw(st.one_of(st.just(0.0), spread(0.0, rate), st.floats(0.0, 2e5),
                                       st.sampled_from([rate, math.nan, math.inf]))),
        settings=config,
        hardware=draw(hardware_limits(position)),
    )


def check_invariant(case: dict, decision: Decision) -> None:
    config: SafetySettings = case["settings"]
    assert REASONS[decision.reason] == decision.action
    assert all(math.isfinite(v) for v in decision.requested)
    if decision.action != "move":
        assert decision.target is None and decision.step == (0.0, 0.0)
        return
    tx, ty = decision.target
    assert type(tx) is int and type(ty) is int
    px, py = case["position"]
    assert decision.step == (tx - px, ty - py)
    cx, cy = case["reference"] if case["reference"] is not None else case["session_start"]
    assert abs(tx - cx) <= config.window_units and abs(ty - cy) <= config.window_units
    assert math.hypot(tx - cx, ty - cy) <= config.max_excursion_units
    hardware = case["hardware"]
    if hardware is not None:
        assert hardware.aperture_x[0] <= tx <= hardware.aperture_x[1]
        assert hardware.aperture_y[0] <= ty <= hardware.aperture_y[1]
    sx, sy = decision.step
    assert max(abs(sx), abs(sy)) <= config.max_step_units
    assert math.hypot(sx, sy) <= config.rate_limit_units_per_hour - case["moved_last_hour"]
    ex, ey = case["estimate"]
    norm = math.hypot(ex, ey)
    assert norm >= config.deadband_units and norm > 0
    ux, uy = ex / norm, ey / norm
    assert sx * ux + sy * uy > 0
    assert abs(sx * uy - sy * ux) <= 1.0
    assert math.hypot(sx, sy) <= config.gain * norm + 1.0


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_move_never_leaves_the_envelope(case: dict) -> None:
    check_invariant(case, decide(**case))


@st.composite
def near_edge_cases(draw: st.DrawFn) -> dict:
    """Positions on and around the window and excursion edges, estimates of a few units: rounding."""
    config = draw(safety_settings())
    reach = int(config.window_units) + 3
    position = (draw(st.integers(-reach, reach)), draw(st.integers(-reach, reach)))
    return dict(
        position=position,
        estimate=(draw(st.floats(-5.0, 5.0)) / config.gain, draw(st.floats(-5.0, 5.0)) / config.gain),
        reference=(0, 0),
        session_start=(0, 0),
        moved_last_hour=draw(st.floats(0.0, config.rate_limit_units_per_hour + 2)),
        settings=config,
        hardware=draw(hardware_limits(position)),
    )


@settings(max_examples=300, deadline=None)
@given(near_edge_cases())
def test_rounding_at_the_edges_never_leaves_the_envelope(case: dict) -> None:
    check_invariant(case, decide(**case))


@settings(max_examples=50, deadline=None)
@given(safety_settings(), st.lists(st.tuples(st.floats(1.0, 900.0), st.floats(-2000.0, 2000.0),
                                              st.floats(-2000.0, 2000.0)), min_size=1, max_size=40))
def test_a_run_of_moves_never_exceeds_the_rate_limit_in_any_hour(
    config: SafetySettings, cycles: list[tuple[float, float, float]]
) -> None:
    """Each correction followed by its rollback, as long as it can be (the move, plus the motor
    tolerance on both axes): the hour's path never passes the limit (safety.md: "a correction is
    made only if the move and the rollback that may follow both fit")."""
    ledger = RateLedger()
    position, t, history = (0, 0), 0.0, []
    worst_extra = config.motor_tolerance_units * math.sqrt(2)
    for dt, ex, ey in cycles:
        t += dt
        decision = decide(position=position, estimate=(ex, ey), reference=(0, 0), session_start=(0, 0),
                          moved_last_hour=ledger.moved_since(t), settings=config)
        if decision.action == "move":
            length = math.hypot(*decision.step)
            for leg in (length, length + worst_extra):  # the move, then the rollback
                ledger.add(t, leg)
                history.append((t, leg))
            in_hour = math.fsum(x for s, x in history if s > t - 3600.0)
            assert in_hour <= config.rate_limit_units_per_hour + 1e-9


def test_corrected() -> None:
    decision = run(estimate=(100.0, -50.0))
    assert (decision.action, decision.reason) == ("move", "corrected")
    assert decision.requested == pytest.approx((80.0, -40.0))
    assert decision.target == (80, -40) and decision.step == (80.0, -40.0)
    assert decision.limits_hit == ()


def test_deadband_edge() -> None:
    below = run(estimate=(3.0, 3.9))
    assert (below.action, below.reason, below.target) == ("none", "within_deadband", None)
    at = run(estimate=(3.0, 4.0))
    assert (at.action, at.reason, at.target) == ("move", "corrected", (2, 3))


def test_scaled_max_step_keeps_the_direction() -> None:
    decision = run(estimate=(500.0, 250.0))
    assert (decision.action, decision.reason) == ("move", "scaled_max_step")
    assert decision.requested == pytest.approx((400.0, 200.0))
    assert decision.target == (250, 125)
    assert decision.limits_hit == ("max_step",)


def test_refused_max_step() -> None:
    decision = run(estimate=(500.0, 250.0), config=safety(on_limit="refuse"))
    assert (decision.action, decision.reason, decision.target) == ("refuse", "refused_max_step", None)
    assert decision.limits_hit == ("max_step",)
    assert decision.step == (0.0, 0.0)


def test_scaled_rate_limit() -> None:
    decision = run(estimate=(100.0, 0.0), moved=950.0)
    assert (decision.action, decision.reason) == ("move", "scaled_rate_limit")
    assert decision.target == (22, 0)  # (50 left - 3 sqrt 2 for the motor) / 2 = 22.9: its rollback fits
    assert decision.limits_hit == ("rate_limit",)


def test_scaled_by_both_limits() -> None:
    decision = run(estimate=(0.0, -500.0), moved=800.0, config=safety(window_units=500.0,
                                                                        max_excursion_units=500.0))
    assert (decision.action, decision.reason, decision.target) == ("move", "scaled_rate_limit", (0, -97))
    assert decision.limits_hit == ("max_step", "rate_limit")


def test_refused_rate_limit() -> None:
    refused = run(estimate=(100.0, 0.0), moved=950.0, config=safety(on_limit="refuse"))
    assert (refused.action, refused.reason, refused.target) == ("refuse", "refused_rate_limit", None)
    nearly_spent = run(estimate=(100.0, 0.0), moved=999.6)
    assert (nearly_spent.action, nearly_spent.reason) == ("refuse", "refused_rate_limit")
    spent = run(estimate=(100.0, 0.0), moved=1500.0)
    assert (spent.action, spent.reason) == ("refuse", "refused_rate_limit")
    no_room_to_go_back = run(estimate=(10.0, 0.0), moved=985.0, config=safety(on_limit="refuse"))
    assert (no_room_to_go_back.action, no_room_to_go_back.reason) == ("refuse", "refused_rate_limit")
    fits = run(estimate=(10.0, 0.0), moved=975.0, config=safety(on_limit="refuse"))
    assert (fits.action, fits.target) == ("move", (8, 0))


def test_refused_window_is_not_clipped() -> None:
    config = safety(max_excursion_units=500.0)
    decision = run(position=(380, 0), estimate=(50.0, 0.0), config=config)
    assert (decision.action, decision.reason, decision.target) == ("refuse", "refused_window", None)
    assert decision.limits_hit == ("window",)
    assert "420" in decision.detail
    inside = run(position=(360, 0), estimate=(50.0, 0.0), config=config)
    assert inside.target == (400, 0)


def test_refused_excursion_goes_to_hold() -> None:
    decision = run(position=(240, 240), estimate=(25.0, 0.0))
    assert (decision.action, decision.reason, decision.target) == ("hold", "refused_excursion", None)
    assert decision.limits_hit == ("max_excursion",)
    toward_centre = run(position=(240, 240), estimate=(-25.0, 0.0))
    assert toward_centre.target == (220, 240)


def test_excursion_outranks_window() -> None:
    decision = run(position=(390, 300), estimate=(25.0, 0.0))
    assert (decision.action, decision.reason) == ("hold", "refused_excursion")
    assert set(decision.limits_hit) == {"window", "max_excursion"}


@pytest.mark.parametrize("estimate", [(math.nan, 0.0), (0.0, math.inf), (-math.inf, 1.0), (1.7e308, 1.7e308)])
def test_refused_not_finite(estimate: tuple[float, float]) -> None:
    decision = run(estimate=estimate)
    assert (decision.action, decision.reason, decision.target) == ("refuse", "refused_not_finite", None)
    assert decision.requested == (0.0, 0.0)


def test_refused_not_finite_rate() -> None:
    decision = run(estimate=(100.0, 0.0), moved=math.nan)
    assert (decision.action, decision.reason) == ("refuse", "refused_not_finite")


@pytest.mark.parametrize("kwargs", [
    {"position": (1.5, 0)}, {"reference": (0, math.nan)}, {"session_start": (0,)}, {"moved": -1.0},
    {"position": (True, 0)}, {"position": (2**60, 0)},
])
def test_refused_invalid_input(kwargs: dict) -> None:
    decision = run(estimate=(100.0, 0.0), **kwargs)
    assert (decision.action, decision.reason, decision.target) == ("refuse", "refused_invalid_input", None)


def test_refused_hardware_limits() -> None:
    hardware = Limits(aperture_x=(-100, 100), aperture_y=(-100, 100), c1=(0.0, 1.0))
    decision = run(position=(90, 0), estimate=(20.0, 0.0), hardware=hardware)
    assert (decision.action, decision.reason, decision.target) == ("refuse", "refused_hardware_limits", None)
    assert decision.limits_hit == ("hardware",)
    edge = run(position=(84, 0), estimate=(20.0, 0.0), hardware=hardware)
    assert edge.target == (100, 0)


def test_below_resolution() -> None:
    decision = run(estimate=(0.5, 0.0), config=safety(deadband_units=0.0))
    assert (decision.action, decision.reason, decision.target) == ("none", "below_resolution", None)
    zero = run(estimate=(0.0, 0.0), config=safety(deadband_units=0.0))
    assert zero.reason == "below_resolution"


def test_envelope_centred_on_session_start_until_a_reference_exists() -> None:
    config = safety(max_excursion_units=500.0)
    start = (1000, 1000)
    without = run(position=(1380, 1000), estimate=(50.0, 0.0), reference=None, session_start=start,
                  config=config)
    assert (without.action, without.reason) == ("refuse", "refused_window")
    assert "session start" in without.detail
    with_reference = run(position=(1380, 1000), estimate=(50.0, 0.0), reference=(1380, 1000),
                         session_start=start, config=config)
    assert with_reference.target == (1420, 1000)


def test_rounding_never_pushes_past_the_window() -> None:
    config = safety(window_units=400.7, max_excursion_units=500.0, deadband_units=0.5)
    rounded_in = run(position=(399, 0), estimate=(2.0, 0.0), config=config)
    assert (rounded_in.action, rounded_in.target, rounded_in.step) == ("move", (400, 0), (1.0, 0.0))
    no_room = run(position=(400, 0), estimate=(0.75, 0.0), config=config)
    assert (no_room.action, no_room.reason, no_room.target) == ("refuse", "refused_window", None)
    assert "rounding" in no_room.detail


def test_rounding_never_pushes_past_the_excursion() -> None:
    config = safety(max_excursion_units=300.5, deadband_units=0.5)
    decision = run(position=(299, 0), estimate=(1.875, 0.0), config=config)
    assert (decision.action, decision.target) == ("move", (300, 0))
    beyond = run(position=(299, 0), estimate=(2.0, 0.0), config=config)
    assert (beyond.action, beyond.reason) == ("hold", "refused_excursion")


def test_rounding_never_exceeds_max_step_or_rate() -> None:
    step = run(estimate=(10.0, 0.0), config=safety(max_step_units=7.6, deadband_units=1.0))
    assert step.target == (7, 0)
    rate = run(estimate=(10.0, 0.0), moved=1000.0 - (2 * 7.6 + BASE.motor_tolerance_units * math.sqrt(2)))
    assert rate.target == (7, 0)


def test_decision_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        run().action = "move"  # type: ignore[misc]


def test_rate_ledger_expires_after_an_hour() -> None:
    ledger = RateLedger()
    ledger.add(0.0, 100.0)
    ledger.add(1800.0, 200.0)
    assert ledger.moved_since(1800.0) == 300.0
    assert ledger.moved_since(3599.9) == 300.0
    assert ledger.moved_since(3600.0) == 200.0
    assert ledger.moved_since(5400.0) == 0.0


def test_rate_ledger_counts_moves_after_a_clock_step_back() -> None:
    ledger = RateLedger()
    ledger.add(1000.0, 50.0)
    assert ledger.moved_since(500.0) == 50.0


def test_rate_ledger_survives_a_restart() -> None:
    ledger = RateLedger(window_s=60.0)
    ledger.add(10.0, 1.5)
    ledger.add(20.0, 2.5)
    restored = RateLedger.from_json(json.loads(json.dumps(ledger.to_json())), window_s=60.0)
    assert restored.moved_since(30.0) == 4.0
    assert restored.moved_since(75.0) == 2.5


@pytest.mark.parametrize("data", [{}, [[1.0]], [[1.0, -2.0]], [[math.nan, 1.0]], [["1", 2.0]], [[True, 1.0]]])
def test_rate_ledger_rejects_a_bad_file(data: object) -> None:
    with pytest.raises(ValueError):
        RateLedger.from_json(data)


@pytest.mark.parametrize(("t", "length"), [(0.0, -1.0), (math.nan, 1.0), (0.0, math.inf)])
def test_rate_ledger_rejects_bad_moves(t: float, length: float) -> None:
    with pytest.raises(ValueError):
        RateLedger().add(t, length)


def test_is_worse_margin() -> None:
    config = safety(rollback_margin_units=5.0)
    assert not is_worse(10.0, 15.0, config)
    assert is_worse(10.0, 15.01, config)
    assert not is_worse(10.0, 2.0, config)
    assert is_worse(10.0, math.nan, config)
    assert is_worse(0.0, 0.1, safety(rollback_margin_units=0.0))


def test_motor_fault() -> None:
    config = safety(motor_tolerance_units=3.0)
    assert not motor_fault((100, 100), (103, 97), config)
    assert motor_fault((100, 100), (104, 100), config)
    assert motor_fault((100, 100), (100, 96), config)


def test_failure_counter_reset_by_success() -> None:
    counter = FailureCounter(3)
    assert not counter.failure("rollback")
    assert not counter.failure("motor_fault")
    counter.success()
    assert (counter.count, counter.kinds) == (0, [])
    assert not counter.failure("protocol")
    assert not counter.failure("rollback")
    assert counter.failure("lens")
    assert counter.kinds == ["protocol", "rollback", "lens"]
    with pytest.raises(ValueError):
        FailureCounter(0)
