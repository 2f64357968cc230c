#!/usr/bin/env python3
"""Time the twin's frame rendering and the spot measurement per camera size (medians of one run).

    .venv/bin/python tools/bench_twin.py [--sizes 256 512 4096] [--repeats 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from temalign.clock import SteppedClock
from temalign.estimate.spots import measure_spot
from temalign_twin.model import Twin
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 4096])
    parser.add_argument("--repeats", type=int, default=50, help="frames per size (4096: a tenth)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    rows = []
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
