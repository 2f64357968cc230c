#!/usr/bin/env python3
"""Evaluate a model through the daemon's own path and write the result into its card.

    tools/evaluate.py MODEL.tflite [--stacks 50] [--sets COLUMN/SCENE ...] [--jobs 1]

On each set, a traced column and scene of the twin (default: every one of them, as
tools/bench_columns.py), the daemon calibrates there, aligned, then `--stacks` stacks at
misalignments uniform within 240 units each go through its wobble, the card's preprocessing,
LiteRT on one thread, the walk fit and that calibration (benchkit.evaluation). The card's
`evaluation` gets each set's RMSE and p99 (% of 1000 units) and the RMSE pooled over all their
stacks: the number the daemon compares with `estimator.max_model_rmse_percent` (default 1 %) at
start, on reload and in `temalign config check`; without an evaluation it refuses the model. Only
the card's `evaluation` changes, atomically. A line per set shows the progress.

Cost: about 0.1 to 0.3 s a stack on a 2-core machine, plus a calibration per set (a few seconds):
the shipped models' 50 stacks on each of the 28 sets take about 10 minutes with --jobs 1."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit.evaluation import (
    add_limit_argument,
    all_sets,
    check_evaluable,
    evaluation,
    measure_sets,
    parse_set,
    verdict,
    write_evaluation,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the .tflite (its card beside it gets the evaluation)")
    p.add_argument("--stacks", type=int, default=50, help="stacks per set (default 50)")
    p.add_argument("--sets", nargs="+", default=None, metavar="COLUMN/SCENE",
                   help="the sets to measure (default: every traced column and scene)")
    p.add_argument("--jobs", type=int, default=1, help="sets measured at once, in processes (default 1)")
    p.add_argument("--seed", type=int, default=1, help="the twin's seed on every set (default 1)")
    add_limit_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.stacks < 1 or args.jobs < 1 or not args.limit > 0:
        print("evaluate: --stacks and --jobs must be at least 1, --limit more than 0", file=sys.stderr)
        return 2
    sets = args.sets or all_sets()
    try:
        for name in sets:
            parse_set(name)
        check_evaluable(args.model)
    except (ValueError, OSError) as error:  # a JSONDecodeError is a ValueError
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    print(f"evaluating {args.model} on {len(sets)} sets x {args.stacks} stacks ({args.jobs} job(s))",
          flush=True)
    started = time.perf_counter()
    measured = measure_sets(args.model, sets, args.stacks, jobs=args.jobs, seed=args.seed,
                            progress=lambda line: print(line, flush=True))
    result = evaluation(measured, command=shlex.join(["tools/evaluate.py", *argv]),
                        date=datetime.now(UTC).date().isoformat(), wall_s=time.perf_counter() - started,
                        seed=args.seed)
    try:
        path = write_evaluation(args.model, result)
    except (ValueError, OSError) as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    print(verdict(args.model, args.limit))
    print(f"{result['stacks']} stacks, {result['answered']} answered, p99 {result['p99_percent']} %, "
          f"in {result['wall_s']:.0f} s; wrote the evaluation into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
