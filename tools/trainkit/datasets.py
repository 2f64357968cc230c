"""One self-describing .npz per dataset: the stacks as acquired, the labels, and where they came from.

Keys (docs/datasets.md): `stacks` (N, 7, H, W) uint16 raw counts or uint8 display levels,
`labels` (N, 2) float32 = a_start - a (motor units, the paper's way: what a column can know),
`truth` (N, 2) float32 = a* - a from the twin (NaN on a column), `positions` (N, 2) int64 (the
aperture read back), `offsets` (N, 2) int64 (the spiral offset commanded), `spiral_index` (N,)
int64, `c1_values` (N, 7) float64, `times` (N,) float64 (clock time of the first frame),
`source_index` (N,) int64 (which of the merged datasets a sample came from; 0 when not merged)
and `meta`, a JSON string: one dataset's metadata, or for a merge {"merged": true, "sources":
[metadata of each part]}."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from temalign.durable import atomic_write

ARRAYS = ("stacks", "labels", "truth", "positions", "offsets", "spiral_index", "c1_values", "times",
          "source_index")
_DTYPES = {"labels": np.float32, "truth": np.float32, "positions": np.int64, "offsets": np.int64,
           "spiral_index": np.int64, "c1_values": np.float64, "times": np.float64,
           "source_index": np.int64}
_SHAPES = {"labels": (2,), "truth": (2,), "positions": (2,), "offsets": (2,), "spiral_index": (),
           "c1_values": (7,), "times": (), "source_index": ()}


class DatasetError(ValueError):
    """A dataset file that cannot be read or datasets that cannot be merged, said plainly."""


@dataclass
class Dataset:
    """A dataset in memory; every array has the same first dimension N."""

    stacks: np.ndarray
    labels: np.ndarray
    truth: np.ndarray
    positions: np.ndarray
    offsets: np.ndarray
    spiral_index: np.ndarray
    c1_values: np.ndarray
    times: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    source_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.stacks)
        if self.source_index is None:
            self.source_index = np.zeros(n, dtype=np.int64)
        if self.stacks.ndim != 4 or self.stacks.shape[1] != 7:
            raise DatasetError(f"stacks must be (N, 7, H, W), got {self.stacks.shape}")
        if self.stacks.dtype not in (np.uint16, np.uint8):
            raise DatasetError(f"stacks must be uint16 (raw) or uint8 (display), got {self.stacks.dtype}")
        for name, tail in _SHAPES.items():
            value = np.asarray(getattr(self, name), dtype=_DTYPES[name])
            if value.shape != (n, *tail):
                raise DatasetError(f"{name} must have shape {(n, *tail)}, got {value.shape}")
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.stacks)

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The metadata of each part (one entry unless merged); `source_index` points into it."""
        return list(self.meta["sources"]) if self.meta.get("merged") else [self.meta]

    @property
    def frames(self) -> str:
        return self.sources[0].get("frames", "raw" if self.stacks.dtype == np.uint16 else "display")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Dataset:
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in (*ARRAYS, "meta") if k not in data.files]
                if missing:
                    raise DatasetError(f"{path}: not a temalign dataset (missing {', '.join(missing)})")
                arrays = {k: data[k] for k in ARRAYS}
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError) as error:
            if isinstance(error, DatasetError):
                raise
            raise DatasetError(f"cannot read dataset {path}: {error}") from None
        return cls(meta=meta, **arrays)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temalign.durable): a kill leaves the old file or the new one."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in ARRAYS}
        meta = np.str_(json.dumps(self.meta, sort_keys=True))
        atomic_write(target, lambda handle: np.savez_compressed(handle, meta=meta, **arrays))

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The samples at `indices`, in that order, with the same metadata."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(meta=self.meta, **{k: getattr(self, k)[idx] for k in ARRAYS})


def merge(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset of all samples (the paper's 10/13, 10/13/14, 10/13/14/6). Frames must have the
    same size and kind; wobble fractions may differ (each sample keeps its C1 values and its
    `source_index` into `meta["sources"]`)."""
    if not datasets:
        raise DatasetError("nothing to merge")
    first = datasets[0]
    for k, d in enumerate(datasets[1:], start=1):
        if d.stacks.shape[1:] != first.stacks.shape[1:]:
            raise DatasetError(f"cannot merge: part {k} has frames of "
                               f"{d.stacks.shape[3]}x{d.stacks.shape[2]} px, "
                               f"part 0 {first.stacks.shape[3]}x{first.stacks.shape[2]}")
        if d.stacks.dtype != first.stacks.dtype or d.frames != first.frames:
            raise DatasetError(f"cannot merge: part {k} holds {d.frames} frames ({d.stacks.dtype}), "
                               f"part 0 {first.frames} ({first.stacks.dtype})")
    sources: list[dict[str, Any]] = []
    index_parts = []
    for d in datasets:
        index_parts.append(d.source_index + len(sources))
        sources.extend(d.sources)
    arrays = {k: np.concatenate([getattr(d, k) for d in datasets]) for k in ARRAYS if k != "source_index"}
    meta = {"merged": True, "sources": sources, "frames": first.frames,
            "camera": list(first.stacks.shape[2:])}
    return Dataset(meta=meta, source_index=np.concatenate(index_parts), **arrays)


def split(dataset: Dataset, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test), disjoint, a seeded random `test_fraction` of the samples held out (the
    paper's 80/20); each part keeps the original order of its samples."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(dataset)
    n_test = round(n * test_fraction)
    if n_test < 1 or n_test >= n:
        raise DatasetError(f"cannot hold out {test_fraction:.0%} of {n} samples and keep both parts")
    order = np.random.default_rng(seed).permutation(n)
    test = np.sort(order[:n_test])
    train = np.sort(order[n_test:])
    return dataset.subset(train), dataset.subset(test)
