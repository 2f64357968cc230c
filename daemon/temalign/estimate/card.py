"""The model card: JSON beside the .tflite (same name, .json), the contract between the tools and
the daemon (architecture.md). Pure python, no TensorFlow or numpy, so the runtime can validate a
card at start with this very code.

A card's `output` says what the model gives: "delta" (the default: delta in motor units, x then y,
= model output * output_scale + output_offset) or "spots" (each frame's spot centre and confidence,
temalign.estimate.model_estimator). `wobble_range` and `c0_over_cf_range` state the wobbles and
wobble centres a model was trained on (a spot model must state them; a delta model may, instead
of the one `wobble_fraction` and `c0_over_cf` it was trained at).

`evaluation` (tools/evaluate.py) is the model's accuracy measured through the daemon's own path on
named sets: `sets` (each `name`, `stacks`, `answered`, `rmse_percent`, `p99_percent`), the RMSE
and p99 pooled over every stack of all of them, `through`, `command` and `date`. A card without
one is a valid card; the daemon's model gate (temalign.decide.model_gate) is what refuses it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from temalign.decide.model_gate import evaluation_problems
from temalign.values import JsonObject, finite

CARD_VERSION = 1
REQUIRED = ("preprocess", "input_shape", "frames", "training", "metrics")
"""Keys every card has (architecture.md); the rest depend on `output` (OUTPUT_REQUIRED)."""
OUTPUTS = ("delta", "spots")
OUTPUT_REQUIRED = {"delta": ("output_scale",), "spots": ("wobble_range", "c0_over_cf_range")}
"""Keys each kind of output needs besides REQUIRED; output_offset is optional (0 when absent), and a
delta card names either `wobble_fraction` or `wobble_range`, either `c0_over_cf` or its range."""
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
    output = card.get("output", "delta")
    if output not in OUTPUTS:
        return [f"output: expected one of {', '.join(map(repr, OUTPUTS))}, got {output!r}"]
    problems = [f"missing key {k!r}" for k in (*REQUIRED, *OUTPUT_REQUIRED[output]) if k not in card]
    for single, ranged in (("wobble_fraction", "wobble_range"), ("c0_over_cf", "c0_over_cf_range")):
        if single not in card and ranged not in card:
            problems.append(f"missing key {single!r} (or {ranged!r})")
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
    for key, low, high, example in (("wobble_range", 0.0, 0.5, "[0.015, 0.04]"),
                                    ("c0_over_cf_range", 0.5, 2.0, "[0.97, 1.03]")):
        if key in card:
            v = card[key]
            if not (isinstance(v, list | tuple) and len(v) == 2 and all(finite(x) for x in v)
                    and low < v[0] <= v[1] < high):
                problems.append(f"{key}: expected [lowest, highest] such as {example}, got {v!r}")
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
    if "evaluation" in card:
        problems.extend(f"evaluation: {problem}" for problem in evaluation_problems(card["evaluation"]))
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
    if card.get("output", "delta") != "delta":
        raise ValueError(f"a model with output {card.get('output')!r} gives no delta of its own")
    scale = card["output_scale"]
    offset = card.get("output_offset") or [0.0, 0.0]
    return [float(output[i]) * float(scale[i]) + float(offset[i]) for i in range(2)]
