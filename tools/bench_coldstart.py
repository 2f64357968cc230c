#!/usr/bin/env python3
"""Cold-start convergence (issue 5, item 2): random starts uniform in a disc around the aligned
position, each on a fresh column and a fresh daemon (its own seed), cycles until |m| <= 20.

    .venv/bin/python tools/bench_coldstart.py [--n 200 --radius 240] [--n-far 50 --radius-far 400]
        [--out bench-out] [--jobs 2] [--set safety.gain=1.0]
        [--optics traced --column low-mag-mirrored --scene holography]

Target: within 2 cycles in >= 99 % of the 240-unit starts, never a move outside the envelope.
Writes coldstart.json (every start: seed, distance, cycles, outcomes) and coldstart.png."""

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

from benchkit.coldstart import MAX_CYCLES, cold_start
from benchkit.session import parse_set, twin_choice

from temalign_twin.cli import add_optics_arguments

TARGET_WITHIN_2 = 0.99


def _one(args: tuple[int, float, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    seed, radius, sets, twin = args
    record = cold_start(seed, radius, schedule=sets.get("schedule"), safety=sets.get("safety"),
                        twin_overrides=twin or None)
    if record["cycles"] is None or record["cycles"] > 2 or record["violations"]:
        print(f"radius {record['radius']:.0f} seed {record['seed']}: "
              f"start {record['start_units']:.0f} units, cycles {record['cycles']}, "
              f"{[s['outcome'] for s in record['steps']]}", flush=True)
    return record


def distribution(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of cycles needed (`never` past MAX_CYCLES), the share within 1 and 2, the failures."""
    counts = Counter("never" if r["cycles"] is None else str(r["cycles"]) for r in records)
    n = len(records)
    done = [r["cycles"] for r in records if r["cycles"] is not None]
    within = {k: sum(1 for c in done if c <= k) / n for k in (1, 2, 3)}
    failures = [{"seed": r["seed"], "start_units": r["start_units"], "cycles": r["cycles"],
                 "outcomes": [s["outcome"] for s in r["steps"]]} for r in records
                if r["cycles"] is None or r["cycles"] > 2]
    return {"n": n, "cycles": dict(sorted(counts.items())), "within_1": within[1], "within_2": within[2],
            "within_3": within[3], "violations": sum(len(r["violations"]) for r in records),
            "beyond_2": failures}


def plot(groups: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Cycles needed against the starting distance, per disc."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for (name, records), marker in zip(groups.items(), "ox", strict=False):
        xs = [r["start_units"] for r in records]
        ys = [MAX_CYCLES + 1 if r["cycles"] is None else r["cycles"] for r in records]
        ax.scatter(xs, ys, s=10, marker=marker, label=name, alpha=0.6)
    ax.set_xlabel("start |m| (units)")
    ax.set_ylabel("cycles to |m| <= 20")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the starts, print the failures as they come, write the JSON and the PNG."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="starts within --radius (default 200)")
    ap.add_argument("--radius", type=float, default=240.0)
    ap.add_argument("--n-far", type=int, default=50, help="starts within --radius-far (default 50)")
    ap.add_argument("--radius-far", type=float, default=400.0)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a safety or schedule setting (repeatable)")
    ap.add_argument("--no-plot", action="store_true")
    add_optics_arguments(ap)
    args = ap.parse_args(argv)
    sets = parse_set(args.set)
    twin = twin_choice(ap, args)
    if args.n < 1 or args.n_far < 0 or args.radius <= 0 or args.radius_far <= 0:
        ap.error("--n >= 1, --n-far >= 0, radii > 0")
    plan = [(args.first_seed + i, args.radius, sets, twin) for i in range(args.n)]
    plan += [(args.first_seed + args.n + i, args.radius_far, sets, twin) for i in range(args.n_far)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        records = list(pool.map(_one, plan, chunksize=4))
    elapsed = time.perf_counter() - started
    groups = {f"within {args.radius:g}": [r for r in records if r["radius"] == args.radius]}
    if args.n_far:
        groups[f"within {args.radius_far:g}"] = [r for r in records if r["radius"] == args.radius_far]
    summary = {name: distribution(rs) for name, rs in groups.items()}
    main_group = summary[f"within {args.radius:g}"]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plot:
        plot(groups, args.out / "coldstart.png")
    result = {
        "benchmark": "coldstart", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "overrides": sets, "twin": twin, "target_within_2": TARGET_WITHIN_2,
        "meets": main_group["within_2"] >= TARGET_WITHIN_2
        and all(s["violations"] == 0 for s in summary.values()),
        "wall_s": round(elapsed, 1), "summary": summary, "starts": records,
    }
    (args.out / "coldstart.json").write_text(json.dumps(result, indent=1))
    for name, s in summary.items():
        print(f"{name}: n {s['n']}, cycles {s['cycles']}, within 1: {100 * s['within_1']:.1f} %, "
              f"within 2: {100 * s['within_2']:.1f} %, within 3: {100 * s['within_3']:.1f} %, "
              f"violations {s['violations']}")
    print(f"target (within 2 in >= 99 % of the {args.radius:g}-unit starts, no violation): "
          f"{'met' if result['meets'] else 'MISSED'}; {len(records)} starts in {elapsed:.0f} s; "
          f"wrote {args.out / 'coldstart.json'}")
    return 0 if result["meets"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
