"""Whether a candidate model may replace the live one (issue 14: shadow, promote, rollback).

A candidate runs in shadow beside the live model on every stack; each cycle whose correction was
kept after a trusted verification teaches the delta that was right on the stack it was decided on
(record.label.verified_label). Both models' deltas on that stack are scored against it here. The
rule is pure (numbers in, a verdict with a stable reason code out), like every rule in decide/:
promotion is refused unless the shadow saw at least `min_verified` verified cycles, the candidate
read at least as many of their stacks as the live model, and its RMS error against the labels is
at most the live model's; and the evidence must compare the candidate with the model that is live
now (a swap since makes it stale)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from temalign.values import JsonObject, finite

Vector = tuple[float, float]

PROMOTE = "promote"
TOO_FEW_VERIFIED = "too_few_verified"
EVIDENCE_STALE = "evidence_stale"
CANDIDATE_MISSED_MORE = "candidate_missed_more"
CANDIDATE_WORSE = "candidate_worse"
NOTHING_COMPARED = "nothing_compared"


@dataclass(frozen=True)
class Score:
    """One model's agreement with the verified labels: the stacks it read (`scored`) and the sum
    of its squared errors there (motor units^2), and those it could not read (`missed`)."""

    scored: int = 0
    sum_sq: float = 0.0
    missed: int = 0

    @property
    def rms(self) -> float | None:
        """RMS error (motor units) over the stacks it read; None before it read one."""
        return math.sqrt(self.sum_sq / self.scored) if self.scored else None

    def add(self, delta: Vector | None, label: Vector) -> Score:
        """This score with one more verified stack: `delta` is what the model said of it (None, or
        not finite: it could not say, which counts as a miss)."""
        if delta is None or not finite(*delta):
            return replace(self, missed=self.missed + 1)
        error_sq = (delta[0] - label[0]) ** 2 + (delta[1] - label[1]) ** 2
        return replace(self, scored=self.scored + 1, sum_sq=self.sum_sq + error_sq)

    def to_json(self) -> JsonObject:
        rms = self.rms
        return {"scored": self.scored, "sum_sq": self.sum_sq, "missed": self.missed,
                "rms_units": None if rms is None else round(rms, 3)}

    @classmethod
    def from_json(cls, data: object) -> Score:
        if not isinstance(data, dict):
            raise ValueError(f"a score is an object, got {data!r}")
        scored, sum_sq, missed = data.get("scored"), data.get("sum_sq"), data.get("missed")
        if not (isinstance(scored, int) and isinstance(missed, int) and _count(scored) and _count(missed)
                and isinstance(sum_sq, int | float) and finite(sum_sq) and sum_sq >= 0):
            raise ValueError(f"a score has counts scored and missed and a sum_sq >= 0, got {data!r}")
        return cls(scored, float(sum_sq), missed)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Evidence:
    """What the shadow of one candidate beside one live model has shown so far."""

    live_fingerprint: str
    candidate_fingerprint: str
    started: str
    verified: int = 0
    live: Score = field(default_factory=Score)
    candidate: Score = field(default_factory=Score)

    def scored(self, live_delta: Vector | None, candidate_delta: Vector | None, label: Vector) -> Evidence:
        """The evidence with one more verified cycle: each model's delta on the decided stack."""
        return replace(self, verified=self.verified + 1, live=self.live.add(live_delta, label),
                       candidate=self.candidate.add(candidate_delta, label))

    def to_json(self) -> JsonObject:
        return {"live_fingerprint": self.live_fingerprint,
                "candidate_fingerprint": self.candidate_fingerprint, "started": self.started,
                "verified": self.verified, "live": self.live.to_json(),
                "candidate": self.candidate.to_json()}

    @classmethod
    def from_json(cls, data: object) -> Evidence:
        """The evidence `to_json` wrote; ValueError saying what is wrong with anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"evidence is an object, got {data!r}")
        texts = [data.get(k) for k in ("live_fingerprint", "candidate_fingerprint", "started")]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("evidence needs live_fingerprint, candidate_fingerprint and started as text")
        if not _count(data.get("verified")):
            raise ValueError(f"evidence verified must be a count, got {data.get('verified')!r}")
        live, candidate = Score.from_json(data.get("live")), Score.from_json(data.get("candidate"))
        verified = int(data["verified"])
        for name, score in (("live", live), ("candidate", candidate)):
            if score.scored + score.missed != verified:
                raise ValueError(f"evidence {name}: scored + missed must equal verified ({verified})")
        return cls(str(texts[0]), str(texts[1]), str(texts[2]), verified, live, candidate)


@dataclass(frozen=True)
class Verdict:
    """Whether to promote; `reason` is one of this module's codes, `detail` says which numbers."""

    promote: bool
    reason: str
    detail: str


def summary(evidence: Evidence) -> str:
    """The evidence in one line, for a person: the count and both RMS errors."""
    def rms(score: Score) -> str:
        value = score.rms
        text = "none read" if value is None else f"{value:.2f} units"
        return text + (f" ({score.missed} not read)" if score.missed else "")

    return (f"{evidence.verified} verified cycles; RMS error against them: candidate "
            f"{rms(evidence.candidate)}, live {rms(evidence.live)}")


def may_promote(evidence: Evidence | None, *, live_fingerprint: str, min_verified: int) -> Verdict:
    """The promotion rule (docs/learning.md, "Shadow, promote, rollback")."""
    if evidence is None:
        return Verdict(False, TOO_FEW_VERIFIED, "no candidate in shadow: `temalign model shadow PATH` first")
    said = summary(evidence)
    if evidence.live_fingerprint != live_fingerprint:
        return Verdict(False, EVIDENCE_STALE, f"the evidence compares the candidate with model "
                       f"{evidence.live_fingerprint}, but the live model is now {live_fingerprint}: "
                       "start the shadow again")
    if evidence.verified < min_verified:
        return Verdict(False, TOO_FEW_VERIFIED, f"{said}: {min_verified} are needed "
                       "(models.promote_min_verified)")
    if evidence.candidate.missed > evidence.live.missed:
        return Verdict(False, CANDIDATE_MISSED_MORE, f"{said}: the candidate could not read "
                       f"{evidence.candidate.missed} of the verified stacks, the live model "
                       f"{evidence.live.missed}")
    candidate, live = evidence.candidate.rms, evidence.live.rms
    if candidate is None:
        return Verdict(False, NOTHING_COMPARED, f"{said}: the candidate read none of them")
    if live is not None and candidate > live:
        return Verdict(False, CANDIDATE_WORSE, f"{said}: the candidate's error {candidate:.2f} is above the "
                       f"live model's {live:.2f}")
    return Verdict(True, PROMOTE, said)
