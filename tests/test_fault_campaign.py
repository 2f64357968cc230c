"""The fault campaign, reduced for `make test` (issue 5, item 6): 60 seeded fault scenarios, each
checked against every invariant of safety.md, and a real `temalign run` killed 3 times with SIGKILL
and restarted. Any violation fails, with the seed that replays it."""

from __future__ import annotations

import json

from benchkit.faults import kill_campaign, load_model, plan_scenario, run_scenario, scenario_seed

SCENARIOS = 60
KILLS = 3
SEED = 7


def test_plans_replay_from_their_seed() -> None:
    assert plan_scenario(scenario_seed(SEED, 3)) == plan_scenario(scenario_seed(SEED, 3))
    assert plan_scenario(1) != plan_scenario(2)


def test_fault_scenarios_break_no_invariant() -> None:
    model = load_model()
    results = [run_scenario(plan_scenario(scenario_seed(SEED, i)), model) for i in range(SCENARIOS)]
    violations = [v for r in results for v in r["violations"]]
    assert not violations, ("replay with tools/fault_campaign.py --replay SEED:\n"
                            + json.dumps(violations, indent=1))
    assert sum(r["checks"] for r in results) >= 2 * SCENARIOS
    kinds = {k for r in results for k in r["kinds"]}
    assert len(kinds) >= 8, kinds


def test_a_daemon_killed_and_restarted_keeps_every_invariant() -> None:
    result = kill_campaign(SEED, KILLS)
    assert not result["violations"], json.dumps(result["violations"], indent=1)
    assert result["ready_s"]["starts"] == KILLS + 1
