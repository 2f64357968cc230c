"""The one interface the rest of temalign uses to reach a microscope.

The daemon and the tools speak to a `Microscope`; the protocol client (protocol/client.py) is the
implementation over TCP, and a vendor bridge serves the same protocol in front of the column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

HARDWARE_RANGE = (-8388608, 8388607)


@dataclass(frozen=True)
class Limits:
    """What the server says it accepts (its `hello` reply); commands outside are refused there."""

    aperture_x: tuple[int, int]
    aperture_y: tuple[int, int]
    c1: tuple[float, float]


@dataclass(frozen=True)
class Position:
    """Condenser aperture position in motor units."""

    x: int
    y: int

    def as_array(self) -> np.ndarray:
        return np.array([self.x, self.y], dtype=float)


class Microscope(Protocol):
    """Condenser aperture, C1 lens and camera of one column. Every method may raise
    `temalign.protocol.errors.ProtocolError`; none returns an unchecked value."""

    @property
    def limits(self) -> Limits: ...

    def aperture(self) -> Position: ...

    def move_aperture(self, target: Position) -> Position:
        """Absolute move; returns where the motor ended up once the motion finished."""
        ...

    def c1(self) -> float: ...

    def set_c1(self, value: float) -> float: ...

    def acquire(self, exposure_s: float | None = None) -> np.ndarray:
        """One camera frame, 2-D uint16, row-major, as the detector counted it."""
        ...

    def close(self) -> None: ...
