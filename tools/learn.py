#!/usr/bin/env python3
"""temalign learn: fine-tune the live spot model on this column's own labelled stacks (issue 14).

The daemon keeps every full wobble in its stack store, and labels a stack once its right answer is
known: a person's `temalign reference set`, or a correction the verification confirmed
(docs/learning.md). This tool reads those stacks, holds the newest out, fine-tunes the model on the
rest with the twin's stacks mixed in (so that it stays a model of every column, not of this one:
trainkit.column_learning), and writes a candidate .tflite with its card:

* evidence: the parent and the candidate on the held-out column stacks, both through the daemon's
  own path (preprocessing, LiteRT on one thread, the walk, the calibration stored with the stack),
  and on the twin's frames;
* evaluation: the daemon's model gate's figures on the traced twin's sets (benchkit.evaluation), so
  the candidate can be put in shadow (`temalign model shadow OUT`) and promoted on the column's own
  evidence (`temalign model promote`).

Needs the [train] extra. On 2 cores, a store of 500 labelled stacks took 1.7 min (the fine-tuning,
the conversion and the evaluation; docs/models.md), plus about a minute to render the twin's
stacks the first time (--twin-cache keeps them).

Example:
  tools/learn.py --store /var/lib/temalign/stacks --out /var/lib/temalign/learnt/spotnet-col.tflite
  temalign model shadow /var/lib/temalign/learnt/spotnet-col.tflite"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the console
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/learn.py", "train", "keras", "tensorflow")

import numpy as np  # noqa: E402 (after the extra's check)
from benchkit.evaluation import add_limit_argument, all_sets, evaluate_into_card  # noqa: E402
from trainkit import column_learning, column_stacks, spot_data, spot_export, traced_sets  # noqa: E402
from trainkit.tflite_weights import spotnet_from_tflite  # noqa: E402

from temalign import shipped  # noqa: E402
from temalign.estimate import card as cards  # noqa: E402
from temalign.estimate.model_estimator import ModelError, ModelEstimator  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, nargs="+", metavar="DIR",
                   help="the daemon's stack store (store.dir; default paths.state_dir/stacks), or several "
                        "(columns, or the twin's cells: tools/tune_spotnet.py), each split on its own")
    p.add_argument("--model", default=str(shipped.default_model()),
                   help="the model to start from: the live one (default: the shipped spotnet)")
    p.add_argument("--out", required=True, help="the candidate .tflite to write (its card beside it)")
    p.add_argument("--held-out-fraction", type=float, default=0.2,
                   help="the newest stacks held out for the evidence (default 0.2)")
    p.add_argument("--min-stacks", type=int, default=10,
                   help="refuse with fewer labelled stacks (default 10)")
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps (default 400)")
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--twin-stacks", type=int, default=300,
                   help="the twin's stacks mixed in, wide draws (default 300)")
    p.add_argument("--twin-check-stacks", type=int, default=60,
                   help="twin stacks of another seed, not learnt from, on which the candidate's frames are "
                        "checked against the parent's and its conversion against Keras (default 60)")
    p.add_argument("--twin-seed", type=int, default=21)
    p.add_argument("--twin-cache", default=None, metavar="F.npz", help="keep the rendered twin stacks here")
    p.add_argument("--evaluate-stacks", type=int, default=20, metavar="N",
                   help="stacks per traced set of the gate's evaluation (default 20; 0: not evaluated, and "
                        "the daemon refuses the candidate until tools/evaluate.py has evaluated it)")
    add_limit_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None,
                   help="the candidate's name in its card (default: the parent's name and -learnt)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: every core)")
    return p


def say(text: str) -> None:
    print(text, flush=True)


def fail(text: str) -> int:
    print(f"learn: {text}", file=sys.stderr)
    return 2


def held_out_figures(deltas: np.ndarray, stacks: list[column_stacks.Labelled]) -> dict[str, object]:
    """RMS distance (units and % of 1000 units) of a model's daemon-path deltas from the labels."""
    labels = np.asarray([s.label for s in stacks], dtype=np.float64)
    rms = column_learning.rms_units(deltas, labels)
    answered = int(np.isfinite(deltas).all(axis=1).sum())
    return {"stacks": len(stacks), "answered": answered, "rms_units": round(rms, 3),
            "rmse_percent": round(rms / 10.0, 4)}


