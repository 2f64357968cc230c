"""The model gate: the daemon runs only a model whose accuracy was measured through its own path
and found within the configured limit (docs/safety.md, promise 9).

Why: Keras-against-LiteRT parity says a conversion kept what training made, not that what training
made is any good; a model trained to 9.56 % RMSE once passed as "keeps accuracy" and moved 44.6
units on a column measured at 4. The card's `evaluation` (tools/evaluate.py) is the measurement;
the gate compares its RMSE pooled over every stack of the card's named sets with
`estimator.max_model_rmse_percent`. Pooled, not the worst set: one hard scene must not refuse a
model that is right everywhere else (the spot network's worst set, stigmated holography on the
magnified column, was above 1 % before its tuning while its pooled RMSE was well under); the worst
set is named in every refusal, and the estimator-agreement gate still stands between any one
estimate and a move."""

from __future__ import annotations

import re

from temalign.values import JsonObject, finite

LIMIT_KEY = "estimator.max_model_rmse_percent"
EVALUATE = "tools/evaluate.py MODEL.tflite (docs/own-model.md)"
EVALUATION_REQUIRED = ("sets", "stacks", "answered", "rmse_percent", "p99_percent", "through", "command",
                       "date")
"""Keys of a model card's `evaluation`, each of its `sets` having SET_REQUIRED: defined here, beside
the gate that reads them (temalign.estimate.card validates a whole card with `evaluation_problems`)."""
SET_REQUIRED = ("name", "stacks", "answered", "rmse_percent", "p99_percent")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")



def _worst(evaluation: JsonObject) -> str:
    """The set with the largest RMSE, as a clause for a refusal."""
    measured = [s for s in evaluation["sets"] if s["rmse_percent"] is not None]
    if not measured:
        return ""
    worst = max(measured, key=lambda s: s["rmse_percent"])
    return f"; worst set {worst['name']}: {worst['rmse_percent']:.4g} % over {worst['answered']} stacks"


def model_gate(card: JsonObject, limit_percent: float) -> str | None:
    """Why the daemon must refuse the model of this card (None: it may run it): no evaluation, a
    malformed one, no stack answered, or a pooled RMSE (% of 1000 units) over `limit_percent`.
    Exactly at the limit passes."""
    if "evaluation" not in card:
        return (f"its card has no evaluation: the daemon runs only a model whose RMSE was measured "
                f"through its own path and is within {LIMIT_KEY} ({limit_percent:g} %); run {EVALUATE}")
    evaluation = card["evaluation"]
    problems = evaluation_problems(evaluation)
    if problems:
        return f"its card's evaluation is malformed ({'; '.join(problems)}); run {EVALUATE} again"
    rmse = evaluation["rmse_percent"]
    sets = len(evaluation["sets"])
    if rmse is None:
        return (f"its evaluation has no stack the model answered ({evaluation['stacks']} stacks on "
                f"{sets} sets)")
    if rmse > limit_percent:
        return (f"its evaluated RMSE {rmse:.4g} % (pooled over {sets} sets, {evaluation['answered']} "
                f"stacks, {evaluation['date']}) is over the limit of {limit_percent:g} % ({LIMIT_KEY})"
                f"{_worst(evaluation)}")
    return None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _figures_problems(where: str, figures: JsonObject) -> list[str]:
    """Counts and percentages of a set or of the pooled evaluation: `answered` of `stacks`, and an
    RMSE and p99 (finite, >= 0) unless no stack was answered (then both null)."""
    problems = [f"{where}{key}: expected a count, got {figures[key]!r}" for key in ("stacks", "answered")
                if not _count(figures[key])]
    if not problems and figures["answered"] > figures["stacks"]:
        problems.append(f"{where}answered: {figures['answered']} of only {figures['stacks']} stacks")
    for key in ("rmse_percent", "p99_percent"):
        v = figures[key]
        if figures["answered"] == 0 and v is None:
            continue
        if not (finite(v) and v >= 0):
            problems.append(f"{where}{key}: expected a percentage >= 0, got {v!r}")
    return problems


def evaluation_problems(evaluation: object) -> list[str]:
    """Problems with a card's `evaluation` (empty when it is well formed)."""
    if not isinstance(evaluation, dict):
        return [f"expected an object, got {type(evaluation).__name__}"]
    missing = [f"missing key {k!r}" for k in EVALUATION_REQUIRED if k not in evaluation]
    if missing:
        return missing
    problems = _figures_problems("", evaluation)
    sets = evaluation["sets"]
    if not (isinstance(sets, list) and sets):
        return [*problems, f"sets: expected a list of the sets measured, got {sets!r}"]
    for i, one in enumerate(sets):
        if not isinstance(one, dict) or any(k not in one for k in SET_REQUIRED):
            problems.append(f"sets[{i}]: expected an object with {', '.join(SET_REQUIRED)}, got {one!r}")
            continue
        if not (isinstance(one["name"], str) and one["name"]):
            problems.append(f"sets[{i}].name: expected the set's name, got {one['name']!r}")
        problems.extend(_figures_problems(f"sets[{i}].", one))
    if not problems and sum(s["stacks"] for s in sets) != evaluation["stacks"]:
        problems.append(f"stacks: {evaluation['stacks']}, but its sets have "
                        f"{sum(s['stacks'] for s in sets)}")
    if not problems and sum(s["answered"] for s in sets) != evaluation["answered"]:
        problems.append(f"answered: {evaluation['answered']}, but its sets answered "
                        f"{sum(s['answered'] for s in sets)}")
    for key in ("through", "command"):
        if not (isinstance(evaluation[key], str) and evaluation[key]):
            problems.append(f"{key}: expected what produced it (text), got {evaluation[key]!r}")
    if not (isinstance(evaluation["date"], str) and _DATE.match(evaluation["date"])):
        problems.append(f"date: expected YYYY-MM-DD, got {evaluation['date']!r}")
    return problems
