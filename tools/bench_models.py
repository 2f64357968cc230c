#!/usr/bin/env python3
"""Size and LiteRT speed of each registered model, untrained (medians of one run, one thread).

    .venv/bin/python tools/bench_models.py [--models paper_cnn paper_final ...] [--side 256]
        [--quantisations float32 dynamic-int8] [--json out.json]

Accuracy needs training (tools/train.py); this measures what does not: parameters, .tflite size
and LiteRT time per stack, for the table in docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from trainkit.conversion import QUANTISATIONS, convert, latency
from trainkit.models import build, model_names


def bench(name: str, side: int, quantisations: list[str], repeats: int) -> dict:
    model = build(name, (side, side, 7))
    row: dict = {"model": name, "input": [side, side, 7], "params": int(model.count_params())}
    for quantisation in quantisations:
        tflite = convert(model, quantisation)
        speed = latency(tflite, repeats=repeats, num_threads=1)
        row[quantisation] = {"bytes": len(tflite), "p50_ms": speed["p50"], "p90_ms": speed["p90"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--side", type=int, default=256, help="input frames are SIDE x SIDE x 7")
    parser.add_argument("--quantisations", nargs="+", default=["float32", "dynamic-int8"],
                        choices=[q for q in QUANTISATIONS if q != "int8"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    rows = []
    for name in args.models or model_names():
        row = bench(name, args.side, args.quantisations, args.repeats)
        rows.append(row)
        cells = ", ".join(f"{q} {row[q]['bytes'] / 1e6:.2f} MB {row[q]['p50_ms']:.2f} ms"
                          for q in args.quantisations)
        print(f"{name:22s} {row['params']:>10,d} params  {cells}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
                       "results": rows}, out, indent=2)


if __name__ == "__main__":
    main()
