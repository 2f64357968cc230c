#!/usr/bin/env python3
"""The spot network's study in the paper's style: variants with repeated runs (Fig. 5: median and
spread of each), and the size of the training set (Fig. 8), on the training set `make model`
renders (its cache) and three held-out sets.

    .venv/bin/python tools/study_spotnet.py --cache data/spotnet-train-11.npz --out runs/spot-study \\
        [--variants plain:16 separable:32] [--runs 3] [--stacks 2000] [--epochs 4] \\
        [--sizes 500 1000 2000 4000]

Held-out sets (rendered once, kept in --out): `inside`, the named columns and scenes but the
held-out ones in their own layouts over the whole training range; `hard`, the daemon's own wobble
(3 %, c0 = c_f, 256 px camera, offsets within 240 units) on the training columns in the hard scenes
(specimen edge, biprism, holography, stigmated); `held-out`, the held-out column in every scene and
the held-out scene on every column. Per run and set: the centre error of the frames whose centre is
on the detector (median and p90, pixels at 128 px), and the error of the walk through the spots
(estimate/model_walk.py, as the daemon fits it) against the walk through the true centres, in motor
units through the column's nominal scale (magnification x D / 0.03 / 1000 per unit of rho).
Writes study.json and study.png (one panel per set: each run a cross, the median a bar)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extras import require

require("tools/study_spotnet.py", "train", "keras", "tensorflow", "matplotlib")

import numpy as np  # noqa: E402
from trainkit import spot_data, spot_export, spot_training, spotnet, traced_sets  # noqa: E402
from trainkit.traced_sets import Condition  # noqa: E402

from temalign.estimate.model_estimator import SpotReading  # noqa: E402
from temalign.estimate.model_walk import model_walk  # noqa: E402
from temalign.estimate.walk import Walk, fit_points, rho_of  # noqa: E402
from temalign.optics import D_FOV, WOBBLE_UNIT  # noqa: E402
from temalign_twin.columns import COLUMNS  # noqa: E402

HARD_SCENES = ("specimen-edge", "biprism", "holography", "stigmated")


def hard_conditions(per_cell: int, seed: int) -> list[Condition]:
    """The daemon's own wobble on the training columns in the hard scenes (module doc)."""
    rng = np.random.default_rng([seed, 8])
    out = []
    for column in (c for c in COLUMNS if c != traced_sets.HOLD_OUT_COLUMN):
        for scene in HARD_SCENES:
            for _ in range(per_cell):
                r, phi = 240.0 * math.sqrt(rng.uniform()), rng.uniform(0.0, 2 * math.pi)
                out.append(Condition(column=column, scene=scene, wobble=0.03, c0_over_cf=1.0,
                                     offset=(r * math.cos(phi), r * math.sin(phi)), dose=1.0, camera=256,
                                     display=False, ellipticity=0.5 if scene == "stigmated" else 0.03,
                                     ellipse_angle_deg=0.0, beam_shift=(0.0, 0.0)))
    return out


