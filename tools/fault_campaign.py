"""The fault campaign (issue 5, item 4): randomised, seeded fault scenarios against the twin, each
checked against every invariant of safety.md, plus a real `temalign run` killed with SIGKILL at
random moments and restarted, plus rounds of daemon-level faults against a real `temalign run`
(benchkit/daemon_faults.py: its socket path taken, a second daemon, floods, hostile bytes, an
interlock during `once`, a read-only state dir). Writes a JSON result; exits 1 on any violation.

    python tools/fault_campaign.py --seed 0 --scenarios 1000 --kills 20 --daemon-rounds 3 \
        --out runs/faults.json
    python tools/fault_campaign.py --replay 17   # one scenario again, by its seed, with its plan
    python tools/fault_campaign.py --scenarios 200 --kills 0 --optics traced --column C --scene S

With --optics/--column/--scene the scenarios run on that twin, the daemon calibrated there once
(the kill and daemon rounds test the process, not the optics: they stay on the default twin)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit.daemon_faults import daemon_campaign
from benchkit.faults import (
    INVARIANTS,
    TwinChoice,
    kill_campaign,
    load_model,
    plan_scenario,
    run_scenario,
    scenario_seed,
)
from benchkit.session import twin_choice

from temalign_twin.cli import add_optics_arguments

PROGRESS_EVERY = 50


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per fault kind (scenarios, cycle outcomes, final outcomes, violations)."""
    per_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"scenarios": 0, "outcomes": Counter(),
                                                               "violations": 0})
    outcomes: Counter[str] = Counter()
    for r in results:
        for kind in r["kinds"]:
            row = per_kind[kind]
            row["scenarios"] += 1
            row["outcomes"].update(o.split("/")[0] for o in r["outcomes"])
            row["violations"] += len(r["violations"])
        outcomes.update(r["outcomes"])
    return {"per_kind": {k: {**v, "outcomes": dict(sorted(v["outcomes"].items()))}
                         for k, v in sorted(per_kind.items())},
            "outcomes": dict(outcomes.most_common())}


