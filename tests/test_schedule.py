"""The scheduling policy (service.schedule): waits after each kind of cycle, the drift-rate estimate,
the bounds, the fixed-interval fallback, and the settings' consistency checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from temalign.config.schema import ScheduleSettings
from temalign.service.schedule import MIN_RATE_SPAN_S, Observation, PlanState, observe, plan_next

S = ScheduleSettings(interval_s=600, min_interval_s=60, max_interval_s=800, target_units=10, recheck_units=15,
                     check_interval_s=0)
"""The full-wobble policy alone (no two-frame checks): the waits below are worked by hand from it."""
SC = S.model_copy(update={"check_interval_s": 300.0})


def obs(t: float, aligned: tuple[float, float] | None, before: float | None, outcome: str = "within_deadband",
        residual: float | None = None) -> Observation:
    return Observation(t=t, outcome=outcome, aligned=aligned, before=before,
                       residual=before if residual is None else residual)


def test_first_cycle_waits_the_base_interval_and_remembers() -> None:
    plan = plan_next(PlanState(), obs(0.0, (100.0, 50.0), 2.0), S)
    assert plan.delay_s == 600
    assert plan.state.aligned == (100.0, 50.0) and plan.state.rate is None


def test_slow_drift_waits_long_but_never_past_the_cap() -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0))
    plan = plan_next(state, obs(600.0, (0.6, 0.0), 1.0), S)  # 3.6 units/h
    assert plan.state.rate == pytest.approx(0.001)
    assert plan.delay_s == 800


def test_fast_drift_comes_back_when_the_target_is_reached() -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0))
    plan = plan_next(state, obs(600.0, (6.0, 0.0), 4.0), S)  # 0.01 units/s, 6 units of room
    assert plan.delay_s == pytest.approx(600.0)
    faster = plan_next(state, obs(600.0, (60.0, 0.0), 4.0), S)
    assert faster.delay_s == S.min_interval_s


def test_rate_is_smoothed_not_replaced() -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.001)
    plan = plan_next(state, obs(1000.0, (11.0, 0.0), 2.0), S)
    assert plan.state.rate == pytest.approx(0.001 + 0.3 * (0.011 - 0.001))


def test_estimates_too_close_in_time_leave_the_rate_alone() -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.002)
    plan = plan_next(state, obs(MIN_RATE_SPAN_S / 2, (5.0, 0.0), 2.0), S)
    assert plan.state.rate == 0.002


def test_large_correction_looks_again_soon_and_a_jump_does_not_count_as_drift() -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.001)
    plan = plan_next(state, obs(800.0, (60.0, 0.0), 60.0, outcome="corrected", residual=3.0), S)
    assert plan.delay_s == S.min_interval_s
    assert plan.state.rate == 0.001
    assert plan.state.aligned == (60.0, 0.0)


def test_residual_at_or_above_target_looks_again_soon() -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.001)
    plan = plan_next(state, obs(800.0, (1.0, 0.0), 12.0, outcome="corrected", residual=11.0), S)
    assert plan.delay_s == S.min_interval_s


@pytest.mark.parametrize("outcome", ["dry_run", "refused_limit"])
def test_nothing_to_act_on_waits_the_base_interval(outcome: str) -> None:
    """A dry-run daemon on a misaligned column must not wobble every minute."""
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.001)
    assert plan_next(state, obs(800.0, (80.0, 0.0), 80.0, outcome=outcome), S).delay_s == S.interval_s


@pytest.mark.parametrize("outcome", ["error", "refused_doubtful_stack", "skipped", "hold"])
def test_no_estimate_waits_the_base_interval_and_keeps_the_state(outcome: str) -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.001)
    plan = plan_next(state, Observation(800.0, outcome, None, None, None), S)
    assert plan.delay_s == S.interval_s and plan.state == state


def test_rollback_looks_again_soon() -> None:
    plan = plan_next(PlanState(), obs(0.0, (1.0, 1.0), 30.0, outcome="rolled_back"), S)
    assert plan.delay_s == S.min_interval_s


def test_fixed_interval_when_not_adaptive() -> None:
    fixed = ScheduleSettings(interval_s=300, adaptive=False)
    plan = plan_next(PlanState(), obs(0.0, (0.0, 0.0), 90.0, outcome="corrected"), fixed)
    assert plan.delay_s == 300


def test_every_wait_is_within_the_bounds() -> None:
    state = PlanState()
    t = 0.0
    for i in range(200):
        outcome = ("corrected", "within_deadband", "rolled_back", "error")[i % 4]
        o = obs(t, (i * 0.7, -i * 0.3), float(i % 30), outcome=outcome, residual=float(i % 13))
        plan = plan_next(state, o, S)
        assert S.min_interval_s <= plan.delay_s <= max(S.max_interval_s, S.interval_s)
        state = plan.state
        t += plan.delay_s + 15.0


def test_observe_reads_a_cycle_result() -> None:
    before = SimpleNamespace(trusted=True, delta=(3.0, 4.0), misalignment=5.0)
    after = SimpleNamespace(trusted=True, delta=(0.3, 0.4), misalignment=0.5)
    result = SimpleNamespace(started=12.0, outcome="corrected", position_before=(100, 200), before=before,
                             after=after)
    o = observe(result)
    assert o == Observation(12.0, "corrected", (103.0, 204.0), 5.0, 0.5)
    untrusted = SimpleNamespace(started=1.0, outcome="refused_low_confidence", position_before=(0, 0),
                                before=SimpleNamespace(trusted=False, delta=(1.0, 1.0)), after=None)
    assert observe(untrusted).aligned is None
    nothing = SimpleNamespace(started=1.0, outcome="error", position_before=None, before=None, after=None)
    assert observe(nothing).before is None


@pytest.mark.parametrize("outcome", ["within_deadband", "corrected", "checked"])
def test_after_an_aligned_column_the_next_look_is_a_check_within_check_interval(outcome: str) -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.0001)  # slow drift: the full policy waits 800 s
    plan = plan_next(state, obs(800.0, (0.1, 0.0), 2.0, outcome=outcome, residual=2.0), SC)
    assert plan.look == "check"
    assert plan.delay_s == SC.check_interval_s
    assert plan_next(state, obs(800.0, (0.1, 0.0), 2.0, outcome=outcome, residual=2.0), S).look == "full"


def test_a_daemon_that_cannot_check_keeps_the_full_policy() -> None:
    """No calibration, or `estimator.use: model`: the cap stays max_interval_s (a full wobble every
    check_interval_s would wobble too much)."""
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.0001)
    o = obs(800.0, (0.1, 0.0), 2.0, outcome="within_deadband", residual=2.0)
    assert plan_next(state, o, SC, can_check=False) == plan_next(state, o, S)


def test_a_shorter_wait_than_check_interval_is_kept() -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.001)
    plan = plan_next(state, obs(800.0, (60.0, 0.0), 60.0, outcome="corrected", residual=3.0), SC)
    assert (plan.delay_s, plan.look) == (SC.min_interval_s, "check")


@pytest.mark.parametrize("outcome", ["rolled_back", "dry_run", "refused_limit", "refused_low_confidence",
                                     "refused_doubtful_stack", "error", "skipped", "hold"])
def test_after_anything_else_the_next_look_is_a_full_wobble(outcome: str) -> None:
    state = PlanState(t=0.0, aligned=(0.0, 0.0), rate=0.001)
    plan = plan_next(state, obs(800.0, (30.0, 0.0), 30.0, outcome=outcome), SC)
    assert plan.look == "full"
    assert plan.delay_s == plan_next(state, obs(800.0, (30.0, 0.0), 30.0, outcome=outcome), S).delay_s


def test_fixed_interval_never_checks() -> None:
    fixed = ScheduleSettings(interval_s=300, adaptive=False)
    plan = plan_next(PlanState(), obs(0.0, (0.0, 0.0), 1.0, outcome="checked"), fixed)
    assert (plan.delay_s, plan.look) == (300, "full")


def test_observe_reads_a_check() -> None:
    check = SimpleNamespace(delta=(3.0, -4.0))
    result = SimpleNamespace(started=5.0, outcome="checked", position_before=(10, 20), before=None,
                             after=None, check=check)
    assert observe(result) == Observation(5.0, "checked", (13.0, 16.0), 5.0, 5.0)


@pytest.mark.parametrize("raw, key", [
    ({"check_interval_s": 30}, "check_interval_s"),
    ({"check_interval_s": 900}, "check_interval_s"),
    ({"min_interval_s": 900, "max_interval_s": 600}, "min_interval_s"),
    ({"min_interval_s": 20, "jitter_s": 10}, "jitter_s"),
    ({"interval_s": 10, "jitter_s": 5}, "jitter_s"),
])
def test_inconsistent_settings_are_refused(raw: dict[str, float], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        ScheduleSettings.model_validate(raw)


def test_the_daemon_replans_its_cycle_job_after_each_cycle() -> None:
    """service.daemon applies the policy: after a scheduled cycle the one cycle job's next run moves
    to the planned wait (a fixed-interval job would fire again after interval_s)."""
    import threading
    from datetime import UTC, datetime

    from temalign.clock import ScaledClock
    from temalign.service.daemon import Daemon

    settings = SimpleNamespace(schedule=ScheduleSettings(interval_s=600, jitter_s=0, min_interval_s=60,
                                                         max_interval_s=800))
    before = SimpleNamespace(trusted=True, delta=(40.0, 0.0), misalignment=40.0)
    after = SimpleNamespace(trusted=True, delta=(0.5, 0.0), misalignment=0.5)
    result = SimpleNamespace(started=0.0, outcome="corrected", position_before=(0, 0), before=before,
                             after=after)
    fake = SimpleNamespace(settings=settings, clock=ScaledClock(1.0), _stop=threading.Event(),
                           _plan_state=PlanState(), _next_look="full", _scheduler=None,
                           cycle=lambda look: result,
                           parts=SimpleNamespace(estimator=SimpleNamespace(calibration="measured"),
                                                 settings=SimpleNamespace(estimator=SimpleNamespace(use="both"))))
    fake._plan_at = lambda delay: Daemon._plan_at(fake, delay)  # type: ignore[arg-type]
    fake._scheduled = lambda: Daemon._scheduled(fake)  # type: ignore[arg-type]
    Daemon._start_scheduler(fake)  # type: ignore[arg-type]
    try:
        Daemon._scheduled(fake)  # type: ignore[arg-type]
        wait = (fake._scheduler.get_job("cycle").next_run_time - datetime.now(UTC)).total_seconds()
        assert 55.0 < wait <= 60.0  # a correction from 40 units: look again after min_interval_s
        assert fake._plan_state.aligned == (40.0, 0.0)
        assert fake._next_look == "check"  # the column was left aligned: the two-frame check next
    finally:
        fake._scheduler.shutdown(wait=False)
