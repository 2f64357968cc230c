"""Accuracy metrics in the paper's convention (numpy only, so the daemon could reuse them).

Errors are in motor units; RMSE and p99 are given in percent of the 1000-unit range and pool both
axes as twin.md defines: RMSE = sqrt(mean(ex^2, ey^2)), p99 = 99th percentile of |ex| and |ey|
together. The paper's "real difference" (Table 2) is the RMSE back in units (RMSE% * 10)."""

from __future__ import annotations

from typing import Any

import numpy as np

RANGE_UNITS = 1000.0
"""The paper's normalisation range: 1 % = 10 motor units."""


def _errors(pred: Any, true: Any) -> np.ndarray:
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in shape: {p.shape} vs {t.shape}")
    if len(p) == 0:
        raise ValueError("no samples")
    return p - t


def rmse_percent(pred: Any, true: Any) -> float:
    """RMSE pooled over both axes, percent of 1000 units."""
    e = _errors(pred, true)
    return float(np.sqrt(np.mean(e**2)) / RANGE_UNITS * 100.0)


def p99_percent(pred: Any, true: Any) -> float:
    """99th percentile of |ex| and |ey| pooled, percent of 1000 units."""
    e = _errors(pred, true)
    return float(np.percentile(np.abs(e), 99) / RANGE_UNITS * 100.0)


def per_axis_rmse_percent(pred: Any, true: Any) -> tuple[float, float]:
    """RMSE of x and of y separately, percent of 1000 units."""
    e = _errors(pred, true)
    r = np.sqrt(np.mean(e**2, axis=0)) / RANGE_UNITS * 100.0
    return float(r[0]), float(r[1])


def per_axis_p99_percent(pred: Any, true: Any) -> tuple[float, float]:
    """p99 of |ex| and of |ey| separately, percent of 1000 units."""
    e = _errors(pred, true)
    r = np.percentile(np.abs(e), 99, axis=0) / RANGE_UNITS * 100.0
    return float(r[0]), float(r[1])


def real_difference_units(rmse_pct: float) -> float:
    """The paper's 'real difference' (Table 2): RMSE in % of 1000 units back in units (x 10)."""
    return float(rmse_pct) * RANGE_UNITS / 100.0


def summary(pred: Any, true: Any) -> dict[str, Any]:
    """Every metric of one evaluation, JSON-ready."""
    e = _errors(pred, true)
    rmse = rmse_percent(pred, true)
    return {
        "samples": len(e),
        "rmse_percent": rmse,
        "p99_percent": p99_percent(pred, true),
        "rmse_percent_xy": list(per_axis_rmse_percent(pred, true)),
        "p99_percent_xy": list(per_axis_p99_percent(pred, true)),
        "real_difference_units": real_difference_units(rmse),
        "max_abs_error_units": float(np.max(np.abs(e))),
        "mean_error_units_xy": np.mean(e, axis=0).tolist(),
    }
