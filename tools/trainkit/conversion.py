"""Keras model -> .tflite with builtin ops only, in four precisions, checked against Keras with LiteRT.

Why builtin only: the daemon runs the model with `ai-edge-litert`, which has no Flex (Select TF)
kernels; a model that needs one would load in the tools and fail on the microscope PC. The
converter is told `TFLITE_BUILTINS` only (so it refuses), and the flatbuffer's operator codes are
checked again afterwards (so nothing slips through). Inference here always uses LiteRT's
Interpreter, the runtime the daemon ships, never tf.lite.Interpreter."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.python import schema_util

from temalign.estimate.litert_model import LiteModel

QUANTISATIONS = ("float32", "float16", "dynamic-int8", "int8")
"""float32; float16 weights; dynamic-range int8 weights (float activations); full int8 weights and
activations calibrated on a representative set, float input and output kept."""
_CUSTOM = schema_fb.BuiltinOperator.CUSTOM


class NonBuiltinOps(ValueError):
    """The model needs ops outside the TFLite builtin set (Flex/Select TF or custom)."""


def op_names(tflite: bytes) -> list[str]:
    """Every operator code of a .tflite flatbuffer: builtin names, or the custom code (Flex...)."""
    model = schema_fb.Model.GetRootAsModel(tflite, 0)
    names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = schema_util.get_builtin_code_from_operator_code(code)
        if builtin == _CUSTOM:
            out.append((code.CustomCode() or b"?").decode())
        else:
            out.append(names.get(builtin, f"BUILTIN_{builtin}"))
    return out


def non_builtin_ops(tflite: bytes) -> list[str]:
    """The ops of a .tflite that the builtin-only LiteRT runtime could not run (empty: fine)."""
    model = schema_fb.Model.GetRootAsModel(tflite, 0)
    bad = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if schema_util.get_builtin_code_from_operator_code(code) == _CUSTOM:
            bad.append((code.CustomCode() or b"?").decode())
    return bad


def _batch_one(model: keras.Model) -> keras.Model:
    """The same layers and weights behind a batch-1 input: the daemon feeds one stack at a time,
    and a static shape drops the dynamic-batch shape ops and lets LiteRT plan its memory once."""
    inp = keras.Input(batch_shape=(1, *model.input_shape[1:]), dtype="float32", name="stack")
    return keras.Model(inp, model(inp, training=False), name=f"{model.name}_b1")


def convert(model: keras.Model, quantisation: str = "float32",
            representative: np.ndarray | None = None, *, allow_select_ops: bool = False) -> bytes:
    """The model as .tflite bytes. `representative` (N, H, W, 7) float32 inputs are required for
    full int8. Raises NonBuiltinOps when the result needs non-builtin ops (allow_select_ops=True only
    exists to show the check works)."""
    if quantisation not in QUANTISATIONS:
        raise ValueError(f"unknown quantisation {quantisation!r}; known: {', '.join(QUANTISATIONS)}")
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints its signature
        converter = tf.lite.TFLiteConverter.from_keras_model(_batch_one(model))
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantisation == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantisation == "dynamic-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantisation == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("full int8 needs a representative dataset (training stacks)")
        reps = np.asarray(representative, dtype=np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([reps[i:i + 1]] for i in range(len(reps)))
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    if allow_select_ops:
        ops = [*ops, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.target_spec.supported_ops = ops
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            tflite = converter.convert()
    except Exception as error:  # the converter raises ConverterError with the op list
        raise NonBuiltinOps(f"conversion with builtin ops only failed: {error}") from error
    bad = non_builtin_ops(tflite)
    if bad and not allow_select_ops:
        raise NonBuiltinOps(f"model needs non-builtin ops: {', '.join(sorted(set(bad)))}")
    return bytes(tflite)


def parity(keras_model: keras.Model, tflite: bytes, inputs: np.ndarray, scale: Iterable[float],
           offset: Iterable[float] = (0.0, 0.0)) -> dict[str, Any]:
    """LiteRT against Keras on the same inputs, in motor units: max and RMS difference."""
    scale_a = np.asarray(list(scale), dtype=np.float64)
    offset_a = np.asarray(list(offset), dtype=np.float64)
    x = np.asarray(inputs, dtype=np.float32)
    k = np.asarray(keras_model.predict(x, verbose=0), dtype=np.float64).reshape(len(x), -1)
    lite = LiteModel(tflite)(x).astype(np.float64)
    d = (lite - k) * scale_a  # the offset cancels in a difference
    ref = k * scale_a + offset_a
    return {"samples": len(x), "max_diff_units": float(np.max(np.abs(d))),
            "rms_diff_units": float(np.sqrt(np.mean(d**2))),
            "keras_output_range_units": [float(ref.min()), float(ref.max())]}


def latency(tflite: bytes | str | Path, inputs: np.ndarray | None = None, *, repeats: int = 50,
            warmup: int = 5, num_threads: int = 1) -> dict[str, float]:
    """LiteRT time per stack on `num_threads` threads, milliseconds (p50, p90, mean)."""
    lite = LiteModel(tflite, num_threads=num_threads)
    shape = lite.input_shape
    if inputs is None or len(inputs) == 0:
        inputs = np.random.default_rng(0).random((4, *shape[1:]), dtype=np.float32)
    x = np.asarray(inputs, dtype=np.float32)
    interp, idx = lite.interpreter, lite._in["index"]
    times = []
    for i in range(warmup + repeats):
        interp.set_tensor(idx, x[i % len(x)][None])
        t0 = time.perf_counter()
        interp.invoke()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt * 1000.0)
    t = np.asarray(times)
    return {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
            "mean": float(t.mean()), "repeats": repeats, "threads": num_threads, "delegate": lite.delegate}


@dataclass
class Converted:
    quantisation: str
    tflite: bytes
    parity: dict[str, Any]
    latency_ms: dict[str, float]
    metrics: dict[str, Any] | None = None

    @property
    def size_bytes(self) -> int:
        return len(self.tflite)


def convert_and_check(keras_model: keras.Model, quantisation: str, held_out: np.ndarray,
                      scale: Iterable[float], offset: Iterable[float] = (0.0, 0.0),
                      representative: np.ndarray | None = None, *, latency_repeats: int = 50,
                      evaluate: Callable[[bytes], dict[str, Any]] | None = None) -> Converted:
    """Convert, then measure parity (held-out stacks), latency (1 thread) and optionally accuracy."""
    scale, offset = list(scale), list(offset)
    tflite = convert(keras_model, quantisation, representative)
    par = parity(keras_model, tflite, held_out, scale, offset)
    lat = latency(tflite, held_out, repeats=latency_repeats)
    return Converted(quantisation, tflite, par, lat, evaluate(tflite) if evaluate else None)


# ---- the whole export: convert, check, card -------------------------------------------------------

def parity_holds(lite_rmse: float, keras_rmse: float) -> bool:
    """LiteRT keeps what Keras had when its held-out RMSE is within 10 % (relative) plus 0.05 %
    (absolute, half a motor unit) of the Keras model's. Parity only: it says the conversion (and a
    quantisation) lost nothing, not that the model is accurate; that is the card's `evaluation`
    (tools/evaluate.py), which the daemon's model gate reads."""
    return lite_rmse <= keras_rmse * 1.10 + 0.05


