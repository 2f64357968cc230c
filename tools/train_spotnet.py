#!/usr/bin/env python3
"""Train the spot network (tools/trainkit/spotnet.py) on the traced twin and convert it to .tflite.

The training stacks are drawn widely (trainkit.traced_sets, wide draws): the named columns but the
held-out one and as many columns drawn at random, every scene but the held-out one in random
layouts, wobbles of 1.5 to 4 %, c0 from 0.97 to 1.03 c_f, offsets to 400 units, doses from 1/30 to
4x, cameras of 128 to 1024 px, the display path, astigmatism, hot pixels. Two sets are held out
for the card's figures: in-distribution stacks of another seed, and the held-out column in every
scene with the held-out scene on every column. Rendering is cached (--cache): a second run with
the same set reads it back.

Example (what `make model` runs; about 45 min on 2 cores):
  tools/train_spotnet.py --stacks 8000 --epochs 20 --seed 11 --out runs/spotnet \\
      --tflite daemon/temalign/models/spotnet.tflite --cache data/spotnet-train-11.npz"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the console
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/train_spotnet.py", "train", "keras", "tensorflow")

from trainkit import spot_data, spot_export, spot_training, traced_sets  # noqa: E402 (after the extra's check)

WOBBLE_RANGE = (0.015, 0.04)
C0_RANGE = (0.97, 1.03)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stacks", type=int, default=8000, help="training stacks (each gives 7 frames)")
    p.add_argument("--held-out-stacks", type=int, default=300, help="stacks in each held-out set")
    p.add_argument("--seed", type=int, default=11,
                   help="the training set's seed (held-out sets: seed + 1 to seed + 3)")
    p.add_argument("--hold-out-column", default=traced_sets.HOLD_OUT_COLUMN)
    p.add_argument("--hold-out-scene", default=traced_sets.HOLD_OUT_SCENE)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--width", type=int, default=16, help="channels of the inner convolutions")
    p.add_argument("--variant", default="plain", choices=("plain", "separable"),
                   help="plain convolutions (shipped) or depthwise-separable ones (trainkit.spotnet)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: every core)")
    p.add_argument("--cache", default=None, metavar="F.npz", help="keep the rendered training set here")
    p.add_argument("--out", required=True, help="folder for the Keras model, history and report")
    p.add_argument("--tflite", default=None, help="the .tflite to write (its card beside it)")
    p.add_argument("--int8", default=None, metavar="F.tflite",
                   help="also write the full-int8 variant here (its card beside it), for the cost study")
    return p


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        train_conds = traced_sets.conditions(args.stacks, args.seed, hold_out_column=args.hold_out_column,
                                             hold_out_scene=args.hold_out_scene, wide=True)
        inside_conds = traced_sets.conditions(args.held_out_stacks, args.seed + 1,
                                              hold_out_column=args.hold_out_column,
                                              hold_out_scene=args.hold_out_scene)
        outside_conds = traced_sets.held_out_conditions(
            args.held_out_stacks, args.seed + 2, column=args.hold_out_column, scene=args.hold_out_scene)
    except ValueError as error:
        print(f"train_spotnet: {error}", file=sys.stderr)
        return 2
    cache = Path(args.cache) if args.cache else None
    train = spot_data.load_or_build("training set", train_conds, args.seed, args.workers, cache, say)
    inside = spot_data.load_or_build("held-out, inside the training distribution", inside_conds,
                                     args.seed + 1, args.workers, None, say)
    outside_name = f"held-out column {args.hold_out_column} and scene {args.hold_out_scene}"
    outside = spot_data.load_or_build(outside_name, outside_conds, args.seed + 2, args.workers, None, say)
    rendering_s = time.monotonic() - started
    cfg = spot_training.SpotTraining(epochs=args.epochs, batch=args.batch, learning_rate=args.learning_rate,
                                     width=args.width, seed=args.seed, kind=args.variant)
    t0 = time.monotonic()
    model, history = spot_training.train(train, inside, cfg, say=say)
    training_s = time.monotonic() - t0
    model.save(out / "spotnet.keras")
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    report: dict = {"command": shlex.join(["tools/train_spotnet.py", *argv]), "rendering_s": rendering_s,
                    "training_s": training_s}
    if args.tflite:
        card = {
            "output": "spots", "preprocess": spot_data.PREPROCESS, "input_shape": [128, 128, 7],
            "frames": "any",
            "wobble_range": list(WOBBLE_RANGE), "c0_over_cf_range": list(C0_RANGE),
            "training": {
                "datasets": [f"traced twin, wide draws: {args.stacks} stacks, seed {args.seed} "
                             "(trainkit.traced_sets, trainkit.spot_data)"],
                "held_out": {"column": args.hold_out_column, "scene": args.hold_out_scene},
                "epochs": args.epochs, "width": args.width, "variant": args.variant, "batch": args.batch,
                "learning_rate": args.learning_rate, "seed": args.seed, "date": time.strftime("%Y-%m-%d"),
                "rendering_s": round(rendering_s), "training_s": round(training_s),
                "command": report["command"]},
            "metrics": {"held_out_outside": {}},
        }
        lite = [spot_export.export(model, Path(args.tflite), inside, card, say=say)]
        if args.int8:
            lite.append(spot_export.export(model, Path(args.int8), inside, card, quantisation="int8",
                                           representative=train["x"][:200].astype("float32"), say=say))
        outside_x = outside["x"].astype("float32")
        outside_errors = spot_export.frame_errors(
            spot_export.spotnet.stack_model(model).predict(outside_x, batch_size=32, verbose=0), outside)
        say(f"held-out column and scene: centre error median {outside_errors['median_px']:.2f} px, "
            f"p99 {outside_errors['p99_px']:.2f} px")
        for item in lite:
            path = Path(item["file"])
            data = json.loads(path.with_suffix(".json").read_text())
            data["metrics"]["held_out_outside"] = outside_errors
            path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        report["export"] = lite
        report["held_out_outside"] = outside_errors
    report["total_s"] = time.monotonic() - started
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    say(f"done in {report['total_s'] / 60:.1f} min -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
