"""The model card: JSON beside the .tflite (same name, .json), the contract between the tools and
the daemon (architecture.md). Pure python, no TensorFlow or numpy, so the runtime can validate a
card at start with this very code.

delta (motor units, x then y) = model output * output_scale + output_offset."""

from __future__ import annotations

import json
import re
from pathlib import Path

from temalign.values import JsonObject, finite

CARD_VERSION = 1
REQUIRED = ("preprocess", "output_scale", "input_shape", "wobble_fraction", "c0_over_cf", "frames",
            "training", "metrics")
"""Keys architecture.md requires; output_offset is optional (0 when absent)."""
FRAMES = ("raw", "display", "any")
"""What the model takes: camera counts, 8-bit screen frames, or either (measured on both)."""
_PREPROCESS = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def card_path(model_path: str | Path) -> Path:
    """The card's path for a model file: same name, .json."""
    return Path(model_path).with_suffix(".json")


def _pair(card: JsonObject, key: str, problems: list[str], *, nonzero: bool) -> None:
    v = card[key]
    if not (isinstance(v, list | tuple) and len(v) == 2 and all(finite(x) for x in v)):
        problems.append(f"{key}: expected two finite numbers (x, y), got {v!r}")
    elif nonzero and any(x == 0 for x in v):
        problems.append(f"{key}: a zero scale makes every prediction the offset, got {list(v)}")


def validate_card(card: object) -> list[str]:
    """Problems with a card (empty when it is usable): missing keys, wrong types, impossible values."""
    if not isinstance(card, dict):
        return [f"a card is a JSON object, got {type(card).__name__}"]
    problems = [f"missing key {k!r}" for k in REQUIRED if k not in card]
    if "preprocess" in card and not (isinstance(card["preprocess"], str)
                                      and _PREPROCESS.match(card["preprocess"])):
        problems.append(f"preprocess: expected 'module:function', got {card['preprocess']!r}")
    if "output_scale" in card:
        _pair(card, "output_scale", problems, nonzero=True)
    if "output_offset" in card:
        _pair(card, "output_offset", problems, nonzero=False)
    if "input_shape" in card:
        s = card["input_shape"]
        if not (isinstance(s, list | tuple) and len(s) == 3
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in s)):
            problems.append(f"input_shape: expected [height, width, channels] positive ints, got {s!r}")
        elif s[2] != 7:
            problems.append(f"input_shape: a wobble stack has 7 channels, got {s[2]}")
    if "wobble_fraction" in card:
        w = card["wobble_fraction"]
        if not (finite(w) and 0 < w < 0.5):
            problems.append(f"wobble_fraction: expected a fraction in (0, 0.5) such as 0.03, got {w!r}")
    if "c0_over_cf" in card:
        c = card["c0_over_cf"]
        if not (finite(c) and 0.5 < c < 2.0):
            problems.append(f"c0_over_cf: expected a number near 1.0, got {c!r}")
    if "geometry" in card and card["geometry"] not in ("twin", "column"):
        problems.append(f"geometry: expected 'twin' or 'column', got {card['geometry']!r}")
    if "frames" in card and card["frames"] not in FRAMES:
        problems.append(f"frames: expected one of {', '.join(map(repr, FRAMES))}, got {card['frames']!r}")
    for key in ("training", "metrics"):
        if key in card and not isinstance(card[key], dict):
            problems.append(f"{key}: expected an object, got {type(card[key]).__name__}")
    if isinstance(card.get("training"), dict) and not card["training"].get("datasets"):
        problems.append("training: names no datasets (provenance is required)")
    for key in ("model", "parity", "latency_ms"):
        if key in card and not isinstance(card[key], dict):
            problems.append(f"{key}: expected an object, got {type(card[key]).__name__}")
    return problems


def write_card(model_path: str | Path, card: JsonObject) -> Path:
    """Validate and write the card beside the model; raises ValueError listing the problems."""
    problems = validate_card(card)
    if problems:
        raise ValueError("invalid model card: " + "; ".join(problems))
    path = card_path(model_path)
    path.write_text(json.dumps({"card_version": CARD_VERSION, **card}, indent=2, sort_keys=False) + "\n")
    return path


def read_card(model_path: str | Path, *, validate: bool = True) -> JsonObject:
    """The card of a model (pass the .tflite or the .json path); raises ValueError if invalid."""
    path = Path(model_path)
    if path.suffix != ".json":
        path = card_path(path)
    card: JsonObject = json.loads(path.read_text())
    if validate:
        problems = validate_card(card)
        if problems:
            raise ValueError(f"invalid model card {path}: " + "; ".join(problems))
    return card


def to_motor_units(output: list[float] | tuple[float, ...], card: JsonObject) -> list[float]:
    """One model output (x, y) to delta in motor units by the card's scale and offset."""
    scale = card["output_scale"]
    offset = card.get("output_offset") or [0.0, 0.0]
    return [float(output[i]) * float(scale[i]) + float(offset[i]) for i in range(2)]
