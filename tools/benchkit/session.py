"""A closed-loop session on the simulated column: the real cycle and the real scheduling policy on
one stepped clock, the truth sampled as the clock moves, and an independent envelope check.

Used by tools/bench_session.py, tools/bench_coldstart.py and tests/test_bench_session.py. The
strategies meet the same drift (the twin's drift is a function of seed and twin time only)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchkit.harness import SHIPPED_MODEL, SimColumn, sim_column
from temalign.config.schema import Settings
from temalign.service.cycle import can_check, run_cycle
from temalign.service.schedule import PlanState, observe, plan_next

STRATEGIES = ("none", "person", "classical", "model", "combined")
ESTIMATOR_USE = {"classical": "classical", "model": "model", "combined": "both"}
BAND_UNITS = 20.0
PERSON_SIGMA_UNITS = 7.0
"""A person re-centring by eye: normal error per axis, motor units."""
PERSON_BEAM_S = 60.0
"""Beam time a person's alignment takes (disturbs the experiment like a wobble)."""
PERSON_EVERY_S = 3600.0
STEP_S = 30.0
MOTOR_NOISE_ALLOWANCE = 0.0
"""Commanded targets are exact integers: the envelope check allows nothing."""


@dataclass
class Sampler:
    """The true |m| after every advance of the clock (settles and moves inside a cycle included)."""

    col: SimColumn
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def install(self) -> None:
        clock = self.col.clock
        advance = clock.advance

        def sampled(seconds: float) -> float:
            t = advance(seconds)
            self.sample()
            return t

        clock.advance = sampled  # type: ignore[method-assign]
        self.sample()

    def sample(self) -> None:
        truth = self.col.truth()
        self.times.append(float(truth["time"]))
        self.values.append(float(math.hypot(*truth["misalignment"])))


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`section.key=value` overrides (YAML scalars) for the daemon's settings."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not (section in ("safety", "schedule") and name and value):
            raise SystemExit(f"--set {item!r}: expected safety.KEY=VALUE or schedule.KEY=VALUE")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def twin_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The twin settings layer of --optics, --column and --scene ({} for the default twin); a bad
    choice is the parser's error, naming it."""
    from temalign.errors import ConfigError
    from temalign_twin.cli import optics_overrides

    try:
        return optics_overrides(args.optics, args.column, args.scene)
    except ConfigError as error:
        parser.error(str(error))


def advance_until(col: SimColumn, t_end: float, step_s: float = STEP_S) -> None:
    """Move the stepped clock to `t_end` in steps of at most `step_s` (each one sampled)."""
    while col.clock.now() < t_end - 1e-9:
        col.clock.advance(min(step_s, t_end - col.clock.now()))


def envelope_violations(entries: list[dict[str, Any]], settings: Settings, session_start: tuple[int, int]
                        ) -> list[str]:
    """Every commanded move and rollback in the journal against the envelope of safety.md, checked
    here independently of decide/envelope.py: window and excursion around the centre in force (the
    session start until the reference is recorded), max_step per axis per move, the hourly rate."""
    s = settings.safety
    centre = session_start
    moved: list[tuple[float, float]] = []
    out: list[str] = []
    for e in entries:
        if e.get("kind") == "reference" and e.get("position") is not None:
            centre = tuple(e["position"])  # type: ignore[assignment]
        if e.get("kind") not in ("move", "rollback") or e.get("phase") != "intent":
            continue
        target, origin, t = e["target"], e["origin"], float(e.get("t", 0.0))
        dx, dy = target[0] - centre[0], target[1] - centre[1]
        where = f"t={t:.0f} {e['kind']} {origin}->{target} (centre {centre})"
        if max(abs(dx), abs(dy)) > s.window_units:
            out.append(f"{where}: outside the window {s.window_units:g}")
        if math.hypot(dx, dy) > s.max_excursion_units:
            out.append(f"{where}: past max_excursion {s.max_excursion_units:g}")
        step = max(abs(target[0] - origin[0]), abs(target[1] - origin[1]))
        if e["kind"] == "move" and step > s.max_step_units:
            out.append(f"{where}: step above max_step {s.max_step_units:g}")
        moved = [(tt, d) for tt, d in moved if tt > t - 3600.0]
        length = math.dist(origin, target)
        if e["kind"] == "move" and sum(d for _, d in moved) + length > s.rate_limit_units_per_hour + 4.0:
            out.append(f"{where}: past the rate limit {s.rate_limit_units_per_hour:g}/h")
        moved.append((t, length))
    return out


