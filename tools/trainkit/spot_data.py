"""The spot network's training and test sets: traced-twin stacks (trainkit.traced_sets) rendered
in parallel, preprocessed the daemon's way and kept as arrays, with per-frame labels.

Arrays of one set (an .npz, reproducible from its seed and ranges):
* `x`: (N, side, side, 7) float16, the network's input (preprocess `spots_<side>`);
* `centres` (N, 7, 2) and `radii` (N, 7): each frame's true spot, FOV;
* `visible` (N, 7): the frame's true centre lies on the detector (else no network can say where
  it is, and the frame only teaches the confidence to be low);
* `truth` (N, 2): delta = a* - a, motor units; `c1` (N, 7): the wobble's lens values;
* `column`, `scene` (N,) names; `wobble`, `c0_over_cf`, `dose`, `camera`, `display`, `ellipticity`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from temalign.estimate.preprocess import resolve
from trainkit.traced_sets import Condition, Sample, stack_seed, take_stack

EDGE = 0.5
"""The detector spans -0.5 to 0.5 FOV on each axis (twin.md)."""
PREPROCESS = "temalign.estimate.preprocess:spots_128"


def visible(centres: np.ndarray) -> np.ndarray:
    """Whether each true centre lies on the detector."""
    return np.all(np.abs(centres) < EDGE, axis=-1)


def _render(job: tuple[Condition, int, str]) -> dict[str, Any]:
    condition, stack_seed, preprocess = job
    sample: Sample = take_stack(condition, seed=stack_seed, side=256)
    x = resolve(preprocess)(sample.stack)[0].astype(np.float16)
    return {"x": x, "centres": sample.centres, "radii": sample.radii, "truth": np.asarray(sample.truth),
            "c1": sample.c1_values}


def build(conds: Sequence[Condition], seed: int, *, preprocess: str = PREPROCESS, workers: int | None = None,
          progress: Callable[[int, int, float], None] | None = None) -> dict[str, np.ndarray]:
    """Render and preprocess every condition (stack i of seed s is the same on every run)."""
    jobs = [(c, stack_seed(seed, i), preprocess) for i, c in enumerate(conds)]
    workers = workers or os.cpu_count() or 1
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    if workers == 1:
        for job in jobs:
            rows.append(_render(job))
            if progress:
                progress(len(rows), len(jobs), time.monotonic() - start)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for row in pool.imap(_render, jobs, chunksize=4):
                rows.append(row)
                if progress:
                    progress(len(rows), len(jobs), time.monotonic() - start)
    centres = np.stack([r["centres"] for r in rows]).astype(np.float32)
    return {
        "x": np.stack([r["x"] for r in rows]), "centres": centres,
        "radii": np.stack([r["radii"] for r in rows]).astype(np.float32), "visible": visible(centres),
        "truth": np.stack([r["truth"] for r in rows]).astype(np.float32),
        "c1": np.stack([r["c1"] for r in rows]),
        "column": np.array([c.column for c in conds]), "scene": np.array([c.scene for c in conds]),
        "wobble": np.array([c.wobble for c in conds]), "c0_over_cf": np.array([c.c0_over_cf for c in conds]),
        "dose": np.array([c.dose for c in conds]), "camera": np.array([c.camera for c in conds]),
        "display": np.array([c.display for c in conds]),
        "ellipticity": np.array([c.ellipticity for c in conds]),
        "preprocess": np.array(preprocess),
    }


def save(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_or_build(name: str, conds: Sequence[Condition], seed: int, workers: int | None, cache: Path | None,
                  say: Callable[[str], None]) -> dict[str, np.ndarray]:
    """A set from its cache, else rendered (and cached) with a progress line every 5 %."""
    if cache is not None and cache.exists():
        arrays = load(cache)
        if len(arrays["x"]) == len(conds) and list(arrays["column"]) == [c.column for c in conds]:
            say(f"{name}: {len(conds)} stacks from {cache}")
            return arrays
        say(f"{name}: {cache} holds another set; rendering again")
    step = max(1, len(conds) // 20)

    def progress(done: int, total: int, elapsed: float) -> None:
        if done % step == 0 or done == total:
            say(f"{name}: rendered {done}/{total} stacks, {elapsed:.0f} s, about "
                f"{elapsed / done * (total - done):.0f} s left")

    arrays = build(conds, seed, workers=workers, progress=progress)
    if cache is not None:
        save(cache, arrays)
    return arrays
