"""When the next cycle runs: the scheduling policy, a pure function of what the cycles saw.

Every wobble disturbs the experiment (7 x settle of C1 changes), so cycles should be as rare as
the drift allows, yet a jump (gun flash) is only seen by the next wobble, so the wait is capped.
The policy, after each cycle:

- a large misalignment before the cycle (a jump, a cold start, a big correction) or a correction
  that had to be rolled back: look again after `min_interval_s`, to finish the job;
- otherwise, from the drift rate (how far the aligned position moved per second between the
  cycles' estimates), wait until the residual misalignment is predicted to reach `target_units`,
  between `min_interval_s` and `max_interval_s`;
- no estimate to go on (an error, skipped, the first cycles) or nothing the daemon could act on
  (dry run, a refusal): `interval_s`.

Each wait also names the next look. After a cycle that left the column aligned (corrected, within
the deadband, checked) it is the two-frame check (service.cycle.CHECK_STEPS: one settle instead of
seven, the full wobble only when it sees a misalignment), and the wait is capped at
`check_interval_s` instead of `max_interval_s`: checks cost a seventh of a wobble each, so they
can come often enough to catch a jump early. After anything else the next look is a full wobble.

The daemon (service.daemon) and the session benchmark (tools/bench_session.py) call the same
`plan_next`, so the benchmark measures the shipped policy. `adaptive: false` is the old fixed
interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from temalign.config.schema import ScheduleSettings

if TYPE_CHECKING:
    from temalign.record.result import CycleResult

RATE_SMOOTHING = 0.3
"""Weight of the newest drift-rate sample (exponential average): the random walk makes single
samples noisy, and a trend is what predicts the next interval."""
MIN_RATE_SPAN_S = 120.0
"""Estimates closer in time than this say more about estimator noise than about drift."""
ACTED = ("corrected", "within_deadband", "checked")
"""Live outcomes where the daemon did what the estimate asked; after anything else (dry run, a
refusal) hurrying would only add wobbles, so the wait is `interval_s`; and after these alone the
next look may be the two-frame check."""


@dataclass(frozen=True)
class Observation:
    """What one cycle saw, in the policy's terms (from `observe`)."""

    t: float
    """Clock time of the cycle's start, seconds."""
    outcome: str
    aligned: tuple[float, float] | None
    """Estimated aligned position (position before + trusted estimate), motor units."""
    before: float | None
    """Estimated |m| before any move."""
    residual: float | None
    """Estimated |m| the cycle left: the verification's after a correction, else `before`."""


@dataclass(frozen=True)
class PlanState:
    """What the policy remembers between cycles."""

    t: float | None = None
    aligned: tuple[float, float] | None = None
    rate: float | None = None
    """Smoothed drift rate of the aligned position, units per second."""


@dataclass(frozen=True)
class Plan:
    """The wait until the next cycle (from the end of this one), why, and the state to keep."""

    delay_s: float
    reason: str
    state: PlanState
    look: str = "full"
    """"check" (the two-frame check first) or "full" (service.cycle.run_cycle's `look`)."""


def observe(result: CycleResult) -> Observation:
    """The policy's view of a `record.result.CycleResult` (imported for the type checker only, so this
    module stays pure)."""
    before = result.before
    aligned = None
    m_before = None
    delta = None
    if before is not None and before.trusted and before.delta is not None:
        delta = before.delta
    elif result.outcome == "checked" and result.check is not None:
        delta = result.check.delta
    if delta is not None and result.position_before:
        dx, dy = delta
        if math.isfinite(dx) and math.isfinite(dy):
            aligned = (result.position_before[0] + dx, result.position_before[1] + dy)
            m_before = math.hypot(dx, dy)
    residual = m_before
    if result.outcome == "corrected":
        after = result.after
        residual = after.misalignment if after is not None and after.misalignment is not None else None
    return Observation(t=float(result.started), outcome=result.outcome, aligned=aligned, before=m_before,
                       residual=residual)


def plan_next(state: PlanState, obs: Observation, settings: ScheduleSettings, *,
              can_check: bool = True) -> Plan:
    """The next wait after a cycle that saw `obs`, its look, and the updated state. `can_check`:
    whether the daemon can look with the check at all (service.cycle.can_check)."""
    plan = _wait(state, obs, settings)
    if not (can_check and settings.adaptive and settings.check_interval_s and obs.outcome in ACTED):
        return plan
    if plan.delay_s > settings.check_interval_s:
        cap = settings.check_interval_s
        return Plan(cap, f"{plan.reason}; a check after {cap:g} s", plan.state, "check")
    return Plan(plan.delay_s, plan.reason, plan.state, "check")


def _wait(state: PlanState, obs: Observation, settings: ScheduleSettings) -> Plan:
    if not settings.adaptive:
        return Plan(settings.interval_s, "fixed interval", state)
    if obs.outcome == "rolled_back":
        return Plan(settings.min_interval_s, "rolled back: look again soon", state)
    if obs.aligned is None or obs.before is None:
        return Plan(settings.interval_s, f"no estimate to go on ({obs.outcome})", state)

    large = obs.before >= settings.recheck_units
    rate = state.rate
    if state.t is not None and state.aligned is not None and not large:
        span = obs.t - state.t
        if span >= MIN_RATE_SPAN_S:
            sample = math.dist(obs.aligned, state.aligned) / span
            rate = sample if rate is None else rate + RATE_SMOOTHING * (sample - rate)
    new = PlanState(t=obs.t, aligned=obs.aligned, rate=rate)
    if obs.outcome not in ACTED:
        return Plan(settings.interval_s, f"nothing corrected ({obs.outcome})", new)
    if large and obs.outcome == "corrected":
        return Plan(settings.min_interval_s, f"corrected from |m| {obs.before:.1f}: look again soon", new)
    if rate is None or obs.residual is None:
        return Plan(settings.interval_s, "no drift rate yet", new)
    room = settings.target_units - obs.residual
    if room <= 0:
        return Plan(settings.min_interval_s, f"residual {obs.residual:.1f} at or above the target", new)
    wanted = room / rate if rate > 0 else math.inf
    delay = min(max(wanted, settings.min_interval_s), settings.max_interval_s)
    return Plan(delay, f"drift {rate * 3600:.1f} units/h, residual {obs.residual:.1f}", new)
