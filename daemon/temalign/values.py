"""What counts as a number, and what any value looks like as JSON: one rule each, for the whole
service (the envelope, the state file, the journal, the logs, the replies of the control socket).

`finite` is the one finiteness test: a real number (int, float or a numpy scalar; never a bool,
a string or None) that is neither NaN nor infinite. `finite_float` is the same test for one value,
giving the number as a float (None when it fails), for code that goes on to use it.

`jsonable` is the one JSON converter. numpy scalars and arrays, tuples, sets, paths, enums,
datetimes and dataclasses become plain JSON; a float that is not finite becomes the string
"NaN", "Infinity" or "-Infinity", not null, because "the estimate was NaN" and "a pause until
resumed (inf)" must stay distinguishable from "no value", and every line stays strict JSON.
Anything else is a TypeError naming where it was found, unless a `default` says how to write it
(the logs write such a value as its str())."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import numbers
import sys
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from pathlib import PurePath
from typing import Any

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject = dict[str, Any]
"""A JSON object as read from or written to a boundary (a journal entry, a control request or
reply, a protocol message, a model card): its values are whatever JSON holds, checked where used."""
NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def finite_float(value: object) -> float | None:
    """`value` as a float when it is a real, finite number; None when it is not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def finite(*values: object) -> bool:
    """True when every value is a real, finite number (and there is at least one)."""
    return bool(values) and all(finite_float(value) is not None for value in values)


def jsonable(value: object, where: str = "value", *,
             default: Callable[[object], JsonValue] | None = None) -> JsonValue:
    """`value` as strict JSON data (see the module's docstring)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else NONFINITE.get(value, "NaN")
    if isinstance(value, Mapping):
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                if default is None:
                    raise TypeError(f"{where}: key {key!r} is not a string")
                key = str(key)
            out[str(key)] = jsonable(item, f"{where}.{key}", default=default)
        return out
    if isinstance(value, list | tuple):
        return [jsonable(item, f"{where}[{i}]", default=default) for i, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [jsonable(item, f"{where}[]", default=default) for item in value]
        with contextlib.suppress(TypeError):
            items.sort()
        return items
    if isinstance(value, enum.Enum):
        return jsonable(value.value, where, default=default)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            return jsonable(value.tolist(), where, default=default)
        if isinstance(value, numpy.generic):
            return jsonable(value.item(), where, default=default)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), where, default=default)
    if isinstance(value, numbers.Real):
        return jsonable(float(value), where, default=default)
    if default is not None:
        return default(value)
    raise TypeError(f"{where}: a {type(value).__name__} has no JSON form")


def rounded(value: float | None, digits: int = 3) -> float | None:
    """A figure for people and the journal: rounded, None stays None, NaN and inf stay as they are
    (jsonable writes them as strings)."""
    if value is None:
        return None
    return round(float(value), digits) if math.isfinite(value) else float(value)


def rounded_pair(pair: tuple[float, float] | None, digits: int = 3) -> list[float | None] | None:
    """An (x, y) figure rounded, as a list for JSON; None stays None."""
    return None if pair is None else [rounded(v, digits) for v in pair]
