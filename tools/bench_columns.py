#!/usr/bin/env python3
"""The daemon as it stands on every traced column and scene: calibration, offline accuracy and
cold starts, through the daemon's own parts (benchkit.harness) over real TCP.

    .venv/bin/python tools/bench_columns.py [--columns ...] [--scenes ...] [--stacks 40]
        [--starts 10] [--radius 240] [--jobs 2] [--out bench-out]

Per column and scene: the daemon calibrates there (aligned, as a person would before a
session); `--stacks` stacks at misalignments uniform within `--radius` give the RMSE (% of 1000
units) of the shipped model re-mapped through that calibration and of the classical estimator,
and how many stacks the agreement gate trusted; `--starts` cold starts from within `--radius`
give the share brought to |m| <= 20 within 2 and within 8 cycles, with the refusals' reasons.
The accuracy is measured as tools/evaluate.py measures a model's card (benchkit.evaluation).
Writes columns.json (with every stack's truth and estimates) and columns.md (the table of
docs/benchmarks.md); `--plot` also draws the model's and the classical estimator's deltas against
the truth, a panel per column, coloured by scene."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit.coldstart import cold_start
from benchkit.evaluation import set_accuracy
from benchkit.harness import SHIPPED_MODEL

from temalign_twin.cli import optics_overrides
from temalign_twin.columns import COLUMNS
from temalign_twin.scenes import SCENES


def _cell(job: tuple[str, str, int, int, float, int, Path]) -> dict[str, Any]:
    column, scene, stacks, starts, radius, first_seed, model = job
    started = time.perf_counter()
    twin = optics_overrides("traced", column, scene)
    accuracy = set_accuracy(column, scene, stacks, model=model, seed=first_seed, radius=radius)
    runs = [cold_start(first_seed + k, radius, twin_overrides=twin, model=model) for k in range(starts)]
    cycles = [r["cycles"] for r in runs]
    refusals = Counter(s["reason"] or s["outcome"] for r in runs for s in r["steps"]
                       if s["outcome"] != "corrected")
    cell = {"column": column, "scene": scene, "accuracy": accuracy,
            "coldstart": {"starts": starts, "within_2": sum(1 for c in cycles if c is not None and c <= 2),
                          "within_8": sum(1 for c in cycles if c is not None),
                          "violations": sum(len(r["violations"]) for r in runs),
                          "not_corrected": dict(refusals.most_common(3))},
            "wall_s": round(time.perf_counter() - started, 1)}
    print(f"{column:22s} {scene:21s} {_line(cell)}", flush=True)
    return cell


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _line(cell: dict[str, Any]) -> str:
    a, c = cell["accuracy"], cell["coldstart"]
    calibrated = "yes" if a["calibration"] == "measured" else "no"
    return (f"calibrated {calibrated}; model {_percent(a['model_rmse_percent'])} %, classical "
            f"{_percent(a['classical_rmse_percent'])} % ({a['classical_answered']}/{a['stacks']}), trusted "
            f"{a['trusted']}/{a['stacks']}; cold starts within 2: {c['within_2']}/{c['starts']}, "
            f"within 8: {c['within_8']}/{c['starts']}, violations {c['violations']}")


def markdown(cells: list[dict[str, Any]]) -> str:
    rows = ["| column | scene | calibrated | model RMSE / p99 % | classical RMSE / p99 % (answered) | "
            "trusted | trusted RMSE / p99 % | cold starts within 2 / 8 cycles | violations | main refusal |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for cell in cells:
        a, c = cell["accuracy"], cell["coldstart"]
        refusal = next(iter(c["not_corrected"]), "-")
        why = a["calibration"] if a["calibration"] != "measured" else ""
        calibrated = "yes" if not why else "no: " + why.removeprefix("failed: ").split(" (")[0]
        rows.append(f"| {cell['column']} | {cell['scene']} | {calibrated} | "
                    f"{_percent(a['model_rmse_percent'])} / {_percent(a['model_p99_percent'])} | "
                    f"{_percent(a['classical_rmse_percent'])} / {_percent(a['classical_p99_percent'])} "
                    f"({a['classical_answered']}/{a['stacks']}) | "
                    f"{a['trusted']}/{a['stacks']} | {_percent(a['trusted_rmse_percent'])} / "
                    f"{_percent(a['trusted_p99_percent'])} | "
                    f"{c['within_2']} / {c['within_8']} of {c['starts']} | {c['violations']} | {refusal} |")
    return "\n".join(rows) + "\n"


def plot(cells: list[dict[str, Any]], path: Path, model_name: str) -> None:
    """Predicted against true (both axes pooled, units), the model on top and the classical
    estimator below, one panel per column: a biased scene shows as a slope, a failed one as a cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys(c["column"] for c in cells))
    scenes = list(dict.fromkeys(c["scene"] for c in cells))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, len(columns), figsize=(3.2 * len(columns), 6.4), squeeze=False)
    for row, (key, label) in enumerate((("model", model_name), ("classical", "classical"))):
        for col, column in enumerate(columns):
            ax = axes[row][col]
            for cell in (c for c in cells if c["column"] == column):
                pairs = [(t, e) for p in cell["accuracy"]["points"] if p[key] is not None
                         for t, e in zip(p["truth"], p[key], strict=True)]
                if pairs:
                    true, predicted = zip(*pairs, strict=True)
                    ax.scatter(true, predicted, s=4, alpha=0.6, color=colours(scenes.index(cell["scene"])),
                               label=cell["scene"])
            limit = max(250.0, *(abs(v) for c in cells for p in c["accuracy"]["points"] for v in p["truth"]))
            ax.plot([-limit, limit], [-limit, limit], color="black", linewidth=0.6)
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_title(f"{label}: {column}", fontsize=9)
            ax.set_xlabel("true delta, units", fontsize=8)
            if col == 0:
                ax.set_ylabel("predicted delta, units", fontsize=8)
    axes[0][0].legend(fontsize=6, markerscale=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--stacks", type=int, default=40)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--radius", type=float, default=240.0)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--model", type=Path, default=SHIPPED_MODEL,
                    help="the .tflite (its card beside it; default: the shipped default model)")
    ap.add_argument("--plot", type=Path, default=None, metavar="PNG",
                    help="also draw predicted against true for every cell here")
    args = ap.parse_args(argv)
    if args.stacks < 1 or args.starts < 0 or not args.radius > 0:
        ap.error("--stacks >= 1, --starts >= 0, --radius > 0")
    jobs = [(c, s, args.stacks, args.starts, args.radius, args.first_seed, args.model)
            for c in args.columns for s in args.scenes]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        cells = list(pool.map(_cell, jobs))
    table = markdown(cells)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "columns", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "wall_s": round(time.perf_counter() - started, 1), "cells": cells}
    (args.out / "columns.json").write_text(json.dumps(result, indent=1))
    (args.out / "columns.md").write_text(table)
    if args.plot is not None:
        plot(cells, args.plot, args.model.stem)
    print(table, end="")
    print(f"{len(cells)} cells in {result['wall_s']:.0f} s; wrote {args.out / 'columns.json'}, "
          f"{args.out / 'columns.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
