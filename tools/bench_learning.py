#!/usr/bin/env python3
"""The column teaches the model, end to end on the twin (issue 14's proof; docs/models.md).

One traced column and scene, one drift (the twin's drift depends on its seed and twin time only),
three days of twin time with the daemon's real cycle, scheduling policy and stack store, and a
holography user who re-aligns by eye every two hours, says `temalign reference set` (a reference
labels the stacks of the next quarter hour, docs/learning.md) and clears a hold if there is one:

  day 1   the twin-trained model live; every full wobble kept, verified corrections labelled;
          then `temalign learn` (tools/learn.py) on what the store holds;
  day 2   the parent still live, the candidate in shadow on every stack (service.lifecycle);
          then `temalign model promote`, which the shadow's evidence allows or refuses;
  day 3   whichever model the promotion left live.

A control run meets the same drift with the parent live all three days, so day 3 is compared on
the very same drift: the fraction of time within 20 units and the RMS misalignment, from the truth
sampled as the clock moves (benchkit.session). Writes learning.json and prints the figures.

    .venv/bin/python tools/bench_learning.py --column high-mag-contaminated \\
        --scene stigmated-holography --hours 24 --out bench-out/learning"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/bench_learning.py", "train", "keras", "tensorflow")

import learn  # noqa: E402
import numpy as np  # noqa: E402
from benchkit.column_store import labelled_store  # noqa: E402
from benchkit.harness import SHIPPED_MODEL, SimColumn, sim_column  # noqa: E402
from benchkit.session import PERSON_SIGMA_UNITS, Sampler, daemon_run  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from temalign.record.metrics import Metrics  # noqa: E402
from temalign.record.stacks import StackStore  # noqa: E402
from temalign.service.lifecycle import ModelLifecycle, Refused  # noqa: E402
from temalign_twin.cli import optics_overrides  # noqa: E402

BAND_UNITS = 20.0


def window(sampler: Sampler, start: float, end: float) -> dict[str, float]:
    """Time-weighted figures of the true |m| between `start` and `end` (twin seconds)."""
    t = np.asarray([*sampler.times, end])
    m = np.asarray(sampler.values)
    held = np.clip(np.minimum(t[1:], end) - np.maximum(t[:-1], start), 0.0, None)
    total = float(held.sum())
    return {"within_20_fraction": round(float(held[m <= BAND_UNITS].sum() / total), 4),
            "rms_units": round(float(np.sqrt((held * m * m).sum() / total)), 2),
            "worst_units": round(float(m[held > 0].max()), 1)}


def person_aligns(col: SimColumn, rng: np.random.Generator) -> bool:
    """A holography user re-aligns by eye (PERSON_SIGMA_UNITS per axis, as benchkit.session's person),
    says `temalign reference set` (what service.verbs.reference_set records) and clears a hold if
    the daemon is in one (service.verbs.hold_clear); True when there was a hold to clear."""
    dx, dy = rng.normal(0.0, PERSON_SIGMA_UNITS, size=2)
    where = col.offset(float(dx), float(dy))
    held = col.parts.state.load(col.settings.schedule.mode).hold is not None
    col.parts.state.update(reference=where, reference_set_by="person", last_position=where, hold=None)
    col.parts.failure_count.success()
    col.parts.journal.append("reference", position=where, set_by="person")
    return held


def day(col: SimColumn, seed: int, start: float, end: float, person_every_s: float,
        rng: np.random.Generator) -> dict[str, Any]:
    """The daemon from `start` to `end` (twin seconds), a person re-aligning every `person_every_s`
    (0: never); its cycles, corrections and refusals."""
    totals: dict[str, Any] = {"cycles": 0, "corrections": 0, "refusals": {}, "person_alignments": 0,
                              "holds_cleared": 0}
    marks = list(np.arange(start, end, person_every_s)[1:]) if person_every_s > 0 else []
    for stop in [*marks, end]:
        log = daemon_run(col, seed, float(stop))
        totals["cycles"] += log["cycles"]
        totals["corrections"] += log["corrections"]
        for reason, n in log["refusals"].items():
            totals["refusals"][reason] = totals["refusals"].get(reason, 0) + n
        if stop != end:
            totals["holds_cleared"] += person_aligns(col, rng)
            totals["person_alignments"] += 1
    return totals


def run(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    length = args.hours * 3600.0
    every = args.person_every_h * 3600.0
    twin = optics_overrides("traced", args.column, args.scene)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"column": args.column, "scene": args.scene, "seed": args.seed,
                              "hours_per_day": args.hours}

    say(f"control: the parent live for 3 x {args.hours:g} h")
    with sim_column(args.seed, overrides={"schedule": {"mode": "live"}}, twin_overrides=twin,
                    model=Path(args.model)) as col:
        sampler = Sampler(col)
        sampler.install()
        rng = np.random.default_rng([args.seed, 7])
        record["control"] = {}
        for k in (1, 2, 3):
            said = day(col, args.seed, length * (k - 1), length * k, every, rng)
            record["control"][f"day{k}"] = {**window(sampler, length * (k - 1), length * k), **said}
    say(f"control: {json.dumps(record['control'])}")

    with sim_column(args.seed, overrides={"schedule": {"mode": "live"}}, twin_overrides=twin,
                    model=Path(args.model)) as col:
        sampler = Sampler(col)
        sampler.install()
        store_dir = out / "stacks"
        col.parts.stacks = StackStore(store_dir, max_bytes=2_000_000_000, min_free_bytes=0)
        say(f"day 1: the parent live, every full wobble kept in {store_dir}")
        started = time.monotonic()
        rng = np.random.default_rng([args.seed, 7])
        day1 = day(col, args.seed, 0.0, length, every, rng)
        record["day1"] = {**window(sampler, 0.0, length), **day1,
                          "wall_s": round(time.monotonic() - started)}
        say(f"day 1: {json.dumps(record['day1'])}")

        candidate = out / "candidate.tflite"
        learn_argv = ["--store", str(store_dir), "--model", str(args.model), "--out", str(candidate),
                      "--steps", str(args.steps), "--evaluate-stacks", str(args.evaluate_stacks),
                      "--min-stacks", "4", *(["--twin-cache", args.twin_cache] if args.twin_cache else [])]
        started = time.monotonic()
        if learn.main(learn_argv) != 0:
            raise SystemExit("bench_learning: learn refused (above)")
        card = json.loads(candidate.with_suffix(".json").read_text())
        record["learn"] = {"command": shlex.join(["tools/learn.py", *learn_argv]),
                           "wall_s": round(time.monotonic() - started), "evidence": card["evidence"],
                           "evaluation_rmse_percent": card.get("evaluation", {}).get("rmse_percent")}

        col.parts.stacks = None
        lifecycle = ModelLifecycle(col.settings, "raw", Metrics(CollectorRegistry()))
        say(f"day 2: {lifecycle.start_shadow(col.parts, str(candidate.resolve()), col.clock.now())}")
        day2 = day(col, args.seed, length, 2 * length, every, rng)
        shadow = col.parts.shadow
        assert shadow is not None
        record["day2"] = {**window(sampler, length, 2 * length), **day2,
                          "shadow_evidence": shadow.evidence.to_json()}
        try:
            said = lifecycle.promote(col.parts, col.clock.now(), "bench_learning")
            record["promotion"] = {"promoted": True, "said": said}
        except Refused as refused:
            record["promotion"] = {"promoted": False, "said": str(refused)}
        say(f"day 2: {json.dumps(record['day2'])}; {record['promotion']['said']}")
        day3 = day(col, args.seed, 2 * length, 3 * length, every, rng)
        record["day3"] = {**window(sampler, 2 * length, 3 * length), **day3,
                          "live_model": col.parts.estimator.model.path.name}
        say(f"day 3: {json.dumps(record['day3'])}")
    return record


def cost(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """How long `temalign learn` takes on a store of `args.cost_stacks` labelled stacks of the cell
    (benchkit.column_store: the twin's truth as a person's exact reference)."""
    out = Path(args.out)
    started = time.monotonic()
    store = labelled_store(out / "cost-stacks", args.column, args.scene, args.cost_stacks, seed=args.seed)
    filled_s = time.monotonic() - started
    say(f"{args.cost_stacks} labelled stacks in {store} in {filled_s:.0f} s")
    candidate = out / "cost-candidate.tflite"
    learn_argv = ["--store", str(store), "--model", str(args.model), "--out", str(candidate),
                  "--steps", str(args.steps), "--evaluate-stacks", str(args.evaluate_stacks),
                  *(["--twin-cache", args.twin_cache] if args.twin_cache else [])]
    started = time.monotonic()
    if learn.main(learn_argv) != 0:
        raise SystemExit("bench_learning: learn refused (above)")
    card = json.loads(candidate.with_suffix(".json").read_text())
    return {"column": args.column, "scene": args.scene, "stacks": args.cost_stacks,
            "learn_command": shlex.join(["tools/learn.py", *learn_argv]),
            "learn_wall_s": round(time.monotonic() - started), "fill_s": round(filled_s),
            "evidence": card["evidence"]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--column", default="high-mag-contaminated")
    p.add_argument("--scene", default="stigmated-holography")
    p.add_argument("--hours", type=float, default=24.0, help="twin hours per day (default 24)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--person-every-h", type=float, default=2.0,
                   help="a person re-aligns by eye and sets the reference this often (0: never; default 2)")
    p.add_argument("--model", default=str(SHIPPED_MODEL), help="the parent (default: the shipped model)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--evaluate-stacks", type=int, default=20)
    p.add_argument("--twin-cache", default=None)
    p.add_argument("--out", default="bench-out/learning")
    p.add_argument("--cost-stacks", type=int, default=0, metavar="N",
                   help="instead of the three days: the time `temalign learn` takes on a store of N labelled "
                        "stacks of the cell (learning-cost.json)")
    args = p.parse_args(argv)
    started = time.monotonic()
    say = lambda line: print(line, flush=True)  # noqa: E731
    if args.cost_stacks:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        record = cost(args, say)
        record["command"] = shlex.join(["tools/bench_learning.py", *argv])
        (Path(args.out) / "learning-cost.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"learn on {args.cost_stacks} stacks: {record['learn_wall_s']} s; wrote "
              f"{Path(args.out) / 'learning-cost.json'}", flush=True)
        return 0
    record = run(args, say)
    record["command"] = shlex.join(["tools/bench_learning.py", *argv])
    record["wall_s"] = round(time.monotonic() - started)
    (Path(args.out) / "learning.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {Path(args.out) / 'learning.json'} in {record['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
