#!/usr/bin/env python3
"""Convert a trained model (train.py's best.keras + summary.json) to .tflite with builtin ops only.

Each quantisation is checked with LiteRT (the daemon's runtime) against Keras on held-out stacks
(parity: max and RMS difference in motor units, and the held-out RMSE of each), timed on one
thread, and written with its model card (same name, .json). The first quantisation goes to --out,
the others to <out>.<quantisation>.tflite.

Parity says the conversion lost nothing, not that the model is accurate. Each file is then
evaluated through the daemon's own path (benchkit.evaluation, as tools/evaluate.py:
--evaluate-stacks stacks on each traced column and scene) and the evaluation written into its
card; the last line for each says whether the daemon's model gate (estimator.max_model_rmse_percent,
--limit) will accept it. --evaluate-stacks 0 skips that, and the daemon refuses the model until
tools/evaluate.py has evaluated it.
A model of your own goes anywhere outside the package (a config names it by path); only `make model`
writes into daemon/temalign/models/, the shipped model.

Example:
  tools/convert.py runs/final/best.keras --out runs/final/paper_final.tflite \\
      --quantisation float32 float16 dynamic-int8 int8"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the console
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/convert.py", "train", "keras", "tensorflow")

from benchkit.evaluation import (  # noqa: E402 (after the check)
    add_limit_argument,
    all_sets,
    evaluate_into_card,
    parse_set,
)
from trainkit.conversion import QUANTISATIONS, NonBuiltinOps, export  # noqa: E402 (after the check)

EVALUATE_STACKS = 20
"""Stacks per set of the evaluation after conversion: 560 over the 28 traced sets, a minute or two
on 2 cores; tools/evaluate.py --stacks 200 for the figures a model ships with."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the trained .keras model (summary.json beside it)")
    p.add_argument("--out", required=True, help="the .tflite to write (its card goes beside it)")
    p.add_argument("--quantisation", "--quantization", nargs="+", choices=QUANTISATIONS,
                   default=["float32"], help="float32, float16, dynamic-int8, int8 (full, float I/O)")
    p.add_argument("--summary", default=None, help="train.py's summary.json (default: beside the model)")
    p.add_argument("--held-out", nargs="+", default=None, metavar="F.npz",
                   help="datasets for the parity check (default: the run's own test set)")
    p.add_argument("--max-held-out", type=int, default=200)
    p.add_argument("--latency-repeats", type=int, default=50)
    p.add_argument("--frames", choices=("raw", "display", "any"), default=None,
                   help="the frames the card declares (default: the training data's); 'any' for a "
                        "model measured on camera and screen frames alike")
    p.add_argument("--evaluate-stacks", type=int, default=EVALUATE_STACKS, metavar="N",
                   help=f"stacks per set of the evaluation through the daemon's path (default "
                        f"{EVALUATE_STACKS}; 0: skip it, and the daemon refuses the model until "
                        "tools/evaluate.py evaluates it)")
    p.add_argument("--evaluate-sets", nargs="+", default=None, metavar="COLUMN/SCENE",
                   help="the sets of that evaluation (default: every traced column and scene)")
    add_limit_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.evaluate_stacks < 0 or not args.limit > 0:
        print("convert: --evaluate-stacks must be 0 or more, --limit more than 0", file=sys.stderr)
        return 2
    sets = args.evaluate_sets or all_sets()
    command = shlex.join(["tools/convert.py", *argv])
    try:
        for name in sets:
            parse_set(name)
        reports = export(args.model, args.out, args.quantisation, summary_path=args.summary,
                         held_out=args.held_out, max_held_out=args.max_held_out,
                         latency_repeats=args.latency_repeats, frames=args.frames, command=command)
        for report in reports:
            evaluate_into_card(Path(report["file"]), args.evaluate_stacks, sets, command=command,
                               limit=args.limit)
    except NonBuiltinOps as error:
        print(f"convert: refused: {error}", file=sys.stderr)
        return 3
    except (ValueError, KeyError, OSError) as error:
        print(f"convert: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
