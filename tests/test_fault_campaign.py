"""The fault campaign, reduced for `make test` (issue 5, item 6; issue 11): 60 seeded fault
scenarios, each checked against every invariant of safety.md, among them a disk that fills or turns
read-only, a pause or busy file, and a rollback at a tight rate limit, each striking mid-cycle;
and a real `temalign run` killed 3 times with SIGKILL and restarted. Any violation fails, with the
seed that replays it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from benchkit.disk import unavailable
from benchkit.faults import kill_campaign, load_model, plan_scenario, run_scenario, scenario_seed
from fault_campaign import midcycle_summary

SCENARIOS = 60
KILLS = 3
SEED = 7


def test_plans_replay_from_their_seed() -> None:
    assert plan_scenario(scenario_seed(SEED, 3)) == plan_scenario(scenario_seed(SEED, 3))
    assert plan_scenario(1) != plan_scenario(2)


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    model = load_model()
    return [run_scenario(plan_scenario(scenario_seed(SEED, i)), model) for i in range(SCENARIOS)]


def test_fault_scenarios_break_no_invariant(results: list[dict[str, Any]]) -> None:
    violations = [v for r in results for v in r["violations"]]
    assert not violations, ("replay with tools/fault_campaign.py --replay SEED:\n"
                            + json.dumps(violations, indent=1))
    assert sum(r["checks"] for r in results) >= 2 * SCENARIOS
    kinds = {k for r in results for k in r["kinds"]}
    assert len(kinds) >= 8, kinds


def test_pauses_busy_files_and_rollbacks_at_the_rate_limit_strike_mid_cycle(
        results: list[dict[str, Any]]) -> None:
    summary = midcycle_summary(results)
    for action in ("pause", "busy", "jump"):
        assert summary["fired"].get(action, 0) >= 1, summary


def test_a_full_or_read_only_disk_strikes_mid_cycle(results: list[dict[str, Any]]) -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(why)
    summary = midcycle_summary(results)
    for action in ("full", "read-only"):
        assert summary["fired"].get(action, 0) >= 1, summary


def test_a_daemon_killed_and_restarted_keeps_every_invariant() -> None:
    result = kill_campaign(SEED, KILLS)
    assert not result["violations"], json.dumps(result["violations"], indent=1)
    assert result["ready_s"]["starts"] == KILLS + 1
