#!/usr/bin/env python3
"""The architecture study of docs/models.md (the paper's Fig. 5/6, Fig. 8 and Table 2 on the twin),
sized to a 2-core machine: every registered paper variant and our own design, trained with
repeated seeded runs on N 10/13 (80/20 split), tested on the held-out 20 % and on the sets it never
saw, then converted to float32 .tflite and timed with LiteRT on one thread.

    .venv/bin/python tools/study.py [--models paper_cnn wobble_physics ...] [--runs 3]
        [--epochs 15] [--input-size 128] [--sizes 0.25 0.5] [--out runs/study]

Writes runs/study/<model>/ (train.py's folders) and runs/study/study.json, and prints the markdown
table. Labels are the twin's truth (a* - a) for every model, so no architecture is charged for the
drift during acquisition."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/study.py", "train", "keras", "tensorflow", "matplotlib")

from trainkit import models  # noqa: E402 (after the check that says which extra is missing)
from trainkit.conversion import convert, latency  # noqa: E402
from trainkit.training import TrainConfig, train  # noqa: E402

TRAIN = ["data/n10.npz", "data/n13.npz"]
EVAL = ["data/n14.npz", "data/n6.npz", "data/far.npz", "data/low-dose.npz", "data/large-aperture.npz"]
PAPER = ["paper_cnn", "paper_fc", "paper_dropout", "paper_batchnorm", "paper_conv_deep", "paper_conv_shallow",
         "paper_dense_deep", "paper_dense_shallow", "paper_tanh", "paper_sigmoid", "paper_leakyrelu",
         "paper_final"]
OWN = {"wobble_physics": {"preprocess": "temalign.estimate.preprocess:physics_128", "scaling": "fixed",
                          "loss": "huber", "learning_rate": 3e-4, "epochs": 5},
       "tiny_cnn64": {"preprocess": "temalign.estimate.preprocess:standard_64", "scaling": "fixed"}}
"""Our designs' own settings (the shipped model's are those of `make model`)."""


def study_one(name: str, args: argparse.Namespace) -> dict:
    own = OWN.get(name, {})
    cfg = TrainConfig(
        data=TRAIN, out=str(Path(args.out) / name), model=name, epochs=own.get("epochs", args.epochs),
        runs=args.runs, seed=args.seed, input_size=args.input_size, preprocess=own.get("preprocess"),
        label="truth", scaling=own.get("scaling", "minmax"), loss=own.get("loss", "mse"),
        learning_rate=own.get("learning_rate"), sizes=args.sizes if name in args.size_models else [],
        eval_on=EVAL, verbose=not args.quiet, command=" ".join(sys.argv))
    summary = train(cfg)
    model = models.load_keras(summary["best_model"])
    tflite = convert(model, "float32")
    speed = latency(tflite, repeats=args.latency_repeats, num_threads=1)
    row = {"model": name, "params": summary["params"], "input_shape": summary["input_shape"],
           "preprocess": summary["preprocess"], "epochs": cfg.epochs, "runs": cfg.runs,
           "test_rmse_percent": summary["test_rmse_percent"], "test_p99_percent": summary["test_p99_percent"],
           "training_time_s": summary["training_time_s"], "tflite_bytes": len(tflite),
           "latency_p50_ms": speed["p50"],
           "eval_on": {Path(e["file"]).stem: {"rmse_percent": e["rmse_percent"]["median"],
                                              "p99_percent": e["p99_percent"]["median"]}
                       for e in summary["eval_on"]},
           "sizes": summary.get("sizes", [])}
    return row


def table(rows: list[dict]) -> str:
    sets = list(rows[0]["eval_on"]) if rows else []
    head = ["model", "params", "input", "test RMSE median (IQR)", "test p99", *sets, ".tflite MB",
            "LiteRT p50 ms", "training s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        t = r["test_rmse_percent"]
        cells = [f"`{r['model']}`", f"{r['params']:,}", "x".join(map(str, r["input_shape"][:2])),
                 f"{t['median']:.2f} ({t['iqr']:.2f})", f"{r['test_p99_percent']['median']:.2f}",
                 *(f"{r['eval_on'][s]['rmse_percent']:.2f}" for s in sets),
                 f"{r['tflite_bytes'] / 1e6:.2f}", f"{r['latency_p50_ms']:.2f}",
                 f"{r['training_time_s']['median']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[*PAPER, *OWN])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=15, help="for the paper's models (ours: OWN)")
    p.add_argument("--input-size", type=int, default=128, choices=(64, 128, 256))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", nargs="+", type=float, default=[0.25, 0.5], help="Fig. 8 fractions")
    p.add_argument("--size-models", nargs="+", default=["paper_final", "wobble_physics"])
    p.add_argument("--latency-repeats", type=int, default=50)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for path in (*TRAIN, *EVAL):
        if not Path(path).exists():
            print(f"study: {path} is missing (make datasets)", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    for i, name in enumerate(args.models):
        print(f"== {name} ({i + 1}/{len(args.models)}, {time.perf_counter() - t0:.0f} s so far)", flush=True)
        rows.append(study_one(name, args))
        (out / "study.json").write_text(json.dumps(
            {"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
             "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(table(rows))
    for r in rows:
        for s in r["sizes"]:
            print(f"size {r['model']} {s['fraction']:g} ({s['train_samples']} samples): "
                  f"{s['test_rmse_percent']['median']:.2f} %")
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
