"""What the stack store writes about each stack: its meta (with the frames) and, once the cycle has
ended, its outcome and labels (the sidecar). Pure functions over plain data; the cycle calls them
and record.stacks keeps what they return (docs/learning.md, "The stack store").

Two labels, kept side by side (a learner prefers the person's):

- `verified`: after a kept correction whose verification was trusted, the stack acted on is
  labelled with the move applied plus what the verification still saw (record.label.
  verified_label, the one definition).
- `reference`: a person's `temalign reference set` says the aperture is aligned where it is at that
  moment; a stack taken within `store.reference_label_s` after it (clock time), with no hand on the
  column since (a `hands.aperture` or `hands.c1` journal entry), is labelled reference - position.
  A reference the daemon set itself (the first verified correction) labels nothing: it would only
  repeat the daemon's own estimate as if it were a person's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from temalign.estimate.combined import CombinedEstimator, Measurement
from temalign.frames import WobbleStack
from temalign.record.label import verified_label
from temalign.record.result import measurement_json
from temalign.record.state import FIRST_CORRECTION
from temalign.timetext import iso_time
from temalign.values import JsonObject, finite, finite_float

Pair = tuple[int, int]
Vector = tuple[float, float]

HANDS_KINDS = frozenset({"hands.aperture", "hands.c1"})
"""Journal entries that say a person touched the column: no reference labels after one."""
REFERENCE_SCAN_ENTRIES = 2000
"""How far back in the journal the cycle looks for a person's reference (a 900 s window holds a few
hundred entries; a reference further back labels nothing, which errs on the safe side)."""


@dataclass(frozen=True)
class TakenStack:
    """A full wobble of this cycle: its id in the stack store (None: not stored), which wobble it
    was, where the aperture was and the clock time of its first frame, and its measurement."""

    id: str | None
    wobble: str
    position: Pair | None
    taken: float
    measurement: Measurement


def stack_meta(stack: WobbleStack, m: Measurement, *, wobble: str, cycle_started: float,
               position: Pair | None, wall: float, estimator: CombinedEstimator) -> JsonObject:
    """Everything stored with the frames: which wobble of which cycle (`cycle_started` is the
    journal cycle record's `started`), where, the lens and source, the model and calibration in
    use, and what each estimator said (a spot model's per-frame spots too)."""
    model = estimator.model
    walk = m.model_walk
    return {
        "wall_time": iso_time(wall), "clock_time": float(stack.times[0]) if stack.times else None,
        "wobble": wobble, "cycle_started": cycle_started,
        "position": None if position is None else list(position),
        "c1_before": stack.c1_before, "wobble_fraction": stack.wobble_fraction,
        "source": stack.source, "frame_kind": stack.kind,
        "model": {"file": model.path.name, "fingerprint": model.fingerprint,
                  "reads_spots": model.reads_spots},
        "calibration": None if estimator.calibration is None else estimator.calibration.to_json(),
        "estimate": measurement_json(m),
        "spots": None if walk is None or not walk.centres else {
            "centres": [list(c) for c in walk.centres], "confidence": list(walk.confidence),
            "used": list(walk.used)},
    }


def verified(outcome: str, applied: Sequence[float] | None, after: Measurement | None) -> JsonObject | None:
    """The verified label of a kept correction with a trusted verification; None otherwise."""
    if outcome != "corrected" or applied is None or after is None or not after.trusted or after.delta is None:
        return None
    a = (float(applied[0]), float(applied[1]))
    residual = (float(after.delta[0]), float(after.delta[1]))
    return {"delta": list(verified_label(a, residual)), "applied": list(a), "residual": list(residual)}


def reference_label(entries: Sequence[Mapping[str, object]], *, taken: float, position: Pair | None,
                    window_s: float) -> JsonObject | None:
    """The reference label of a stack taken at clock time `taken` at `position`, from the journal
    `entries` (oldest first): the newest reference before it, set by a person at most `window_s`
    earlier with no hand on the column in between; None otherwise."""
    if position is None:
        return None
    for entry in reversed(entries):
        t = finite_float(entry.get("t"))
        if t is None or t > taken:
            continue
        kind = entry.get("kind")
        if kind in HANDS_KINDS:
            return None
        if kind != "reference":
            continue
        where, by = entry.get("position"), entry.get("set_by")
        age = taken - t
        if by == FIRST_CORRECTION or age > window_s or not isinstance(where, list | tuple) \
                or len(where) != 2 or not finite(*where):
            return None
        ref = (float(where[0]), float(where[1]))
        return {"delta": [ref[0] - position[0], ref[1] - position[1]], "reference": list(ref),
                "position": list(position), "set_by": by, "age_s": round(age, 3)}
    return None


def cycle_labels(taken: Iterable[TakenStack], *, outcome: str, before: Measurement | None,
                 applied: Sequence[float] | None, after: Measurement | None,
                 journal: Sequence[Mapping[str, object]], window_s: float) -> list[JsonObject]:
    """Each stack's labels, in order: `verified` on the stack the correction acted on (the one whose
    measurement is `before`), `reference` on every stack in a person's reference window."""
    label = verified(outcome, applied, after)
    out: list[JsonObject] = []
    for k in taken:
        labels: JsonObject = {}
        if label is not None and k.measurement is before:
            labels["verified"] = label
        ref = reference_label(journal, taken=k.taken, position=k.position, window_s=window_s)
        if ref is not None:
            labels["reference"] = ref
        out.append(labels)
    return out


def preferred(labels: Mapping[str, object]) -> tuple[str, Vector] | None:
    """The label a learner or the shadow goes by: a person's reference before a verified one (the
    person's is independent of both estimators); its kind and delta, or None without one."""
    for kind in ("reference", "verified"):
        said = labels.get(kind)
        if isinstance(said, Mapping):
            delta = said.get("delta")
            if isinstance(delta, list | tuple) and len(delta) == 2 and finite(*delta):
                return kind, (float(delta[0]), float(delta[1]))
    return None