def _variant_path(out: Path, quantisation: str, first: bool) -> Path:
    return out if first else out.with_name(f"{out.stem}.{quantisation}{out.suffix}")


def export(keras_path: str | Path, out: str | Path, quantisations: Iterable[str] = ("float32",),
           *, summary_path: str | Path | None = None, held_out: list[str] | None = None,
           max_held_out: int = 200, representative_samples: int = 100, latency_repeats: int = 50,
           command: str = "", verbose: bool = True, frames: str | None = None) -> list[dict[str, Any]]:
    """Convert a trained model (train.py's best.keras and its summary.json) to .tflite in each
    quantisation (the first at `out`, the others as out.<quantisation>.tflite), each with a card.

    Held-out stacks for parity and accuracy: `held_out` files, else the run's named test set, else
    the best run's own 20 % split; the representative set for full int8 is its training stacks.
    `frames` overrides the card's (the training data's) frame kind, e.g. "any" for a model measured
    on both camera and screen frames."""
    from temalign.estimate import card as cards
    from trainkit import metrics as mt
    from trainkit import training

    keras_path, out = Path(keras_path), Path(out)
    summary_file = Path(summary_path) if summary_path else keras_path.with_name("summary.json")
    summary = json.loads(summary_file.read_text())
    base = summary["card"] | ({"frames": frames} if frames else {})
    cfg = summary["config"]
    from trainkit import models

    model = models.load_keras(str(keras_path))
    label = cfg.get("label", "labels")
    data = training.prepare(cfg["data"], summary["preprocess"], label)
    train_idx = np.asarray(summary["splits"]["best"]["train"], dtype=np.int64)
    if held_out:
        ho = training.prepare(held_out, summary["preprocess"], label)
        x_ho, y_ho, ho_source = ho.x, ho.y, {"files": list(held_out)}
    elif summary["splits"].get("test_files"):
        files = summary["splits"]["test_files"]
        ho = training.prepare(files, summary["preprocess"], label)
        x_ho, y_ho, ho_source = ho.x, ho.y, {"files": files}
    else:
        te = np.asarray(summary["splits"]["best"]["test"], dtype=np.int64)
        x_ho, y_ho = data.x[te], data.y[te]
        ho_source = {"files": cfg["data"], "split": "best run's test indices"}
    x_ho, y_ho = x_ho[:max_held_out], y_ho[:max_held_out]
    rng = np.random.default_rng(0)
    rep = data.x[rng.permutation(train_idx)[:representative_samples]]
    scale, offset = base["output_scale"], base.get("output_offset", [0.0, 0.0])

    def decode(o: np.ndarray) -> np.ndarray:
        return np.asarray(o, dtype=np.float64).reshape(-1, 2) * np.asarray(scale) + np.asarray(offset)

    keras_metrics = mt.summary(decode(model.predict(x_ho, verbose=0)), y_ho)
    out.parent.mkdir(parents=True, exist_ok=True)
    reports: list[dict[str, Any]] = []
    for i, q in enumerate(quantisations):
        conv = convert_and_check(model, q, x_ho, scale, offset, rep if q == "int8" else None,
                                 latency_repeats=latency_repeats,
                                 evaluate=lambda b: mt.summary(decode(LiteModel(b)(x_ho)), y_ho))
        path = _variant_path(out, q, i == 0)
        path.write_bytes(conv.tflite)
        lite = conv.metrics or {}
        holds = parity_holds(lite["rmse_percent"], keras_metrics["rmse_percent"])
        card = {**base,
                "model": {"name": summary["model"], "file": path.name, "params": int(model.count_params()),
                          "file_size_bytes": conv.size_bytes, "quantisation": q, "ops": op_names(conv.tflite),
                          "parity_holds": holds, "keras_source": str(keras_path)},
                "parity": {**conv.parity, "held_out": ho_source},
                "latency_ms": conv.latency_ms,
                "metrics": {**base.get("metrics", {}), "held_out_keras": keras_metrics,
                            "held_out_litert": lite}}
        card["training"] = {**base["training"], "convert_command": command}
        cards.write_card(path, card)
        report = {"quantisation": q, "file": str(path), "size_bytes": conv.size_bytes,
                  "max_diff_units": conv.parity["max_diff_units"],
                  "rms_diff_units": conv.parity["rms_diff_units"],
                  "latency_p50_ms": conv.latency_ms["p50"], "latency_p90_ms": conv.latency_ms["p90"],
                  "rmse_percent": lite["rmse_percent"], "keras_rmse_percent": keras_metrics["rmse_percent"],
                  "parity_holds": holds}
        reports.append(report)
        if verbose:
            print(f"{q:>12}: {conv.size_bytes / 1e6:7.2f} MB  parity max {report['max_diff_units']:.3g} "
                  f"rms {report['rms_diff_units']:.3g} units  latency p50 {report['latency_p50_ms']:.2f} ms "
                  f"p90 {report['latency_p90_ms']:.2f} ms (1 thread)  parity: held-out RMSE "
                  f"{report['rmse_percent']:.2f} % in LiteRT, {report['keras_rmse_percent']:.2f} % in Keras, "
                  f"{'holds' if holds else 'LOST'} -> {path}", flush=True)
    return reports