def wobble_seconds(entries: list[dict[str, Any]]) -> tuple[int, int, float]:
    """Number of full wobbles, of two-frame checks, and their twin time together (intent to
    outcome), from the journal."""
    started: dict[int, float] = {}
    wobbles, checks, total = 0, 0, 0.0
    for e in entries:
        if e.get("kind") != "wobble":
            continue
        if e.get("phase") == "intent":
            started[e["seq"]] = float(e["t"])
            if e.get("label") == "check":
                checks += 1
            else:
                wobbles += 1
        elif e.get("op") in started:
            total += float(e["t"]) - started.pop(e["op"])
    return wobbles, checks, total


def summarise(times: list[float], values: list[float], t_end: float) -> dict[str, float]:
    """Time-weighted figures of |m| (each sample holds until the next one)."""
    t = np.asarray([*times, t_end])
    m = np.asarray(values)
    w = np.clip(np.diff(t), 0.0, None)
    total = float(w.sum())
    return {"within_20_fraction": float(w[m <= BAND_UNITS].sum() / total),
            "rms_units": float(math.sqrt(float((w * m * m).sum()) / total)),
            "worst_units": float(m.max()), "mean_units": float((w * m).sum() / total)}


def run_session(seed: int, strategy: str, *, hours: float = 12.0, schedule: dict[str, Any] | None = None,
                safety: dict[str, Any] | None = None, keep_trace: bool = False,
                progress: Callable[[str], None] | None = None,
                twin_overrides: dict[str, Any] | None = None, model: Path = SHIPPED_MODEL) -> dict[str, Any]:
    """One session of `hours` twin hours for `strategy` on seed `seed`, starting aligned (on
    another column or scene, `twin_overrides`, calibrated there first), with `model` (a .tflite,
    its card beside it)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    overrides: dict[str, Any] = {"schedule": {**(schedule or {}), "mode": "live"}, "safety": safety or {}}
    if strategy in ESTIMATOR_USE:
        overrides["estimator"] = {"use": ESTIMATOR_USE[strategy]}
    t_end = hours * 3600.0
    with sim_column(seed, overrides=overrides, twin_overrides=twin_overrides, model=model) as col:
        sampler = Sampler(col)
        sampler.install()
        record: dict[str, Any] = {"seed": seed, "strategy": strategy, "hours": hours,
                                  "calibration": col.notes.get("calibration", "nominal")}
        if strategy == "none":
            advance_until(col, t_end)
        elif strategy == "person":
            record.update(_person(col, seed, t_end))
        else:
            record.update(daemon_run(col, seed, t_end))
        record.update(summarise(sampler.times, sampler.values, t_end))
        record["disturbed_fraction"] = record.get("disturbed_s", 0.0) / t_end
        if keep_trace:
            record["trace"] = {"t": sampler.times, "m": sampler.values}
    if progress is not None:
        progress(f"seed {seed:3d} {strategy:9s} within20 {record['within_20_fraction']:.4f} "
                 f"rms {record['rms_units']:5.2f} worst {record['worst_units']:6.1f} "
                 f"disturbed {record['disturbed_fraction']:.4f} wobbles {record.get('wobbles', 0)} "
                 f"checks {record.get('checks', 0)}")
    return record


def _person(col: SimColumn, seed: int, t_end: float) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 7])
    n = 0
    t = PERSON_EVERY_S
    while t < t_end:
        advance_until(col, t)
        advance_until(col, min(t + PERSON_BEAM_S, t_end))
        dx, dy = rng.normal(0.0, PERSON_SIGMA_UNITS, size=2)
        col.offset(float(dx), float(dy))
        n += 1
        t += PERSON_EVERY_S
    advance_until(col, t_end)
    return {"alignments": n, "disturbed_s": n * PERSON_BEAM_S}


def _check_error(check: Any, true_m: list[float]) -> float | None:
    """How far the two-frame check's delta was from the truth (delta = a* - a = -m), units."""
    if check is None or check.delta is None:
        return None
    return round(math.hypot(check.delta[0] + true_m[0], check.delta[1] + true_m[1]), 3)