def midcycle_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The mid-cycle events: how many scenarios planned each, how many cycles it struck (an event
    at the n-th call of a kind that the cycle never made does not fire), the rollbacks at a tight
    rate limit, and why any could not run here."""
    planned: Counter[str] = Counter(k.split(":", 1)[1] for r in results for k in r["kinds"]
                                    if k.startswith("midcycle:"))
    fired: Counter[str] = Counter()
    for r in results:
        fired.update(r["midcycle_fired"])
    rollbacks = sum(1 for r in results if "midcycle:jump" in r["kinds"]
                    for o in r["outcomes"] if o.endswith("/rolled_back"))
    return {"scenarios": dict(sorted(planned.items())), "fired": dict(sorted(fired.items())),
            "rollbacks_at_the_rate_limit": rollbacks,
            "not_run": sorted({r["not_run"] for r in results if r["not_run"]})}


def run_campaign(seed: int, scenarios: int, kills: int, daemon_rounds: int = 0,
                 progress: bool = True, twin_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole campaign as one JSON-able result. `twin_overrides` (--optics, --column,
    --scene) choose the scenarios' twin; the kill and daemon rounds test the process, not the
    optics, and stay on the default twin."""
    def say(line: str) -> None:
        if progress:
            print(line, flush=True)

    model = load_model()
    choice = TwinChoice.of(twin_overrides or {})
    say(f"scenarios on {choice.overrides or 'the default twin'}, calibration {choice.calibration_note}")
    t0 = time.perf_counter()
    results = []
    for i in range(scenarios):
        results.append(run_scenario(plan_scenario(scenario_seed(seed, i)), model, choice))
        if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == scenarios:
            bad = sum(len(r["violations"]) for r in results)
            say(f"{i + 1}/{scenarios} scenarios, {bad} violations, {time.perf_counter() - t0:.1f} s")
    scenario_s = time.perf_counter() - t0
    killed = kill_campaign(seed, kills, progress=say) if kills else None
    daemon = daemon_campaign(seed, daemon_rounds, progress=say) if daemon_rounds else None
    violations = [v for r in results for v in r["violations"]] + (killed["violations"] if killed else []) \
        + (daemon["violations"] if daemon else [])
    findings = [f for r in results for f in r["findings"]]
    per_s = [r["seconds"] for r in results]
    return {
        "tool": "tools/fault_campaign.py", "seed": seed,
        "command": f"python tools/fault_campaign.py --seed {seed} --scenarios {scenarios} --kills {kills} "
                   f"--daemon-rounds {daemon_rounds}",
        "twin": choice.overrides, "calibration": choice.calibration_note,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "scenarios": scenarios, "invariants_per_scenario": INVARIANTS,
        "cycles_checked": sum(r["checks"] for r in results),
        "scenario_seconds": {"total": round(scenario_s, 1),
                             "median": round(sorted(per_s)[len(per_s) // 2], 3) if per_s else None,
                             "max": max(per_s, default=None)},
        **summarise(results),
        "final_cycle": dict(Counter(r["final"].split("/")[0] for r in results).most_common()),
        "midcycle": midcycle_summary(results),
        "findings": {"counts": dict(Counter(f["kind"] for f in findings)), "examples": findings[:20]},
        "kill_campaign": killed,
        "daemon_campaign": daemon,
        "violations": violations,
        "ok": not violations,
    }


REPORT_COLUMNS = ("corrected", "checked", "rolled_back", "error", "hold", "refused_doubtful_stack",
                  "refused_limit", "within_deadband", "skipped", "dry_run")


def report(result: dict[str, Any]) -> str:
    """docs/reliability.md's tables from a campaign's JSON: cycle outcomes and violations per
    fault kind, the final cycles, the mid-cycle strikes."""
    head = ["fault kind", "scenarios", "cycles", *(c.replace("_", " ") for c in REPORT_COLUMNS), "other",
            "violations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, row in sorted(result["per_kind"].items()):
        counts = row["outcomes"]
        shown = [counts.get(c, 0) for c in REPORT_COLUMNS]
        total = sum(counts.values())
        lines.append("| " + " | ".join(str(v) for v in (kind, row["scenarios"], total, *shown,
                                                          total - sum(shown), row["violations"])) + " |")
    final = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in result["final_cycle"].items())
    mid = result["midcycle"]
    planned = ", ".join(f"{k} {n}" for k, n in mid["scenarios"].items())
    fired = ", ".join(f"{k} {n}" for k, n in mid["fired"].items())
    return ("\n".join(lines) + f"\n\n{result['scenarios']} scenarios, {result['cycles_checked']} cycles "
            f"checked, {len(result['violations'])} violations. Final cycle with the faults cleared: "
            f"{final}.\n"
            f"Mid-cycle strikes planned (scenarios): {planned}; fired (strikes): {fired}; "
            f"{mid['rollbacks_at_the_rate_limit']} rollbacks in scenarios with a tight rate limit.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0,
                        help="campaign seed (scenario i has seed SEED*1e6+i)")
    parser.add_argument("--scenarios", type=int, default=1000,
                        help="randomised fault scenarios (default 1000)")
    parser.add_argument("--kills", type=int, default=20,
                        help="SIGKILLs of a real `temalign run` (default 20)")
    parser.add_argument("--daemon-rounds", type=int, default=0,
                        help="rounds of every daemon-level fault against a real `temalign run` (default 0)")
    parser.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    parser.add_argument("--replay", type=int, metavar="SEED", help="run one scenario by its seed, print it")
    parser.add_argument("--report", type=Path, metavar="RESULT.json",
                        help="print the markdown tables of a campaign's JSON result, run nothing")
    add_optics_arguments(parser)
    args = parser.parse_args(argv)
    if args.report is not None:
        print(report(json.loads(args.report.read_text())), end="")
        return 0
    overrides = twin_choice(parser, args)
    if args.replay is not None:
        plan = plan_scenario(args.replay)
        result = run_scenario(plan, load_model(), TwinChoice.of(overrides))
        print(json.dumps({"plan": plan, "result": result}, indent=1, default=str))
        return 1 if result["violations"] else 0
    result = run_campaign(args.seed, args.scenarios, args.kills, args.daemon_rounds, twin_overrides=overrides)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}: {len(result['violations'])} violations")
    else:
        print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
