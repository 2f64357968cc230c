#!/usr/bin/env python3
"""Convert a trained model (train.py's best.keras + summary.json) to .tflite with builtin ops only.

Each quantisation is checked with LiteRT (the daemon's runtime) against Keras on held-out stacks
(max and RMS difference in motor units), timed on one thread, and written with its model card
(same name, .json). The first quantisation goes to --out, the others to <out>.<quantisation>.tflite.
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

from trainkit.conversion import QUANTISATIONS, NonBuiltinOps, export  # noqa: E402 (after the check)


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
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        export(args.model, args.out, args.quantisation, summary_path=args.summary, held_out=args.held_out,
               max_held_out=args.max_held_out, latency_repeats=args.latency_repeats, frames=args.frames,
               command=shlex.join(["tools/convert.py", *argv]))
    except NonBuiltinOps as error:
        print(f"convert: refused: {error}", file=sys.stderr)
        return 3
    except (ValueError, KeyError, OSError) as error:
        print(f"convert: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
