#!/usr/bin/env python3
"""Tune the spot network on whole stacks of the traced twin, through the daemon's walk (issue 13).

train_spotnet.py teaches the network each frame's spot. What the daemon needs is the walk through
the spots, mapped through a column's calibration; a bias in where the network puts the spot of a
cut or fringed disc, the same on every frame, survives a good per-frame score and shows up as a
wrong delta on the hard scenes. This stage tunes the frame model on what the daemon makes of a
whole stack, exactly as `temalign learn` tunes it on a column's own stacks (tools/learn.py,
trainkit.column_learning): on every named traced column but the held-out one, in every scene but
the held-out one, `--stacks-per-cell` stacks are taken as the daemon takes them (its wobble, the
calibration it measures there) and labelled with the twin's truth (benchkit.column_store), the
newest sixth of each cell held out for the evidence; the twin's per-frame set is mixed in as
learn mixes it.

Example (what `make model` runs after train_spotnet.py; about 5 min on 2 cores):
  tools/tune_spotnet.py --model runs/spotnet/spotnet-frames.tflite \\
      --out daemon/temalign/models/spotnet.tflite --stores data/tune-stores"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/tune_spotnet.py", "train", "keras", "tensorflow")

import learn  # noqa: E402
from benchkit.column_store import labelled_store  # noqa: E402
from trainkit import traced_sets  # noqa: E402

from temalign.estimate import card as cards  # noqa: E402
from temalign_twin.columns import NAMED_COLUMNS  # noqa: E402
from temalign_twin.scenes import SCENES  # noqa: E402


def cells(hold_out_column: str, hold_out_scene: str) -> list[tuple[str, str]]:
    """Every named traced column and scene but the held-out ones."""
    return [(c, s) for c in NAMED_COLUMNS for s in SCENES if c != hold_out_column and s != hold_out_scene]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the frame-trained spot network (.tflite, card beside it)")
    p.add_argument("--out", required=True, help="the tuned .tflite to write (its card beside it)")
    p.add_argument("--stores", required=True, metavar="DIR",
                   help="where the cells' labelled stacks are kept (a cell already there is read back)")
    p.add_argument("--stacks-per-cell", type=int, default=60)
    p.add_argument("--radius", type=float, default=240.0, help="misalignments uniform within this (units)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=100, help="cell k's stacks are drawn with seed + k")
    p.add_argument("--twin-cache", default=None, metavar="F.npz", help="the twin's per-frame set to mix in")
    p.add_argument("--evaluate-stacks", type=int, default=0,
                   help="stacks per set of the gate's evaluation (default 0: `make model` evaluates after)")
    p.add_argument("--hold-out-column", default=traced_sets.HOLD_OUT_COLUMN)
    p.add_argument("--hold-out-scene", default=traced_sets.HOLD_OUT_SCENE)
    args = p.parse_args(argv)
    if args.stacks_per_cell < 6:
        print("tune_spotnet: --stacks-per-cell must be 6 or more (a sixth is held out)", file=sys.stderr)
        return 2
    root = Path(args.stores)
    stores: list[str] = []
    started = time.monotonic()
    todo = cells(args.hold_out_column, args.hold_out_scene)
    for k, (column, scene) in enumerate(todo):
        store = root / f"{column}--{scene}-{args.stacks_per_cell}-{args.seed + k}"
        if not store.is_dir():
            labelled_store(store.with_name(store.name + ".partial"), column, scene, args.stacks_per_cell,
                           seed=args.seed + k, radius=args.radius)
            store.with_name(store.name + ".partial").rename(store)
        stores.append(str(store))
        print(f"cell {k + 1}/{len(todo)} {column}/{scene}: {args.stacks_per_cell} stacks in {store}, "
              f"{time.monotonic() - started:.0f} s so far", flush=True)
    code = learn.main(["--store", *stores, "--model", args.model, "--out", args.out,
                       "--steps", str(args.steps), "--held-out-fraction", f"{1 / 6:.6f}",
                       "--evaluate-stacks", str(args.evaluate_stacks), "--seed", str(args.seed),
                       "--name", Path(args.out).stem,
                       *(["--twin-cache", args.twin_cache] if args.twin_cache else [])])
    if code == 0:
        say_what_was_learnt(Path(args.out), len(todo), args, shlex.join(["tools/tune_spotnet.py", *argv]))
    return code


def say_what_was_learnt(model: Path, n_cells: int, args: argparse.Namespace, command: str) -> None:
    """learn's card calls its stacks a column's, labelled by a person's reference: here they are the
    twin's, labelled with its truth; the card says so."""
    card = cards.read_card(model)
    learnt = card["evidence"]["column_stacks_learnt"]
    card["training"]["datasets"][0] = (
        f"traced twin, whole stacks through the daemon's wobble and calibration: {learnt} of "
        f"{n_cells * args.stacks_per_cell} on {n_cells} cells (every named column but "
        f"{args.hold_out_column}, every scene but {args.hold_out_scene}), {args.stacks_per_cell} a cell "
        f"within {args.radius:g} units, seeds {args.seed} to {args.seed + n_cells - 1}, labelled with the "
        "twin's truth (benchkit.column_store, tools/tune_spotnet.py); the newest sixth of each held out")
    card["training"]["held_out"] = {"column": args.hold_out_column, "scene": args.hold_out_scene}
    card["training"]["command"] = command
    cards.write_card(model, {k: v for k, v in card.items() if k != "card_version"})


if __name__ == "__main__":
    sys.exit(main())
