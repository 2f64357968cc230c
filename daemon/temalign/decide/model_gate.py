"""The model gate: the daemon runs only a model whose accuracy was measured through its own path
and found within the configured limit (docs/safety.md, promise 9).

Why: Keras-against-LiteRT parity says a conversion kept what training made, not that what training
made is any good; a model trained to 9.56 % RMSE once passed as "keeps accuracy" and moved 44.6
units on a column measured at 4. The card's `evaluation` (tools/evaluate.py) is the measurement;
the gate compares its RMSE pooled over every stack of the card's named sets with
`estimator.max_model_rmse_percent`. Pooled, not the worst set: one hard scene must not refuse a
model that is right everywhere else (the shipped spot network's worst set, stigmated holography
on the magnified column, is above 1 % while its pooled RMSE is well under); the worst set is named
in every refusal, and the estimator-agreement gate still stands between any one estimate and a
move."""

from __future__ import annotations

from temalign.estimate.card import evaluation_problems
from temalign.values import JsonObject

LIMIT_KEY = "estimator.max_model_rmse_percent"
EVALUATE = "tools/evaluate.py MODEL.tflite (docs/own-model.md)"


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
