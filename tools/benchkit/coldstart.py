"""Cold starts on the simulated column: the aperture put far off, a fresh daemon, cycles until the
true |m| is within 20 units (each wait the scheduling policy's own), every commanded move checked
against the envelope. Used by tools/bench_coldstart.py and tests/test_bench_session.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchkit.harness import SHIPPED_MODEL, sim_column
from benchkit.session import BAND_UNITS, envelope_violations
from temalign.service.cycle import can_check, run_cycle
from temalign.service.schedule import PlanState, observe, plan_next

MAX_CYCLES = 8


def start_offset(seed: int, radius: float) -> tuple[float, float]:
    """A point uniform in the disc of `radius` (area-uniform), from the seed alone."""
    rng = np.random.default_rng([seed, 240])
    r = radius * math.sqrt(float(rng.uniform()))
    theta = float(rng.uniform(0.0, 2.0 * math.pi))
    return (r * math.cos(theta), r * math.sin(theta))


def cold_start(seed: int, radius: float, *, schedule: dict[str, Any] | None = None,
               safety: dict[str, Any] | None = None, max_cycles: int = MAX_CYCLES,
               twin_overrides: dict[str, Any] | None = None,
               model: Path = SHIPPED_MODEL) -> dict[str, Any]:
    """Cycles a fresh daemon needs to bring the column from a random start within `radius` to
    |m| <= 20 (None when `max_cycles` were not enough), with what each cycle did. With
    `twin_overrides` (another column or scene) the daemon first calibrates there, aligned."""
    overrides = {"schedule": {**(schedule or {}), "mode": "live"}, "safety": safety or {}}
    with sim_column(seed, overrides=overrides, twin_overrides=twin_overrides, model=model) as col:
        dx, dy = start_offset(seed, radius)
        col.offset(dx, dy)
        m0 = col.misalignment()
        state = PlanState()
        steps: list[dict[str, Any]] = []
        needed: int | None = 0 if m0 <= BAND_UNITS else None
        look = "full"
        while needed is None and len(steps) < max_cycles:
            result = run_cycle(col.parts, look=look)
            m = col.misalignment()
            steps.append({"outcome": result.outcome, "reason": result.reason, "true_after": round(m, 2)})
            if m <= BAND_UNITS:
                needed = len(steps)
                break
            plan = plan_next(state, observe(result), col.settings.schedule, can_check=can_check(col.parts))
            state, look = plan.state, plan.look
            col.clock.advance(plan.delay_s)
        entries = list(col.parts.journal.entries())
        violations = envelope_violations(entries, col.settings, col.parts.session_start or col.start_position)
    return {"seed": seed, "radius": radius, "start_units": round(m0, 2), "cycles": needed, "steps": steps,
            "violations": violations, "calibration": col.notes.get("calibration", "nominal")}
