#!/usr/bin/env python3
"""Train a registered model on wobble datasets (the paper's sections 3.4 to 3.7).

Examples:
  tools/train.py --data n10.npz n13.npz --model paper_final --epochs 30 --runs 5 --out runs/final
  tools/train.py --data n10.npz n13.npz --eval-on n14.npz n6.npz --out runs/table3   # Table 3
  tools/train.py --data n10.npz n13.npz n14.npz --sizes 0.25 0.5 1.0 --out runs/fig8  # Fig. 8
Writes per run config/history/metrics JSON, loss.png and pred_vs_true.png, the best run's
best.keras and summary.json (median and spread of test RMSE; the partial model card convert.py uses)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the console
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/train.py", "train", "keras", "tensorflow", "matplotlib")

from trainkit import models  # noqa: E402 (after the check that says which extra is missing)
from trainkit.training import SCALINGS, TrainConfig, train  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="F.npz", help="training dataset(s), merged")
    p.add_argument("--test", nargs="+", default=[], metavar="F.npz",
                   help="a named test set (default: a seeded 80/20 split of --data per run)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction when splitting")
    p.add_argument("--model", default="paper_cnn", help="registered model (--list-models)")
    p.add_argument("--list-models", action="store_true", help="print the registered models and exit")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="run r uses seed + r (weights, split, shuffling)")
    p.add_argument("--runs", type=int, default=1, help="repeated runs: median and spread of test RMSE")
    p.add_argument("--input-size", type=int, default=256, choices=(64, 128, 256),
                   help="model input side; picks temalign.estimate.preprocess:standard_<side>")
    p.add_argument("--preprocess", default=None, metavar="module:function",
                   help="preprocessing function (default: the standard one for --input-size)")
    p.add_argument("--label", choices=("labels", "truth"), default="labels",
                   help="labels = a_start - a (what a column knows); truth = a* - a (twin only)")
    p.add_argument("--scaling", choices=SCALINGS, default="minmax",
                   help="label scaling for training, recorded as output_scale/output_offset")
    p.add_argument("--optimizer", choices=sorted(models.OPTIMIZERS), default="adam",
                   help="the optimisers of the paper's A.2.7")
    p.add_argument("--loss", choices=sorted(models.LOSSES), default="mse",
                   help="mse as the paper; huber (delta 10 units at --scaling fixed) to calibrate a "
                        "physical model without letting a few odd stacks pull it")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--linear-output", action="store_true",
                   help="linear output layer instead of the paper's printed relu (the obvious fix)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=JSON",
                   help="extra builder option, e.g. --model-option dropout=0.1")
    p.add_argument("--sizes", nargs="+", type=float, default=[], metavar="FRACTION",
                   help="size study (Fig. 8): also train on these fractions of the training set")
    p.add_argument("--eval-on", nargs="+", default=[], metavar="F.npz",
                   help="generalisation (Table 3): evaluate the trained runs on these datasets")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--list-models" in argv:
        print("\n".join(models.model_names()))
        return 0
    args = parser().parse_args(argv)
    options = {}
    for item in args.model_option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.linear_output:
        options["output_activation"] = "linear"
    cfg = TrainConfig(
        data=args.data, out=args.out, model=args.model, test=args.test, test_fraction=args.test_fraction,
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, runs=args.runs,
        preprocess=args.preprocess, input_size=args.input_size, label=args.label, scaling=args.scaling,
        optimizer=args.optimizer, loss=args.loss, learning_rate=args.learning_rate, model_options=options,
        sizes=args.sizes, eval_on=args.eval_on, verbose=not args.quiet,
        command=shlex.join(["tools/train.py", *argv]))
    try:
        train(cfg)
    except (ValueError, KeyError, OSError) as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
