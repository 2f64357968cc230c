"""A model's accuracy through the daemon's own path on the traced columns and scenes, and the card's
`evaluation` made of it: what tools/evaluate.py writes, tools/convert.py reports, and the daemon's
model gate (temalign.decide.model_gate) reads at start, on reload and in `config check`.

Each set is one traced column and scene ("column/scene"), measured by benchkit.accuracy
(`set_accuracy`, the very function tools/bench_columns.py measures its cells with): the daemon
calibrates there, aligned, then every stack goes through its wobble, the card's preprocessing,
LiteRT on one thread, the walk fit and that calibration. Errors are in % of 1000 units, both axes
pooled (trainkit.metrics), over the stacks the model answered."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from trainkit.metrics import p99_percent, rmse_percent

from benchkit.accuracy import column_accuracy
from temalign.config.schema import EstimatorSettings, WobbleSettings
from temalign.decide.model_gate import model_gate
from temalign.durable import atomic_write
from temalign.estimate import card as cards
from temalign_twin.cli import optics_overrides
from temalign_twin.columns import NAMED_COLUMNS
from temalign_twin.scenes import SCENES

RADIUS_UNITS = 240.0
"""Misalignments uniform within this radius, as tools/bench_columns.py and docs/models.md."""
THROUGH = ("benchkit.accuracy.column_accuracy on the traced twin: the daemon's own calibration there, "
           "its wobble, the card's preprocessing, LiteRT on one thread, the walk fit and the calibration; "
           "misalignments uniform within {radius:g} units; % of 1000 units, both axes pooled, over the "
           "stacks the model answered")


DEFAULT_LIMIT_PERCENT = EstimatorSettings.model_fields["max_model_rmse_percent"].default
"""The daemon's default `estimator.max_model_rmse_percent`, for the verdicts of the tools."""


def add_limit_argument(parser: argparse.ArgumentParser) -> None:
    """The tools' `--limit`: the daemon's limit their verdict on a model is given against."""
    parser.add_argument("--limit", type=float, default=DEFAULT_LIMIT_PERCENT,
                        help="the daemon's estimator.max_model_rmse_percent, for the verdict (default 1)")


def all_sets() -> list[str]:
    """Every named traced column and scene, as set names ("column/scene")."""
    return [f"{c}/{s}" for c in NAMED_COLUMNS for s in SCENES]


def parse_set(name: str) -> tuple[str, str]:
    """("column", "scene") of a set name; ValueError naming what does not exist."""
    column, _, scene = name.partition("/")
    if column not in NAMED_COLUMNS or scene not in SCENES:
        raise ValueError(f"set {name!r}: expected COLUMN/SCENE with a column of {', '.join(NAMED_COLUMNS)} "
                         f"and a scene of {', '.join(SCENES)}")
    return column, scene


def check_evaluable(model: Path) -> None:
    """Refuse, naming why (ValueError), a model this evaluation cannot run: no file, no valid card,
    or a card for screen frames only (the twin's path here gives camera counts)."""
    if not model.is_file():
        raise ValueError(f"model {model}: no such file")
    try:
        card = cards.read_card(model)
    except FileNotFoundError:
        raise ValueError(f"model {model}: its card {cards.card_path(model)} is missing") from None
    if card["frames"] == "display":
        raise ValueError(f"model {model}: its card says it takes 'display' frames only; the evaluation "
                         "runs the twin's camera path (raw counts), so it cannot measure this model")


def daemon_overrides(card: dict[str, Any]) -> dict[str, Any]:
    """The daemon's settings a model is evaluated under: the wobble its card was made for (the one
    the daemon would insist on), else the default wobble, which must lie in the card's range."""
    if "wobble_fraction" in card:
        return {"wobble": {"fraction": float(card["wobble_fraction"])}}
    low, high = (float(v) for v in card["wobble_range"])
    default = WobbleSettings().fraction
    return {"wobble": {"fraction": default if low <= default <= high else low}}


def set_accuracy(column: str, scene: str, stacks: int, *, model: Path, seed: int = 1,
                 radius: float = RADIUS_UNITS) -> dict[str, Any]:
    """benchkit.accuracy.column_accuracy on one traced column and scene, under the settings the
    model's card asks of the daemon."""
    overrides = daemon_overrides(cards.read_card(model))
    return column_accuracy(seed, stacks, radius, optics_overrides("traced", column, scene), model=model,
                           overrides=overrides)


def _set_job(job: tuple[str, int, Path, int, float]) -> tuple[str, dict[str, Any], float]:
    name, stacks, model, seed, radius = job
    started = time.perf_counter()
    accuracy = set_accuracy(*parse_set(name), stacks, model=model, seed=seed, radius=radius)
    return name, accuracy, time.perf_counter() - started