def parent_width(card: dict[str, object], model: Path) -> int:
    """The parent's inner width; ValueError when it is not a spot network learn can fine-tune."""
    if card.get("output") != "spots":
        raise ValueError(f"{model}: learn fine-tunes a spot model (card output 'spots'), this one gives "
                         f"{card.get('output', 'delta')!r}")
    training = card.get("training")
    width = training.get("width", 16) if isinstance(training, dict) else 16
    variant = training.get("variant", "plain") if isinstance(training, dict) else "plain"
    if not isinstance(width, int) or variant != "plain":
        raise ValueError(f"{model}: learn fine-tunes the plain spot network (trainkit.spotnet)")
    return width


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    started = time.monotonic()
    parent, out = Path(args.model), Path(args.out)
    if not (0.0 < args.held_out_fraction < 1.0 and args.steps >= 1 and args.twin_stacks >= 10
            and args.twin_check_stacks >= 2 and args.min_stacks >= 2):
        return fail("--held-out-fraction must lie in (0, 1), --steps be 1 or more, --twin-stacks 10 or more, "
                    "--twin-check-stacks and --min-stacks 2 or more")
    if out.resolve() == parent.resolve():
        return fail(f"--out {out} is the model learnt from: write the candidate elsewhere")
    try:
        live = ModelEstimator(parent)
        width = parent_width(live.card, parent)
        stores = [column_stacks.labelled_stacks(store, say) for store in args.store]
    except (ModelError, ValueError, OSError) as error:
        return fail(str(error))
    stacks = [s for store in stores for s in store]
    if len(stacks) < args.min_stacks:
        return fail(f"{len(stacks)} labelled stacks in {', '.join(args.store)}, fewer than --min-stacks "
                    f"{args.min_stacks}: "
                    "let the daemon verify more corrections (or set a reference after aligning by hand)")
    try:
        parts = [column_stacks.split(store, args.held_out_fraction) for store in stores]
    except ValueError as error:
        return fail(str(error))
    learn_from = [s for part in parts for s in part[0]]
    held = [s for part in parts for s in part[1]]
    say(f"learning from {len(learn_from)} stacks, holding out the newest {len(held)}")
    before = held_out_figures(column_stacks.daemon_deltas(parent, held), held)
    say(f"parent {parent.name} on the held-out column stacks (the daemon's path): {before['rms_units']} "
        "units "
        f"RMS ({before['answered']}/{before['stacks']} answered)")

    conds = traced_sets.conditions(args.twin_stacks, args.twin_seed, wide=True,
                                   hold_out_column=traced_sets.HOLD_OUT_COLUMN,
                                   hold_out_scene=traced_sets.HOLD_OUT_SCENE)
    twin = spot_data.load_or_build("twin stacks", conds, args.twin_seed, args.workers,
                                   Path(args.twin_cache) if args.twin_cache else None, say)
    twin_check_conds = traced_sets.conditions(args.twin_check_stacks, args.twin_seed + 1,
                                              hold_out_column=traced_sets.HOLD_OUT_COLUMN,
                                              hold_out_scene=traced_sets.HOLD_OUT_SCENE)
    twin_check = spot_data.load_or_build("twin stacks to check against", twin_check_conds, args.twin_seed + 1,
                                         args.workers, None, say)
    preprocess = str(live.card["preprocess"])
    column = column_stacks.column_set(learn_from, preprocess)
    held_set = column_stacks.column_set(held, preprocess)
    model = spotnet_from_tflite(parent, width)
    twin_before = spot_export.frame_errors(spot_export.spotnet.stack_model(model).predict(
        twin_check["x"].astype(np.float32), batch_size=32, verbose=0), twin_check)
    t0 = time.monotonic()
    cfg = column_learning.Learning(steps=args.steps, learning_rate=args.learning_rate, seed=args.seed)
    history = column_learning.fine_tune(model, column, twin, cfg, held_out=held_set, say=say)
    learn_s = time.monotonic() - t0

    name = args.name or f"{live.card.get('model', {}).get('name', parent.stem)}-learnt"
    date = datetime.now(UTC).date().isoformat()
    command = shlex.join(["tools/learn.py", *argv])
    kinds = {k: sum(1 for s in learn_from if s.kind == k) for k in column_stacks.LABEL_KINDS}
    card = {key: live.card[key] for key in ("output", "preprocess", "input_shape", "frames", "wobble_range",
                                            "c0_over_cf_range") if key in live.card}
    card["training"] = {
        "datasets": [f"column stacks: {len(learn_from)} from {', '.join(args.store)} ({kinds['reference']} "
                     f"labelled by a person's reference, {kinds['verified']} by verified corrections)",
                     f"traced twin, wide draws: {args.twin_stacks} stacks, seed {args.twin_seed} (mixed in)"],
        "parent": {"file": parent.name, "fingerprint": live.fingerprint,
                   "training": live.card.get("training")},
        "width": width, "variant": "plain", "steps": args.steps, "learning_rate": args.learning_rate,
        "seed": args.seed, "date": date, "learn_s": round(learn_s), "command": command,
        "held_out_loss_curve": history["held_out_rms_units"]}
    card["metrics"] = {"held_out_outside": {}}
    export = spot_export.export(model, out, twin_check, card, name=name, say=say)
    after = held_out_figures(column_stacks.daemon_deltas(out, held), held)
    evidence = {"column_held_out": {"parent": before, "candidate": after,
                                    "ids": [s.stored.id for s in held],
                                    "through": "the daemon's path (preprocessing, LiteRT, the walk, the "
                                               "calibration stored with each stack; the candidate with the "
                                               "classical M, as it runs in shadow)"},
                "twin_frames": {"parent": twin_before, "candidate": export["litert"]},
                "column_stacks_learnt": len(learn_from), "learn_s": round(learn_s)}
    written = json.loads(cards.card_path(out).read_text())
    written["evidence"] = evidence
    cards.write_card(out, {k: v for k, v in written.items() if k != "card_version"})
    say(f"held-out column stacks ({len(held)}): parent {before['rms_units']} units RMS, candidate "
        f"{after['rms_units']} units RMS (the daemon's path)")
    say(f"twin frames: centre error median parent {twin_before['median_px']:.2f} px, candidate "
        f"{export['litert']['median_px']:.2f} px")
    evaluate_into_card(out, args.evaluate_stacks, all_sets(), command=command, limit=args.limit, say=say)
    say(f"done in {(time.monotonic() - started) / 60:.1f} min -> {out}; next: temalign model shadow "
        f"{out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