def check_accuracy(logs: list[list[dict[str, Any]]], deadband: float) -> dict[str, Any] | None:
    """The check against the truth over the sessions' cycle logs: its error, and how often it
    misjudged the deadband (a miss leaves a correction for a later cycle; a false alarm costs a
    full wobble that ends within the deadband)."""
    rows = [c for log in logs for c in log if c.get("check_error") is not None]
    if not rows:
        return None
    errors = np.asarray([c["check_error"] for c in rows])
    missed = sum(1 for c in rows if c["outcome"] == "checked" and c["true_before"] >= deadband)
    false_alarms = sum(1 for c in rows if c["outcome"] == "within_deadband")
    return {"checks": len(rows), "error_units": {"median": float(np.median(errors)),
                                                 "p95": float(np.percentile(errors, 95)),
                                                 "max": float(errors.max())},
            "missed_at_or_above_deadband": missed, "escalated_then_within_deadband": false_alarms}


def daemon_run(col: SimColumn, seed: int, t_end: float) -> dict[str, Any]:
    """The daemon's real cycle and scheduling policy on `col` until twin time `t_end`: its cycles,
    outcomes, refusals and the journal's figures (tools/bench_learning.py runs it a day at a time)."""
    settings = col.settings
    jitter = np.random.default_rng([seed, 11])
    state = PlanState()
    outcomes: dict[str, int] = {}
    refusals: dict[str, int] = {}
    delays: list[float] = []
    log: list[dict[str, Any]] = []
    cycles = 0
    look = "full"
    while col.clock.now() < t_end:
        true_before = col.misalignment()
        true_m = col.truth()["misalignment"]
        result = run_cycle(col.parts, look=look)
        cycles += 1
        log.append({"t": result.started, "outcome": result.outcome, "reason": result.reason,
                    "true_before": round(true_before, 2), "true_after": round(col.misalignment(), 2),
                    "estimate_before": None if result.before is None else result.before.misalignment,
                    "check_error": _check_error(result.check, true_m)})
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        if result.outcome.startswith("refused") or result.outcome == "hold":
            refusals[result.reason] = refusals.get(result.reason, 0) + 1
        plan = plan_next(state, observe(result), settings.schedule, can_check=can_check(col.parts))
        state, look = plan.state, plan.look
        delays.append(plan.delay_s)
        log[-1]["delay_s"] = round(plan.delay_s, 1)
        wait = plan.delay_s + float(jitter.uniform(0.0, settings.schedule.jitter_s))
        advance_until(col, min(col.clock.now() + wait, t_end))
    entries = list(col.parts.journal.entries())
    wobbles, checks, wobble_s = wobble_seconds(entries)
    start = col.parts.session_start or col.start_position
    violations = envelope_violations(entries, settings, start)
    return {"cycles": cycles, "wobbles": wobbles, "checks": checks, "disturbed_s": wobble_s,
            "outcomes": outcomes,
            "corrections": outcomes.get("corrected", 0), "rollbacks": outcomes.get("rolled_back", 0),
            "refusals": refusals, "violations": violations, "median_delay_s": float(np.median(delays)),
            "cycle_log": log}
