"""What one cycle did, as plain data (`CycleResult`), and its one JSON form: what the journal,
`temalign once --json`, `status --json`, the log line and the metrics are made of.

Outcome codes and reason codes share one convention: lower case words joined by "_"
(snake_case), the outcomes being the values of the `outcome` label of `temalign_cycles_total`.
Journals written before that convention (reasons in kebab-case, `refused-window`) are read
back in it: record.journal normalises them as it reads."""

from __future__ import annotations

import math
from dataclasses import dataclass

from temalign.decide.envelope import Decision
from temalign.estimate.classical import ClassicalEstimate
from temalign.estimate.combined import Measurement
from temalign.values import JsonObject, rounded, rounded_pair

Pair = tuple[int, int]

OUTCOMES = (
    "corrected",
    "within_deadband",
    "checked",
    "refused_low_confidence",
    "refused_doubtful_stack",
    "refused_limit",
    "rolled_back",
    "hold",
    "dry_run",
    "skipped",
    "error",
)
"""Every outcome a cycle can have; `temalign_cycles_total` carries each from the start, at 0."""
MICROSCOPE_UNREACHABLE = "microscope"
"""The reason of a cycle that could not read the column at its start."""


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did; `outcome` is one of OUTCOMES, `reason` the stable code of why."""

    outcome: str
    reason: str
    detail: str
    mode: str
    started: float
    duration_s: float
    position_before: Pair | None = None
    position_after: Pair | None = None
    c1: float | None = None
    before: Measurement | None = None
    after: Measurement | None = None
    decision: Decision | None = None
    applied: tuple[float, float] | None = None
    check: ClassicalEstimate | None = None
    stacks: tuple[str, ...] = ()
    """The ids of the wobbles the stack store kept during this cycle (record.stacks)."""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {', '.join(OUTCOMES)}")

    @property
    def estimate(self) -> tuple[float, float] | None:
        """The estimate this cycle acted on: the full wobble's, or the two-frame check's when the
        cycle stopped there."""
        if self.outcome == "checked" and self.check is not None:
            return self.check.delta
        return self.before.delta if self.before is not None else None

    def to_json(self) -> JsonObject:
        """Plain JSON (journal, `once --json`, `status --json`, the log line)."""
        return {"outcome": self.outcome, "reason": self.reason, "detail": self.detail, "mode": self.mode,
                "started": self.started, "duration_s": round(self.duration_s, 4),
                "position_before": self.position_before, "position_after": self.position_after,
                "c1": self.c1, "before": measurement_json(self.before), "after": measurement_json(self.after),
                "decision": decision_json(self.decision), "applied": self.applied,
                "check": check_json(self.check), "stacks": list(self.stacks)}


def check_json(c: ClassicalEstimate | None) -> JsonObject | None:
    """The two-frame check as plain JSON."""
    if c is None:
        return None
    size = None if c.delta is None else rounded(math.hypot(*c.delta))
    return {"delta": rounded_pair(c.delta), "misalignment": size, "frames": c.frames_used, "reason": c.reason}


def measurement_json(m: Measurement | None) -> JsonObject | None:
    """A measurement as plain JSON: each estimator's delta, the one used, the trust and why."""
    if m is None:
        return None
    classical = m.classical
    return {"model": rounded_pair(m.model_delta),
            "classical": rounded_pair(classical.delta) if classical else None,
            "classical_residual_px": None if classical is None else rounded(classical.residual_px),
            "delta": rounded_pair(m.delta), "misalignment": rounded(m.misalignment),
            "confidence": round(m.confidence, 3),
            "trusted": m.trusted, "reason": m.reason, "detail": m.detail,
            "quality": {"ok": m.quality.ok, "reasons": list(m.quality.reasons)},
            "preprocess_ms": round(m.preprocess_ms, 3), "inference_ms": round(m.inference_ms, 3),
            "classical_ms": round(m.classical_ms, 3),
            "model_frames": None if m.model_walk is None else [int(u) for u in m.model_walk.used]}


def decision_json(d: Decision | None) -> JsonObject | None:
    """The envelope's decision as plain JSON."""
    if d is None:
        return None
    return {"action": d.action, "reason": d.reason, "detail": d.detail, "target": d.target,
            "step": rounded_pair(d.step), "requested": rounded_pair(d.requested),
            "limits_hit": list(d.limits_hit)}
