"""A stack store filled on a traced twin column, each stack labelled with the twin's truth: what a
person's exact reference would say of it. For the learning tests and the cost of `temalign learn`
on a store of a given size (tools/bench_learning.py --cost-stacks), where waiting for a daemon to
label that many stacks would measure the wait, not the learning."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from benchkit.harness import sim_column
from temalign.record.stack_labels import stack_meta
from temalign.record.stacks import StackStore
from temalign.wobble.stack import wobble
from temalign_twin.cli import optics_overrides
from temalign_twin.settings import NO_DRIFT, deep_merge


def labelled_store(directory: Path, column: str, scene: str, stacks: int, *, seed: int = 3,
                   radius: float = 60.0) -> Path:
    """`stacks` wobbles taken as the daemon takes them (misalignments uniform within `radius`
    units) on `column` with `scene`, in a real stack store at `directory`, each with a reference
    label of the twin's truth; returns `directory`."""
    twin = deep_merge(optics_overrides("traced", column, scene), NO_DRIFT)
    store = StackStore(directory, max_bytes=1 << 40, min_free_bytes=0)
    with sim_column(seed, twin_overrides=twin) as col:
        s, rng = col.settings, np.random.default_rng(seed)
        for _ in range(stacks):
            r, phi = radius * math.sqrt(float(rng.uniform())), float(rng.uniform(0.0, 2.0 * math.pi))
            where = col.offset(r * math.cos(phi), r * math.sin(phi))
            truth = -np.asarray(col.truth()["misalignment"], dtype=float)
            stack = wobble(col.microscope, col.parts.source, fraction=s.wobble.fraction,
                           settle_s=s.wobble.settle_s, clock=col.clock, memory=col.parts.memory,
                           restore_attempts=s.wobble.restore_attempts,
                           saturation_abort_fraction=s.quality.saturation_abort_fraction)
            measured = col.parts.estimator.measure(stack)
            meta = stack_meta(stack, measured, wobble="before", cycle_started=col.clock.now(), position=where,
                              wall=time.time(), estimator=col.parts.estimator)
            sid = store.put(stack, meta)
            if sid is None:
                raise OSError(f"the stack store at {directory} stopped: {store.status().get('stopped')}")
            store.label(sid, "within_deadband", {"reference": {
                "delta": [float(truth[0]), float(truth[1])], "set_by": "the twin's truth"}})
    return directory
