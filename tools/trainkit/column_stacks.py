"""A column's labelled stacks, out of the daemon's stack store, for `temalign learn` (tools/learn.py).

Which label: a person's reference where a stack has one, else the daemon's verified one
(docs/learning.md, "Labels": the person's says where aligned is; the verified one carries whatever
bias the estimators share at alignment). Which stacks are held out: the newest, so that the
evidence is measured on stacks taken after every stack it learnt from, as the shadow will be.

Each stack is read back into the WobbleStack the daemon measured and, for the evidence, measured
again through the daemon's own path (estimate.combined.CombinedEstimator with the calibration stored
beside the stack): the parent with the model matrix the daemon had for it, a candidate with the
classical M, which is what it runs with once in shadow or promoted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from temalign.config.schema import EstimatorSettings, QualitySettings
from temalign.estimate.calibration import Calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelEstimator
from temalign.estimate.preprocess import resolve
from temalign.frames import WobbleStack
from temalign.record.stack_labels import preferred
from temalign.record.stacks import StoredStack, list_stacks, read_stack
from trainkit.column_learning import ColumnSet, to_delta_matrix

LABEL_KINDS = ("reference", "verified")


@dataclass(frozen=True)
class Labelled:
    """One stored stack with the label it teaches (`kind`: reference or verified)."""

    stored: StoredStack
    label: tuple[float, float]
    kind: str

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_json(self.stored.meta["calibration"])

    def wobble_stack(self) -> WobbleStack:
        """The stack as the daemon measured it."""
        meta = self.stored.meta
        return WobbleStack(images=self.stored.frames.astype(np.float32),
                           c1_values=tuple(float(c) for c in self.stored.c1_values),
                           times=tuple(float(t) for t in self.stored.times),
                           c1_before=float(meta["c1_before"]), wobble_fraction=float(meta["wobble_fraction"]),
                           source=str(meta.get("source", "stored")), kind=meta.get("frame_kind", "raw"))


def labelled_stacks(directory: str | Path, say: Callable[[str], None] = print) -> list[Labelled]:
    """Every stack of the store with a label and a calibration, oldest first; ValueError when the
    directory holds no store."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such directory (the stack store is store.dir, by default "
                         "paths.state_dir/stacks)")
    paths = list_stacks(directory)
    found: list[Labelled] = []
    unlabelled = 0
    for path in paths:
        stored = read_stack(path)
        said = preferred(stored.labels)
        if said is None or stored.meta.get("calibration") is None:
            unlabelled += 1
            continue
        found.append(Labelled(stored, said[1], said[0]))
    kinds = {k: sum(1 for s in found if s.kind == k) for k in LABEL_KINDS}
    say(f"{directory}: {len(paths)} stacks, {len(found)} labelled ({kinds['reference']} by a person's "
        f"reference, {kinds['verified']} by a verified correction), {unlabelled} without a label")
    return found


def split(stacks: Sequence[Labelled], held_out_fraction: float) -> tuple[list[Labelled], list[Labelled]]:
    """(to learn from, held out): the newest `held_out_fraction` held out, at least one of each."""
    if len(stacks) < 2:
        raise ValueError(f"{len(stacks)} labelled stack(s): learning needs at least two (one to hold out)")
    held = min(len(stacks) - 1, max(1, round(len(stacks) * held_out_fraction)))
    return list(stacks[:-held]), list(stacks[-held:])


def column_set(stacks: Sequence[Labelled], preprocess: str) -> ColumnSet:
    """The stacks as the network and the walk fit take them, with the classical M (what a candidate
    runs with)."""
    fn = resolve(preprocess)
    x = np.concatenate([fn(s.stored.frames) for s in stacks]).astype(np.float32)
    rho = np.stack([np.asarray(s.stored.c1_values, dtype=np.float64) / float(s.stored.meta["c1_before"]) - 1.0
                    for s in stacks])
    to_delta = np.stack([to_delta_matrix(s.calibration.matrix, float(s.stored.meta["c1_before"]),
                                         s.calibration.c1) for s in stacks])
    label = np.asarray([s.label for s in stacks], dtype=np.float64)
    return ColumnSet(x, rho, to_delta, label)


def daemon_deltas(model: Path, stacks: Sequence[Labelled], estimator: EstimatorSettings | None = None,
                  quality: QualitySettings | None = None) -> np.ndarray:
    """Each stack's model delta (N, 2; NaN where the model gave none) through the daemon's path."""
    reader = ModelEstimator(model)
    out = np.full((len(stacks), 2), np.nan)
    for i, s in enumerate(stacks):
        combined = CombinedEstimator(reader, s.calibration, estimator or EstimatorSettings(),
                                     quality or QualitySettings())
        said = combined.measure(s.wobble_stack()).model_delta
        if said is not None:
            out[i] = said
    return out
