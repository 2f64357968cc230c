#!/usr/bin/env python3
"""Time the twin's frame rendering and the spot measurement per camera size (medians of one run).

    .venv/bin/python tools/bench_twin.py [--sizes 256 512 4096] [--repeats 50] [--json out.json]
    .venv/bin/python tools/bench_twin.py --traced [--repeats 100] [--json out.json]

--traced times `Twin.acquire` of a 256 px frame (default rendering: texture, noise, hot pixels)
with traced optics through a 3 % wobble 240 units off the axis, for every column under the
default scene and for every scene on the reference column, pinned to one core: the figure
training sets of tens of thousands of stacks on 2 cores depend on."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from temalign import optics
from temalign.clock import SteppedClock
from temalign.estimate.spots import measure_spot
from temalign_twin.cli import build_settings
from temalign_twin.columns import COLUMNS
from temalign_twin.model import Twin
from temalign_twin.scenes import SCENES
from temalign_twin.settings import TwinSettings


def bench(size: int, repeats: int, seed: int) -> dict[str, float]:
    twin = Twin(TwinSettings().updated({"camera": {"width": size, "height": size}}), SteppedClock(), seed)
    twin.acquire()  # the first frame builds the specimen texture
    render, measure = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        frame = twin.acquire()
        mid = time.perf_counter()
        measure_spot(frame)
        render.append(mid - start)
        measure.append(time.perf_counter() - mid)
    return {"size": size, "repeats": repeats, "acquire_ms_median": 1e3 * float(np.median(render)),
            "measure_spot_ms_median": 1e3 * float(np.median(measure))}


def bench_traced(column: str, scene: str, repeats: int, seed: int) -> float:
    """Median ms of one traced 256 px frame through a wobble at 240 units."""
    settings = build_settings("default", None, [], optics="traced", column_name=column, scene_name=scene)
    twin = Twin(settings, SteppedClock(), seed)
    a = np.round(twin.aligned()).astype(int)
    twin.move_aperture(int(a[0] + 170), int(a[1] - 170))
    values = optics.wobble_values(settings.optics.c_f, 0.03)
    twin.acquire()  # builds the scene
    times = []
    for k in range(repeats):
        twin.set_c1(float(values[k % len(values)]))
        twin.advance(settings.lens.settle_s)
        start = time.perf_counter()
        twin.acquire()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 4096])
    parser.add_argument("--repeats", type=int, default=50, help="frames per size (4096: a tenth)")
    parser.add_argument("--traced", action="store_true",
                        help="traced optics per column and scene at 256 px, on one core")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    if args.traced:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        cases = [(c, "specimen") for c in COLUMNS] + [("reference", s) for s in SCENES if s != "specimen"]
        for column, scene in cases:
            ms = bench_traced(column, scene, args.repeats, args.seed)
            rows.append({"column": column, "scene": scene, "repeats": args.repeats, "acquire_ms_median": ms})
            print(f"{column:22s} {scene:21s} {ms:6.2f} ms per 256 px frame "
                  f"(median of {args.repeats}, one core)")
    else:
        for size in args.sizes:
            row = bench(size, max(3, args.repeats // 10) if size > 1024 else args.repeats, args.seed)
            rows.append(row)
            print(f"{size:5d} px: acquire {row['acquire_ms_median']:.1f} ms, "
                  f"measure_spot {row['measure_spot_ms_median']:.1f} ms (median of {row['repeats']})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": platform.platform(), "processor": platform.processor(),
                       "date": time.strftime("%Y-%m-%d"), "results": rows}, out, indent=2)


if __name__ == "__main__":
    main()
