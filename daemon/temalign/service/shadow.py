"""A candidate model in shadow: read beside the live model on every full wobble, scored when a
verified outcome says what was right (issue 14; docs/learning.md, "Shadow, promote, rollback").

The candidate reads each stack through the very path the live model does
(estimate.combined.CombinedEstimator.read: a spot model's walk through the column's calibration,
with the classical M since the calibration's model matrix belongs to the live model's file; a
delta model's output re-mapped). What it says is journaled ("shadow", with both models' deltas and
fingerprints) and, on a verified outcome, scored against the label beside the live model's own
delta on the same stack ("shadow.verified"). It never reaches a decision or a move, and nothing it
does can fail a cycle: a candidate that raises, or a record the disk refuses, is journaled and
counted, and the cycle goes on."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from temalign.decide.promotion import Evidence, Vector
from temalign.estimate.combined import CombinedEstimator, Measurement
from temalign.estimate.model_estimator import ModelEstimator
from temalign.frames import WobbleStack
from temalign.record.journal import Journal
from temalign.record.metrics import Metrics
from temalign.record.model_store import StoredModel
from temalign.values import JsonObject, rounded, rounded_pair

log = structlog.get_logger("temalign")


@dataclass(frozen=True)
class ShadowReading:
    """What the candidate said of one stack: its delta (None: it could not say, `error` why)."""

    delta: Vector | None
    error: str | None = None


class Shadow:
    """The candidate beside the live model; `save` keeps its evidence (service.lifecycle)."""

    def __init__(self, candidate: ModelEstimator, stored: StoredModel, evidence: Evidence, *,
                 journal: Journal, metrics: Metrics, save: Callable[[Evidence], None]) -> None:
        self.candidate = candidate
        self.stored = stored
        self.evidence = evidence
        self.journal = journal
        self.metrics = metrics
        self.save = save
        self.failures = 0
        """Stacks the candidate could not read or whose record failed, since it was opened."""
        self.last_failure: str | None = None
        metrics.set_shadow(evidence)

    def read(self, estimator: CombinedEstimator, stack: WobbleStack, live: Measurement, label: str
             ) -> ShadowReading:
        """The candidate on the stack the live model just read (`live`); never raises. A stack the
        quality gate found doubtful is read by neither model."""
        if not live.quality.ok:
            reading = ShadowReading(None, "doubtful stack: read by neither model")
        else:
            try:
                said = estimator.read(stack, self.candidate)
                reading = ShadowReading(said.delta, said.error)
            except Exception as error:  # a candidate must never fail the cycle
                reading = ShadowReading(None, f"{type(error).__name__}: {error}")
                self._failed(f"the candidate failed on the {label} stack: {reading.error}")
        self._journal("shadow", label=label,
                      live={"fingerprint": estimator.model.fingerprint,
                            "delta": rounded_pair(live.model_delta),
                            "error": None if live.model_delta is not None else live.reason},
                      candidate={"fingerprint": self.stored.fingerprint,
                                 "delta": rounded_pair(reading.delta), "error": reading.error})
        return reading

    def verified(self, decided: Measurement, reading: ShadowReading | None, label: Vector,
                 by: str = "verified") -> None:
        """A verified outcome on the stack `decided` (the live model's Measurement, `reading` the
        candidate's), `by` a verified correction or a person's reference: both scored, the evidence
        kept; never raises."""
        candidate = None if reading is None else reading.delta
        self.evidence = self.evidence.scored(decided.model_delta, candidate, label)
        self.metrics.set_shadow(self.evidence)
        self._journal("shadow.verified", label=rounded_pair(label), by=by,
                      live_error=_error(decided.model_delta, label), candidate_error=_error(candidate, label),
                      evidence=self.evidence.to_json())
        try:
            self.save(self.evidence)
        except Exception as error:  # kept in memory; the next verified outcome saves it again
            self._failed(f"the shadow's evidence could not be saved: {error}", record=True)

    def _journal(self, kind: str, **fields: object) -> None:
        try:
            self.journal.append(kind, **fields)
        except Exception as error:  # the journal keeps what the disk refused (record.journal)
            self._failed(f"the {kind} record failed: {error}")

    def _failed(self, why: str, *, record: bool = False) -> None:
        """Counted, logged and, with `record` (what failed was not the journal, and no record of
        the stack carries it), journaled."""
        self.failures += 1
        self.last_failure = why
        self.metrics.shadow_failed()
        log.warning("shadow", failure=why)
        if record:
            with contextlib.suppress(Exception):
                self.journal.append("shadow.failure", why=why)

    def to_json(self) -> JsonObject:
        """The candidate as `temalign model status` shows it."""
        return {**self.stored.to_json(), "evidence": self.evidence.to_json(), "failures": self.failures,
                "last_failure": self.last_failure}


def _error(delta: Vector | None, label: Vector) -> float | None:
    """|delta - label| (motor units), None when the model could not say."""
    if delta is None:
        return None
    return rounded(math.hypot(delta[0] - label[0], delta[1] - label[1]))
