"""Train the registered models on wobble datasets the paper's way, and measure them honestly.

One call of `train()` does what sections 3.4 to 3.7 did: an 80/20 split (or a named test set),
R repeated runs with different seeds (median and spread of test RMSE, since single runs are
luck), optionally the size study (Fig. 8) and the generalisation test (Table 3), and writes
everything a later reader needs to trust or redo it: per run config/history/metrics JSON and
plots, the best run's Keras model, and summary.json with a partial model card for convert.py.

Labels are scaled for training and the exact map back is recorded:
delta (motor units) = output * output_scale + output_offset, per axis (x, y)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from temalign.estimate import preprocess as pre
from trainkit import metrics as mt
from trainkit import models
from trainkit.datasets import Dataset, merge

SCALINGS = ("minmax", "standard", "fixed")
"""minmax: each axis to [0, 1] over the training labels (the paper's Fig. 3b; a relu output needs
labels >= 0); standard: zero mean, unit variance; fixed: delta / 1000 (the paper's range)."""


@dataclass
class TrainConfig:
    """Everything that decides a training; stored verbatim in config.json and summary.json."""

    data: list[str]
    out: str
    model: str = "paper_cnn"
    test: list[str] = field(default_factory=list)
    test_fraction: float = 0.2
    epochs: int = 20
    batch_size: int = 16
    seed: int = 0
    runs: int = 1
    preprocess: str | None = None
    input_size: int = 256
    label: str = "labels"
    scaling: str = "minmax"
    optimizer: str = "adam"
    loss: str = "mse"
    learning_rate: float | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    sizes: list[float] = field(default_factory=list)
    eval_on: list[str] = field(default_factory=list)
    verbose: bool = True
    command: str = ""

    def preprocess_name(self) -> str:
        return self.preprocess or f"temalign.estimate.preprocess:standard_{self.input_size}"


# ---- data --------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """A dataset as the model sees it: inputs, targets in motor units, provenance."""

    x: np.ndarray
    y: np.ndarray
    dataset: Dataset
    files: list[str]


def load(files: Sequence[str]) -> Dataset:
    """The datasets in `files`, merged (the paper's 10/13, 10/13/14, ...)."""
    parts = [Dataset.load(f) for f in files]
    return parts[0] if len(parts) == 1 else merge(parts)


def targets(ds: Dataset, label: str) -> np.ndarray:
    """`labels` (a_start - a, what a column knows) or `truth` (a* - a, the twin's)."""
    if label not in ("labels", "truth"):
        raise ValueError(f"label must be 'labels' or 'truth', got {label!r}")
    y = np.asarray(getattr(ds, label), dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"the dataset has no usable {label!r} (NaN: truth exists only for twin data)")
    return y


def prepare(files: Sequence[str], preprocess: str, label: str) -> Prepared:
    """Load, merge and preprocess with the card's function (the daemon's own code path)."""
    ds = load(files)
    x = pre.preprocess_batch(ds.stacks, pre.resolve(preprocess))
    return Prepared(x, targets(ds, label), ds, list(files))


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices as trainkit.datasets.split draws them (a seeded permutation)."""
    n_test = round(n * test_fraction)
    if n_test < 1 or n_test >= n:
        raise ValueError(f"cannot hold out {test_fraction:.0%} of {n} samples and keep both parts")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


@dataclass
class LabelScale:
    """delta = output * scale + offset (motor units, per axis)."""

    scale: list[float]
    offset: list[float]
    method: str

    @classmethod
    def fit(cls, y: np.ndarray, method: str) -> LabelScale:
        if method == "minmax":
            lo, hi = y.min(axis=0), y.max(axis=0)
            span = np.where(hi - lo > 0, hi - lo, 1.0)
            return cls(span.tolist(), lo.tolist(), method)
        if method == "standard":
            sd = y.std(axis=0)
            return cls(np.where(sd > 0, sd, 1.0).tolist(), y.mean(axis=0).tolist(), method)
        if method == "fixed":
            return cls([mt.RANGE_UNITS] * 2, [0.0, 0.0], method)
        raise ValueError(f"unknown scaling {method!r}; known: {', '.join(SCALINGS)}")

    def encode(self, y: np.ndarray) -> np.ndarray:
        return ((y - np.asarray(self.offset)) / np.asarray(self.scale)).astype(np.float32)

    def decode(self, out: np.ndarray) -> np.ndarray:
        out2 = np.asarray(out, dtype=np.float64).reshape(-1, 2)
        return out2 * np.asarray(self.scale) + np.asarray(self.offset)


def provenance(ds: Dataset, files: Sequence[str]) -> dict[str, Any]:
    """What the card needs to know about the data: files, their metadata, wobble and frames."""
    sources = ds.sources
    wobbles = sorted({float(s["wobble_fraction"]) for s in sources if "wobble_fraction" in s})
    return {"files": [str(f) for f in files], "samples": len(ds), "frames": ds.frames,
            "camera": list(ds.stacks.shape[2:]), "wobble_fractions": wobbles, "sources": sources}


def geometry_of(ds: Dataset) -> str:
    """"twin" when every sample came from the twin (its geometry is twin.md's: the daemon re-maps
    such a model's output through a column's calibration), else "column" (the model learnt that
    column's own rotation and magnification: no re-mapping)."""
    return "twin" if ds.sources and all(s.get("twin_seed") is not None for s in ds.sources) else "column"


def _c0_over_cf(ds: Dataset) -> float:
    """The wobble centre (c0 / c_f) of the data: from the metadata if it says, else from the
    twin settings recorded there, else from the C1 values and c_f, else 1.0 (centred)."""
    values = []
    for k, s in enumerate(ds.sources):
        if "c0_over_cf" in s:
            values.append(float(s["c0_over_cf"]))
            continue
        settings = s.get("twin_settings") or s.get("settings") or {}
        c_f = (settings.get("optics") or {}).get("c_f") or s.get("c_f")
        mine = ds.source_index == k
        if c_f and mine.any():
            values.append(float(np.median(ds.c1_values[mine, 3])) / float(c_f))
        elif (settings.get("lens") or {}).get("start_over_cf"):
            values.append(float(settings["lens"]["start_over_cf"]))
    return float(np.median(values)) if values else 1.0


# ---- one run -----------------------------------------------------------------------------------

class EpochLine(keras.callbacks.Callback):
    """One compact line per epoch: losses and the test RMSE in the paper's % units."""

    def __init__(self, prefix: str, epochs: int, scale: LabelScale, stream: Any = sys.stdout) -> None:
        super().__init__()
        self.prefix, self.epochs, self.scale, self.stream = prefix, epochs, scale, stream
        self._t = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        # RMSE of scaled outputs -> motor units with the mean axis scale (exact for equal scales)
        unit = float(np.sqrt(np.mean(np.square(self.scale.scale))))
        parts = [f"loss {logs.get('loss', float('nan')):.4g}"]
        if "val_loss" in logs:
            parts.append(f"val_loss {logs['val_loss']:.4g}")
            parts.append(f"test ~{logs.get('val_rmse', float('nan')) * unit / 10:.2f} %")
        print(f"{self.prefix} epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts)
              + f"  {time.perf_counter() - self._t:.1f}s", file=self.stream, flush=True)


@dataclass
class RunResult:
    run: int
    seed: int
    folder: Path
    metrics: dict[str, Any]
    model: keras.Model
    scale: LabelScale


def _plots(folder: Path, history: dict[str, list[float]], pred: np.ndarray, true: np.ndarray,
           title: str) -> None:
    """loss.png (train/test loss per epoch) and pred_vs_true.png (the paper's Fig. 11 layout:
    misalignment before and residual after correction, plus predicted against true per axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in ("loss", "val_loss"):
        if key in history:
            ax.plot(range(1, len(history[key]) + 1), history[key], label="test" if "val" in key else "train")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled labels)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=90)
    plt.close(fig)
    pred_vs_true_plot(folder / "pred_vs_true.png", pred, true, title)


def pred_vs_true_plot(path: Path, pred: np.ndarray, true: np.ndarray, title: str) -> None:
    """Fig. 11: where the aperture was (-delta) and where the model's correction leaves it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    before, after = -true, pred - true
    lim = float(np.max(np.abs(before))) * 1.1 + 1
    for ax, pts, name in ((axes[0], before, "before: a - a* (units)"),
                          (axes[1], after, "after correction: residual (units)")):
        ax.scatter(pts[:, 0], pts[:, 1], s=8)
        ax.plot([0], [0], "r+", ms=12, mew=2)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
    for k, (c, axis) in enumerate((("tab:blue", "x"), ("tab:orange", "y"))):
        axes[2].scatter(true[:, k], pred[:, k], s=8, c=c, label=axis)
    axes[2].plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    axes[2].set_xlabel("true delta (units)")
    axes[2].set_ylabel("predicted delta (units)")
    axes[2].legend()
    fig.suptitle(f"{title}  RMSE {mt.rmse_percent(pred, true):.2f} %", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_once(cfg: TrainConfig, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
             y_test: np.ndarray, seed: int, folder: Path, run: int, label: str = "") -> RunResult:
    """One training from scratch (seeded), evaluated on the test set; writes the run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    scale = LabelScale.fit(y_train, cfg.scaling)
    model = models.build(cfg.model, x_train.shape[1:], 2, optimizer_name=cfg.optimizer,
                         learning_rate=cfg.learning_rate, loss=cfg.loss, **cfg.model_options)
    prefix = f"[{label or 'run'} {run + 1}/{cfg.runs}]"
    callbacks = [EpochLine(prefix, cfg.epochs, scale)] if cfg.verbose else []
    t0 = time.perf_counter()
    hist = model.fit(x_train, scale.encode(y_train), validation_data=(x_test, scale.encode(y_test)),
                     epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0,
                     callbacks=callbacks)
    train_s = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    pred_test = scale.decode(model.predict(x_test, batch_size=64, verbose=0))
    pred_train = scale.decode(model.predict(x_train, batch_size=64, verbose=0))
    result = {"run": run, "seed": seed, "model": cfg.model, "params": int(model.count_params()),
              "train_samples": len(x_train), "test_samples": len(x_test),
              "test": mt.summary(pred_test, y_test), "train": mt.summary(pred_train, y_train),
              "training_time_s": train_s, "epochs": cfg.epochs,
              "output_scale": scale.scale, "output_offset": scale.offset, "scaling": scale.method}
    _json(folder / "config.json", {**asdict(cfg), "run": run, "seed": seed})
    _json(folder / "history.json", history)
    _json(folder / "metrics.json", result)
    _plots(folder, history, pred_test, y_test, f"{cfg.model} run {run} (seed {seed})")
    return RunResult(run, seed, folder, result, model, scale)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (IQR, min, max) of repeated runs."""
    v = np.asarray(values, dtype=np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}


def _repeat(cfg: TrainConfig, data: Prepared, test: Prepared | None, root: Path, fraction: float = 1.0,
            label: str = "run") -> tuple[list[RunResult], list[dict[str, Any]]]:
    """cfg.runs runs, each with its own seed (and its own 80/20 split unless a test set is named)."""
    results, splits = [], []
    for r in range(cfg.runs):
        seed = cfg.seed + r
        if test is None:
            tr, te = split_indices(len(data.x), cfg.test_fraction, seed)
            x_te, y_te = data.x[te], data.y[te]
        else:
            tr, te = np.arange(len(data.x)), None
            x_te, y_te = test.x, test.y
        if fraction < 1.0:
            keep = max(2, round(len(tr) * fraction))
            tr = np.sort(np.random.default_rng(seed + 10_000).permutation(tr)[:keep])
        res = run_once(cfg, data.x[tr], data.y[tr], x_te, y_te, seed, root / f"run_{r:02d}", r, label)
        results.append(res)
        splits.append({"train": tr.tolist(), "test": None if te is None else te.tolist()})
    return results, splits


def train(cfg: TrainConfig) -> dict[str, Any]:
    """The whole study of a config; returns (and writes) summary.json."""
    if cfg.runs < 1 or cfg.epochs < 0 or cfg.batch_size < 1:
        raise ValueError("runs and batch size must be >= 1, epochs >= 0 (0: evaluate the initial "
                         "model, meaningful for a physical one)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    pname = cfg.preprocess_name()
    data = prepare(cfg.data, pname, cfg.label)
    test = prepare(cfg.test, pname, cfg.label) if cfg.test else None
    if cfg.verbose:
        print(f"data: {len(data.x)} samples from {len(cfg.data)} file(s), input {data.x.shape[1:]}, "
              f"test: {'named set of ' + str(len(test.x)) if test else f'{cfg.test_fraction:.0%} split'}",
              flush=True)
    t0 = time.perf_counter()
    results, splits = _repeat(cfg, data, test, out)
    rmses = [r.metrics["test"]["rmse_percent"] for r in results]
    best = min(results, key=lambda r: r.metrics["test"]["rmse_percent"])
    best.model.save(out / "best.keras")
    summary: dict[str, Any] = {
        "config": asdict(cfg), "started": started, "preprocess": pname,
        "input_shape": list(data.x.shape[1:]), "model": cfg.model, "params": best.metrics["params"],
        "test_rmse_percent": spread(rmses),
        "test_p99_percent": spread([r.metrics["test"]["p99_percent"] for r in results]),
        "training_time_s": spread([r.metrics["training_time_s"] for r in results]),
        "runs": [r.metrics | {"folder": str(r.folder)} for r in results],
        "best_run": best.run, "best_model": str(out / "best.keras"),
        "splits": {"best": splits[best.run], "test_files": list(cfg.test)},
        "output_scale": best.scale.scale, "output_offset": best.scale.offset,
        "environment": {"python": platform.python_version(), "keras": keras.__version__,
                        "cpus": os.cpu_count()},
    }
    if cfg.sizes:
        summary["sizes"] = []
        for f in cfg.sizes:
            if not 0 < f <= 1:
                raise ValueError(f"size fractions are in (0, 1], got {f}")
            res, _ = _repeat(cfg, data, test, out / f"size_{f:g}", f, label=f"size {f:g}")
            rm = spread([r.metrics["test"]["rmse_percent"] for r in res])
            summary["sizes"].append({"fraction": f, "train_samples": res[0].metrics["train_samples"],
                                     "test_rmse_percent": rm})
    if cfg.eval_on:
        summary["eval_on"] = []
        for path in cfg.eval_on:
            other = prepare([path], pname, cfg.label)
            per_run = [mt.summary(r.scale.decode(r.model.predict(other.x, batch_size=64, verbose=0)), other.y)
                       for r in results]
            pred = best.scale.decode(best.model.predict(other.x, batch_size=64, verbose=0))
            stem = Path(path).stem
            pred_vs_true_plot(out / f"eval_{stem}.png", pred, other.y, f"{cfg.model} on {stem}")
            summary["eval_on"].append({
                "file": str(path), "samples": len(other.x),
                "rmse_percent": spread([m["rmse_percent"] for m in per_run]),
                "p99_percent": spread([m["p99_percent"] for m in per_run]),
                "real_difference_units_median": mt.real_difference_units(
                    spread([m["rmse_percent"] for m in per_run])["median"]),
                "best_run": per_run[best.run]})
    summary["total_time_s"] = time.perf_counter() - t0
    summary["card"] = partial_card(cfg, data, summary)
    _json(out / "summary.json", summary)
    if cfg.verbose:
        s = summary["test_rmse_percent"]
        print(f"test RMSE over {s['n']} run(s): median {s['median']:.2f} %  IQR {s['iqr']:.2f}  "
              f"min {s['min']:.2f}  max {s['max']:.2f}  -> {out / 'summary.json'}", flush=True)
    return summary


def partial_card(cfg: TrainConfig, data: Prepared, summary: dict[str, Any]) -> dict[str, Any]:
    """The card keys training knows (convert.py adds model, parity, latency and final metrics)."""
    prov = provenance(data.dataset, data.files)
    wobbles = prov["wobble_fractions"]
    best = summary["runs"][summary["best_run"]]
    return {
        "preprocess": summary["preprocess"],
        "output_scale": summary["output_scale"], "output_offset": summary["output_offset"],
        "input_shape": summary["input_shape"],
        "wobble_fraction": float(np.median(wobbles)) if wobbles else 0.03,
        "c0_over_cf": _c0_over_cf(data.dataset),
        "geometry": geometry_of(data.dataset),
        "frames": prov["frames"],
        "label": cfg.label,
        "training": {"datasets": [prov], "test_files": list(cfg.test),
                     "seeds": [r["seed"] for r in summary["runs"]],
                     "best_seed": best["seed"], "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                     "optimizer": cfg.optimizer, "loss": cfg.loss, "scaling": cfg.scaling,
                     "command": cfg.command,
                     "date": summary["started"], "model_options": cfg.model_options},
        "metrics": {"keras_test": best["test"], "test_rmse_percent_runs": summary["test_rmse_percent"],
                    "training_time_s": best["training_time_s"]},
    }
