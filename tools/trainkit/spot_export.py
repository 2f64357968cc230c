"""The spot network to .tflite: the per-frame model wrapped for whole stacks, converted with builtin
ops only (trainkit.conversion), checked with LiteRT against Keras on held-out stacks, timed on one
thread, and written with its card (output "spots", the wobbles and wobble centres it was trained on).

Parity ("parity_holds"): LiteRT's spot centres on the held-out stacks stay within PARITY_PX of
Keras' (pixels of the 128 px input) and its held-out centre error within 10 % of Keras'. That says
the conversion lost nothing, not that the model is accurate: the accuracy that matters (motor
units through the daemon's walk and calibration) is the card's `evaluation`, written by
tools/evaluate.py (`make model` runs it), which the daemon's model gate reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from temalign.estimate import card as cards
from temalign.estimate.litert_model import LiteModel
from trainkit import spotnet
from trainkit.conversion import convert, latency, op_names

PARITY_PX = 0.05
SIDE = 128


def frame_errors(out: np.ndarray, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Centre errors (pixels of the 128 px input) of stack outputs (N, 21) over the frames whose
    true centre is on the detector, and the mean confidence on and off it."""
    spots = np.asarray(out, dtype=np.float64).reshape(-1, spotnet.FRAMES, spotnet.OUTPUTS_PER_FRAME)
    on = arrays["visible"].astype(bool)
    dist = np.linalg.norm(spots[..., :2] - arrays["centres"], axis=-1)[on] * SIDE
    confidence = 1.0 / (1.0 + np.exp(-spots[..., 2]))
    return {"frames": int(on.sum()), "median_px": float(np.median(dist)),
            "p90_px": float(np.percentile(dist, 90)), "p99_px": float(np.percentile(dist, 99)),
            "confidence_on_detector": float(confidence[on].mean()),
            "confidence_off_detector": float(confidence[~on].mean()) if (~on).any() else None}


def export(frame_model: keras.Model, out: Path, held_out: dict[str, np.ndarray], card: dict[str, Any], *,
           quantisation: str = "float32", representative: np.ndarray | None = None,
           latency_repeats: int = 200, name: str = "spotnet", say: Any = print) -> dict[str, Any]:
    """The model (its card's `model.name`: `name`) in `quantisation` (float32, or full int8 with
    float input and output, calibrated on `representative` inputs) to `out`, with its card; returns
    its report."""
    model = spotnet.stack_model(frame_model, int(held_out["x"].shape[1]))
    x = held_out["x"].astype(np.float32)
    keras_out = np.asarray(model.predict(x, batch_size=32, verbose=0), dtype=np.float64)
    keras_errors = frame_errors(keras_out, held_out)
    tflite = convert(model, quantisation, representative)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(tflite)
    lite_out = LiteModel(tflite)(x).astype(np.float64)
    lite_errors = frame_errors(lite_out, held_out)
    centres = (lite_out - keras_out).reshape(-1, spotnet.FRAMES, 3)[..., :2] * SIDE
    parity = {"stacks": len(x), "max_diff_px": float(np.max(np.abs(centres))),
              "rms_diff_px": float(np.sqrt(np.mean(centres**2)))}
    keeps = parity["max_diff_px"] <= PARITY_PX and lite_errors["median_px"] <= 1.1 * keras_errors["median_px"]
    timing = latency(tflite, x[:16], repeats=latency_repeats)
    full = {**card,
            "model": {"name": name, "file": out.name, "params": int(frame_model.count_params()),
                      "file_size_bytes": len(tflite), "quantisation": quantisation,
                      "ops": sorted(set(op_names(tflite))), "parity_holds": bool(keeps)},
            "parity": parity, "latency_ms": timing,
            "metrics": {**card.get("metrics", {}), "held_out_keras": keras_errors,
                        "held_out_litert": lite_errors}}
    cards.write_card(out, full)
    say(f"{quantisation:>12}: {len(tflite) / 1e6:.3f} MB, parity max {parity['max_diff_px']:.3g} px, "
        f"latency p50 {timing['p50']:.2f} ms (1 thread), held-out centre error median "
        f"{lite_errors['median_px']:.2f} px p99 {lite_errors['p99_px']:.2f} px (Keras "
        f"{keras_errors['median_px']:.2f} / {keras_errors['p99_px']:.2f}) -> {out}")
    return {"quantisation": quantisation, "file": str(out), "size_bytes": len(tflite), "parity": parity,
            "latency_ms": timing, "litert": lite_errors, "keras": keras_errors, "parity_holds": bool(keeps)}
