"""The params and results of protocol v1's methods, as validating models.

One definition serves both ends: a server checks a request's params against it (a failure is
-32602), and the client checks every result against it (a failure is a `MalformedReply`)."""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from temalign.microscope import HARDWARE_RANGE
from temalign.values import JsonObject, finite

if TYPE_CHECKING:
    import numpy.typing as npt

PROTOCOL_VERSION = 1
MAX_FRAME_SIDE = 16384

Number = Annotated[float, Field(strict=True)]  # a JSON number: int or float, never a bool or a string
MotorUnits = Annotated[int, Field(strict=True, ge=HARDWARE_RANGE[0], le=HARDWARE_RANGE[1])]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Reply(BaseModel):
    """Results may carry extra keys a server adds; the ones we use are checked strictly."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _finite(value: float) -> float:
    if not finite(value):
        raise ValueError("must be a finite number")
    return value


# ---- params -------------------------------------------------------------------------------------


class HelloParams(_Message):
    client: str = Field(min_length=1, max_length=200)
    token: str | None = Field(default=None, max_length=4096)


class ApertureName(_Message):
    name: Literal["condenser"]


class ApertureMoveParams(_Message):
    name: Literal["condenser"]
    x: MotorUnits
    y: MotorUnits


class LensName(_Message):
    name: Literal["C1"]


class LensSetParams(_Message):
    name: Literal["C1"]
    value: Number

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float) -> float:
        return _finite(value)


class AcquireParams(_Message):
    exposure_s: Annotated[float, Field(strict=True, gt=0, le=60)] | None = None


# ---- results ------------------------------------------------------------------------------------


def _ordered_range(pair: tuple[float, float]) -> tuple[float, float]:
    if not all(math.isfinite(v) for v in pair):
        raise ValueError("limits must be finite numbers")
    if pair[0] > pair[1]:
        raise ValueError(f"limits must be [low, high] with low <= high, got {list(pair)}")
    return pair


class ApertureLimitsModel(_Reply):
    x: tuple[MotorUnits, MotorUnits]
    y: tuple[MotorUnits, MotorUnits]

    @field_validator("x", "y")
    @classmethod
    def _check_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        _ordered_range(value)
        return value


class LensLimitsModel(_Reply):
    C1: tuple[Number, Number]

    @field_validator("C1")
    @classmethod
    def _check_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_range(value)


class LimitsModel(_Reply):
    aperture: ApertureLimitsModel
    lens: LensLimitsModel


class HelloResult(_Reply):
    protocol: Literal[1]
    server: str
    capabilities: list[str]
    limits: LimitsModel


class ApertureResult(_Reply):
    x: MotorUnits
    y: MotorUnits


class LensResult(_Reply):
    value: Number

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float) -> float:
        return _finite(value)


class FrameResult(_Reply):
    width: Annotated[int, Field(strict=True, ge=1, le=MAX_FRAME_SIDE)]
    height: Annotated[int, Field(strict=True, ge=1, le=MAX_FRAME_SIDE)]
    dtype: Literal["uint16"]
    data: str

    @model_validator(mode="after")
    def _check_size(self) -> FrameResult:
        expected = self.width * self.height * 2
        # base64 length is known without decoding: 4 characters per 3 bytes, padded.
        if len(self.data) != 4 * math.ceil(expected / 3):
            raise ValueError(f"data holds the wrong number of bytes for {self.width} x {self.height} uint16")
        return self

    def pixels(self) -> bytes:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"data is not base64: {error}") from error
        if len(raw) != self.width * self.height * 2:
            raise ValueError("data holds the wrong number of bytes")
        return raw


def encode_frame(frame: npt.ArrayLike) -> JsonObject:
    """A 2-D uint16 array as the `camera.acquire` result."""
    import numpy as np

    pixels = np.ascontiguousarray(frame, dtype="<u2")
    if pixels.ndim != 2:
        raise ValueError("a frame is 2-D")
    return {
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "dtype": "uint16",
        "data": base64.b64encode(pixels.tobytes()).decode("ascii"),
    }


PARAMS: dict[str, type[BaseModel]] = {
    "hello": HelloParams,
    "aperture.get": ApertureName,
    "aperture.move": ApertureMoveParams,
    "lens.get": LensName,
    "lens.set": LensSetParams,
    "camera.acquire": AcquireParams,
}

RESULTS: dict[str, type[BaseModel]] = {
    "hello": HelloResult,
    "aperture.get": ApertureResult,
    "aperture.move": ApertureResult,
    "lens.get": LensResult,
    "lens.set": LensResult,
    "camera.acquire": FrameResult,
}

M = TypeVar("M", bound=BaseModel)


def describe(error: ValidationError) -> str:
    """One line naming each bad field and why."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