def held_out_sets(folder: Path, n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    def cached(name: str, conds: list[Condition], set_seed: int) -> dict[str, np.ndarray]:
        path = folder / f"{name}.npz"
        if path.exists():
            return spot_data.load(path)
        print(f"rendering the {name} set ({len(conds)} stacks)", flush=True)
        arrays = spot_data.build(conds, set_seed)
        spot_data.save(path, arrays)
        return arrays

    inside = traced_sets.conditions(n, seed + 1, hold_out_column=traced_sets.HOLD_OUT_COLUMN,
                                    hold_out_scene=traced_sets.HOLD_OUT_SCENE)
    outside = traced_sets.held_out_conditions(n, seed + 2)
    return {"inside": cached("inside", inside, seed + 1),
            "hard": cached("hard", hard_conditions(max(1, n // 12), seed + 4), seed + 4),
            "held-out": cached("held-out", outside, seed + 2)}


def walk_units(out: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Per stack, the walk error (motor units, module doc); NaN where the model read no walk."""
    spots = np.asarray(out, dtype=np.float64).reshape(-1, spotnet.FRAMES, 3)
    errors = []
    for i, stack_spots in enumerate(spots):
        c1 = arrays["c1"][i]
        reading = SpotReading(stack_spots[:, :2], 1.0 / (1.0 + np.exp(-stack_spots[:, 2])), 0.0, 0.0)
        walked = model_walk(reading, list(c1), float(c1[3]))
        truth = fit_points(rho_of(list(c1), float(c1[3])), arrays["centres"][i], np.ones(spotnet.FRAMES))
        column = COLUMNS.get(str(arrays["column"][i]))
        if walked.walk is None or not isinstance(truth, Walk) or column is None:
            errors.append(math.nan)
            continue
        scale = column.magnification * D_FOV / WOBBLE_UNIT / 1000.0 * float(arrays["c0_over_cf"][i])
        errors.append(float(np.linalg.norm(walked.walk.slope - truth.slope)) / scale)
    return np.asarray(errors)


def evaluate(model: Any, sets: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    stack = spotnet.stack_model(model)
    result = {}
    for name, arrays in sets.items():
        out = np.asarray(stack.predict(arrays["x"].astype(np.float32), batch_size=32, verbose=0))
        frames = spot_export.frame_errors(out, arrays)
        walk = walk_units(out, arrays)
        answered = np.isfinite(walk)
        result[name] = {"frame_median_px": frames["median_px"], "frame_p90_px": frames["p90_px"],
                        "walk_rms_units": float(np.sqrt(np.mean(walk[answered] ** 2))),
                        "walk_p90_units": float(np.percentile(walk[answered], 90)),
                        "answered": int(answered.sum()), "stacks": len(walk)}
    return result


def subset(arrays: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    total = len(arrays["x"])
    pick = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    return {k: (v[pick] if v.ndim and len(v) == total else v) for k, v in arrays.items()}


def plot(path: Path, rows: list[dict[str, Any]], key: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in rows))
    sets = list(rows[0]["result"])
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6))
    for ax, set_name in zip(np.atleast_1d(axes), sets, strict=True):
        for i, name in enumerate(names):
            values = [r["result"][set_name][key] for r in rows if r["name"] == name]
            ax.plot([i] * len(values), values, "x", color="tab:blue")
            ax.plot([i - 0.25, i + 0.25], [np.median(values)] * 2, "-", color="tab:red")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(set_name, fontsize=9)
        ax.set_ylabel(key.replace("_", " "), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="the rendered training set (train_spotnet.py --cache)")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", nargs="+", default=["plain:16", "separable:32"], metavar="KIND:WIDTH")
    p.add_argument("--runs", type=int, default=3, help="seeded runs per variant (and per size)")
    p.add_argument("--stacks", type=int, default=2000, help="training stacks per variant run")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--sizes", nargs="*", type=int, default=[], help="Fig. 8: training stacks, first variant")
    p.add_argument("--held-out-stacks", type=int, default=240)
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = spot_data.load(args.cache)
    sets = held_out_sets(out, args.held_out_stacks, args.seed)
    rows: list[dict[str, Any]] = []
    jobs = [(v, args.stacks) for v in args.variants] + [(args.variants[0], n) for n in args.sizes]
    started = time.monotonic()
    for variant, stacks in jobs:
        kind, _, width = variant.partition(":")
        for run in range(args.runs):
            t0 = time.monotonic()
            cfg = spot_training.SpotTraining(epochs=args.epochs, width=int(width or 16), kind=kind, seed=run)
            model, _ = spot_training.train(subset(train, stacks, run), None, cfg, say=lambda _text: None)
            result = evaluate(model, sets)
            rows.append({"name": variant, "stacks": stacks, "run": run, "params": int(model.count_params()),
                         "train_s": time.monotonic() - t0, "result": result})
            print(f"{variant} {stacks} stacks run {run}: " + "; ".join(
                f"{k} frame {v['frame_median_px']:.2f}/{v['frame_p90_px']:.2f} px walk "
                f"{v['walk_rms_units']:.2f} units" for k, v in result.items())
                + f" ({time.monotonic() - t0:.0f} s)", flush=True)
            (out / "study.json").write_text(json.dumps({"command": " ".join(["tools/study_spotnet.py",
                                                                              *(argv or sys.argv[1:])]),
                                                         "rows": rows}, indent=1) + "\n")
    variants = [r for r in rows if r["stacks"] == args.stacks]
    plot(out / "study.png", variants, "walk_rms_units", f"spot network variants, {args.runs} runs each "
         f"({args.stacks} stacks, {args.epochs} epochs): walk error through the column's scale")
    if args.sizes:
        sized = [{**r, "name": str(r["stacks"])} for r in sorted(rows, key=lambda r: r["stacks"])
                 if r["name"] == args.variants[0]]
        plot(out / "sizes.png", sized, "walk_rms_units", f"{args.variants[0]}: training stacks (Fig. 8)")
    print(f"done in {(time.monotonic() - started) / 60:.1f} min -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
