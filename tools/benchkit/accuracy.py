"""Offline accuracy on one column and scene, through the daemon's own parts: the stacks its wobble
takes, the shipped model re-mapped through the calibration the daemon measured there, the
classical estimator, and what the agreement gate makes of the two.

Used by tools/bench_shipped.py (--optics/--column/--scene), and through benchkit.evaluation by
tools/bench_columns.py and tools/evaluate.py (a model card's evaluation)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from trainkit.metrics import p99_percent, rmse_percent

from benchkit.harness import SHIPPED_MODEL, sim_column
from temalign.wobble.stack import wobble
from temalign_twin.settings import NO_DRIFT, deep_merge


def _rmse_percent(errors: list[tuple[float, float]]) -> float | None:
    """trainkit.metrics' RMSE of these errors (None when no stack was answered)."""
    return rmse_percent(errors, np.zeros((len(errors), 2))) if errors else None


def _p99_percent(errors: list[tuple[float, float]]) -> float | None:
    """trainkit.metrics' p99 of these errors (None when no stack was answered)."""
    return p99_percent(errors, np.zeros((len(errors), 2))) if errors else None


def column_accuracy(seed: int, n: int, radius: float, twin_overrides: dict[str, Any], *,
                    model: Path = SHIPPED_MODEL, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`n` stacks at misalignments uniform in the disc of `radius` units: the RMSE (% of 1000
    units) of the re-mapped model and of the classical estimator over the stacks each answered,
    how many each answered, how many the gate trusted (and its RMSE), the reasons, and each stack's
    truth and estimates (`points`, for a plot of predicted against true). `overrides`: the daemon's
    settings (section -> keys), e.g. the wobble a model's card was made for."""
    twin = deep_merge(twin_overrides, NO_DRIFT)
    with sim_column(seed, overrides=overrides, twin_overrides=twin, model=model) as col:
        estimator = col.parts.estimator
        settings = col.settings
        rng = np.random.default_rng([seed, 12])
        model_err: list[tuple[float, float]] = []
        classical_err: list[tuple[float, float]] = []
        trusted_err: list[tuple[float, float]] = []
        points: list[dict[str, Any]] = []
        reasons: Counter[str] = Counter()
        for _ in range(n):
            r = radius * math.sqrt(float(rng.uniform()))
            phi = float(rng.uniform(0.0, 2.0 * math.pi))
            col.offset(r * math.cos(phi), r * math.sin(phi))
            truth = -np.asarray(col.truth()["misalignment"], dtype=float)
            stack = wobble(col.microscope, col.parts.source, fraction=settings.wobble.fraction,
                           settle_s=settings.wobble.settle_s, clock=col.clock, memory=col.parts.memory,
                           restore_attempts=settings.wobble.restore_attempts,
                           saturation_abort_fraction=settings.quality.saturation_abort_fraction)
            measured = estimator.measure(stack)
            reasons[measured.reason] += 1
            if measured.model_delta is not None and all(map(math.isfinite, measured.model_delta)):
                model_err.append(tuple(np.subtract(measured.model_delta, truth)))
            classical = measured.classical.delta if measured.classical is not None else None
            if classical is not None:
                classical_err.append(tuple(np.subtract(classical, truth)))
            if measured.trusted and measured.delta is not None:
                trusted_err.append(tuple(np.subtract(measured.delta, truth)))
            points.append({"truth": _rounded(truth), "model": _rounded(measured.model_delta),
                           "classical": _rounded(classical)})
        calibration = col.notes.get("calibration", "nominal")
    return {"stacks": n, "radius": radius, "calibration": calibration,
            "model_rmse_percent": _rmse_percent(model_err), "model_p99_percent": _p99_percent(model_err),
            "model_answered": len(model_err),
            "classical_rmse_percent": _rmse_percent(classical_err),
            "classical_p99_percent": _p99_percent(classical_err), "classical_answered": len(classical_err),
            "trusted": len(trusted_err), "trusted_rmse_percent": _rmse_percent(trusted_err),
            "trusted_p99_percent": _p99_percent(trusted_err),
            "reasons": dict(reasons.most_common()), "points": points}


def _rounded(delta: Any) -> list[float] | None:
    """A delta for the JSON (0.01 units), None where the estimator gave none."""
    if delta is None or not all(map(math.isfinite, delta)):
        return None
    return [round(float(v), 2) for v in delta]