def measure_sets(model: Path, sets: Iterable[str], stacks: int, *, jobs: int = 1, seed: int = 1,
                 radius: float = RADIUS_UNITS, progress: Callable[[str], None] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Each set's accuracy (set name -> column_accuracy's record), in the order given; `progress`
    gets a line as each set is done. `jobs` > 1 measures sets in that many processes."""
    names = list(sets)
    for name in names:
        parse_set(name)
    todo = [(name, stacks, Path(model), seed, radius) for name in names]
    done: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()

    def record(name: str, accuracy: dict[str, Any], wall_s: float) -> None:
        done[name] = accuracy
        if progress is not None:
            figures = set_figures(name, accuracy)
            progress(f"[{len(done)}/{len(names)}] {name}: RMSE {_text(figures['rmse_percent'])} %, p99 "
                     f"{_text(figures['p99_percent'])} % ({figures['answered']}/{stacks} answered; "
                     f"calibration {accuracy['calibration']}) in {wall_s:.0f} s, "
                     f"{time.perf_counter() - started:.0f} s so far")

    if jobs <= 1:
        for job in todo:
            record(*_set_job(job))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for future in as_completed([pool.submit(_set_job, job) for job in todo]):
                record(*future.result())
    return {name: done[name] for name in names}


def _errors(accuracy: dict[str, Any]) -> np.ndarray:
    """The model's error on each stack it answered (units, x and y), from the record's points."""
    pairs = [np.subtract(p["model"], p["truth"]) for p in accuracy["points"] if p["model"] is not None]
    return np.asarray(pairs, dtype=np.float64).reshape(-1, 2)


def _figures(errors: np.ndarray) -> dict[str, Any]:
    if len(errors) == 0:
        return {"answered": 0, "rmse_percent": None, "p99_percent": None}
    zero = np.zeros_like(errors)
    return {"answered": len(errors), "rmse_percent": round(rmse_percent(errors, zero), 4),
            "p99_percent": round(p99_percent(errors, zero), 4)}


def set_figures(name: str, accuracy: dict[str, Any]) -> dict[str, Any]:
    """One set of the card's evaluation: its name, stacks, how many the model answered, RMSE and p99."""
    return {"name": name, "stacks": int(accuracy["stacks"]), **_figures(_errors(accuracy))}


def evaluation(measured: dict[str, dict[str, Any]], *, command: str, date: str, wall_s: float,
               radius: float = RADIUS_UNITS, seed: int = 1) -> dict[str, Any]:
    """The card's `evaluation`: each set's figures and the RMSE and p99 pooled over every stack the
    model answered in all of them (the number the daemon's gate compares with its limit)."""
    pooled = np.concatenate([_errors(a) for a in measured.values()]) if measured else np.zeros((0, 2))
    return {"sets": [set_figures(name, a) for name, a in measured.items()],
            "stacks": sum(int(a["stacks"]) for a in measured.values()),
            **_figures(pooled), "radius_units": radius, "seed": seed,
            "through": THROUGH.format(radius=radius), "command": command, "date": date,
            "wall_s": round(wall_s, 1)}


def write_evaluation(model: Path, evaluation_: dict[str, Any]) -> Path:
    """Put `evaluation_` into the model's card, changing no other key, atomically (a kill leaves the
    old card or the new one); the card is validated with it first."""
    path = cards.card_path(model)
    card = json.loads(path.read_text())
    card["evaluation"] = evaluation_
    problems = cards.validate_card(card)
    if problems:
        raise ValueError(f"invalid model card {path} with this evaluation: " + "; ".join(problems))
    text = (json.dumps(card, indent=2) + "\n").encode()
    atomic_write(path, lambda handle: handle.write(text), mode=os.stat(path).st_mode & 0o777)
    return path


def verdict(model: Path, limit: float = DEFAULT_LIMIT_PERCENT) -> str:
    """What the daemon's model gate makes of the model's card as it is now, in a sentence."""
    card = cards.read_card(model)
    reason = model_gate(card, limit)
    evaluation_ = card.get("evaluation")
    if not isinstance(evaluation_, dict):
        return f"NOT evaluated: the daemon will refuse it ({reason})"
    rmse = evaluation_.get("rmse_percent")
    head = (f"evaluated RMSE {_text(rmse)} % (pooled over {len(evaluation_.get('sets') or [])} sets), "
            f"limit {limit:g} %")
    if reason is None:
        return f"{head}: the daemon will accept it"
    return f"{head}: the daemon will refuse it ({reason})"


def _text(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def evaluate_into_card(model: Path, stacks: int, sets: list[str], *, command: str, limit: float,
                       say: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
    """Evaluate one model file (converted, or learnt on a column) through the daemon's path, write
    it into its card and say what the daemon's gate makes of it; a model the evaluation cannot run
    is said so (not evaluated)."""
    if stacks == 0:
        say(f"{model}: NOT evaluated (--evaluate-stacks 0): the daemon will refuse it until "
            f"tools/evaluate.py {model} writes its evaluation")
        return
    try:
        check_evaluable(model)
    except ValueError as error:
        say(f"{model}: NOT evaluated ({error}): the daemon will refuse it")
        return
    say(f"{model}: evaluating through the daemon's path on {len(sets)} sets x {stacks} stacks")
    started = time.perf_counter()
    measured = measure_sets(model, sets, stacks, progress=lambda line: say(f"  {line}"))
    write_evaluation(model, evaluation(measured, command=command, date=datetime.now(UTC).date().isoformat(),
                                       wall_s=time.perf_counter() - started))
    say(f"{model}: {verdict(model, limit)}")
