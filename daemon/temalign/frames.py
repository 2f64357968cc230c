"""Plain data that flows from the wobble to the estimators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FrameKind = Literal["raw", "display"]


@dataclass(frozen=True)
class Frame:
    """One image as a source delivered it, as float32 (counts for "raw", 0..255 for "display")."""

    data: np.ndarray
    time: float
    source: str
    kind: FrameKind = "raw"


@dataclass(frozen=True)
class WobbleStack:
    """The 7 frames of one wobble and what was done to get them.

    `images` is (7, H, W) float32; `c1_values[k]` is the C1 value commanded for frame k and
    `times[k]` the clock time at which frame k was grabbed."""

    images: np.ndarray
    c1_values: tuple[float, ...]
    times: tuple[float, ...]
    c1_before: float
    wobble_fraction: float
    source: str
    kind: FrameKind = "raw"
    meta: dict[str, object] = field(default_factory=dict)
