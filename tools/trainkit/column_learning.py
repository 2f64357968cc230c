"""Fine-tuning a spot network on a column's own labelled stacks (issue 14, `temalign learn`).

A column stack carries no per-frame truth, only a label for the whole stack: the delta (motor units)
that was right where its wobble was taken (temalign.record.label; a person's reference, docs/
learning.md). The network still reads frames; what is trained is the daemon's whole reading of a
stack, made differentiable:

    frames -> each frame's centre and confidence (the network)
           -> the walk: a confidence-weighted fit of the centres against rho = c / c1_before - 1,
              with a rho^2 term from five frames on, as temalign.estimate.walk fits it
           -> delta = -(M c1_before / c1_cal)^-1 slope, M the calibration the daemon used
              (Calibration.correction)

and the loss is the Huber distance between that delta and the label. The confidences weigh the fit
but take no gradient from it (no frame can be talked out of the fit to lower the loss); they learn
only from the twin's frames, which are mixed into every step with their per-frame loss
(trainkit.spot_training.frame_loss) so that what the network knew elsewhere stays.

The eight orientations of the square augment the column stacks exactly: turning the frames turns
every centre by F, so the walk by F, and the label is kept by composing the calibration with F^-1."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from temalign.estimate.model_walk import MIN_CONFIDENCE, OUTLIER_FOV, OUTLIER_MIN_FRAMES
from trainkit import spot_training, spotnet

LABEL_SCALE_UNITS = 2.0
"""Errors beyond this count linearly in the loss: a mislabelled stack pulls no harder than one
the network misreads a little."""
FRAME_WEIGHT = 1.0
"""The twin frames' loss beside the column stacks' (both about 1 at a good fit)."""


@dataclass(frozen=True)
class ColumnSet:
    """Labelled column stacks as the network and the walk fit take them.

    x (N, 128, 128, 7) the card's preprocessing; rho (N, 7); to_delta (N, 2, 2), the matrix that
    maps a walk's slope to delta (-(M_eff)^-1); label (N, 2) motor units."""

    x: np.ndarray
    rho: np.ndarray
    to_delta: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index: np.ndarray) -> ColumnSet:
        return ColumnSet(self.x[index], self.rho[index], self.to_delta[index], self.label[index])


def to_delta_matrix(matrix: Any, c1_before: float, calibration_c1: float) -> np.ndarray:
    """The 2 x 2 that takes a walk's slope to delta, as Calibration.correction computes it."""
    m = np.asarray(matrix, dtype=np.float64) * (float(c1_before) / float(calibration_c1))
    return -np.linalg.inv(m)


_ORIENTATIONS = [(fx, fy, t) for t in (False, True) for fy in (False, True) for fx in (False, True)]


def _orientation_matrix(flip_x: bool, flip_y: bool, transpose: bool) -> np.ndarray:
    """F with centre' = F centre for the frames flipped (x, then y) and then transposed."""
    f = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0])
    if transpose:
        f = np.array([[0.0, 1.0], [1.0, 0.0]]) @ f
    return f


def _turned(images: np.ndarray, which: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) in orientation `which` (flipped in x, then y, then transposed), and F."""
    flip_x, flip_y, transpose = _ORIENTATIONS[which]
    if flip_x:
        images = images[:, :, ::-1, :]
    if flip_y:
        images = images[:, ::-1, :, :]
    if transpose:
        images = np.transpose(images, (0, 2, 1, 3))
    return np.ascontiguousarray(images), _orientation_matrix(flip_x, flip_y, transpose)


def orient(batch: ColumnSet, which: int) -> ColumnSet:
    """One of the square's eight orientations of every stack in `batch`, labels kept."""
    x, f = _turned(batch.x, which)
    return ColumnSet(x, batch.rho, batch.to_delta @ np.linalg.inv(f), batch.label)


def _fit(centres: Any, rho: Any, w: Any) -> tuple[Any, Any, Any]:
    """The weighted fit of temalign.estimate.walk.fit_points, batched: coefficients (B, 3, 2) of
    1, rho and (from five frames on) rho^2, each frame's misfit (B, 7) and the frames counted (B,)."""
    counted = tf.reduce_sum(tf.cast(w > 0.0, tf.float32), axis=1)
    quadratic = counted >= 5.0
    ones = tf.ones_like(rho)
    basis = tf.stack([ones, rho, tf.where(quadratic[:, None], rho * rho, 0.0)], axis=-1)  # (B, 7, 3)
    wb = basis * w[..., None]
    normal = tf.einsum("bki,bkj->bij", wb, basis)
    normal += tf.linalg.diag(tf.stack([tf.zeros_like(counted), tf.zeros_like(counted),
                                       tf.where(quadratic, 0.0, 1.0)], axis=-1))  # keeps it solvable
    normal += 1e-9 * tf.eye(3)
    coef = tf.linalg.solve(normal, tf.einsum("bki,bkc->bic", wb, centres))
    misfit = tf.norm(centres - tf.einsum("bki,bic->bkc", basis, coef), axis=-1)
    return coef, misfit, counted


def walk_delta(frame_out: Any, rho: Any, to_delta: Any) -> tuple[Any, Any]:
    """delta (B, 2) from the network's per-frame output (B, 7, 3), and whether each stack had the
    three confident frames a walk needs (B,). Which frames count is decided as
    temalign.estimate.model_walk decides it (confident ones, weighted by their confidence, the
    worst stray dropped while it strays more than OUTLIER_FOV and more than OUTLIER_MIN_FRAMES
    remain), without a gradient: the network learns to read the frames the daemon will use."""
    centres = frame_out[..., :2]
    confidence = tf.stop_gradient(tf.sigmoid(frame_out[..., 2]))
    w = tf.where(confidence >= MIN_CONFIDENCE, confidence, 0.0)
    for _ in range(spotnet.FRAMES - OUTLIER_MIN_FRAMES):
        _, misfit, counted = _fit(tf.stop_gradient(centres), rho, w)
        misfit = tf.where(w > 0.0, misfit, -1.0)
        worst = tf.argmax(misfit, axis=1)
        drop = (counted > OUTLIER_MIN_FRAMES) & (tf.reduce_max(misfit, axis=1) > OUTLIER_FOV)
        stray = tf.one_hot(worst, spotnet.FRAMES, on_value=True, off_value=False)
        w = tf.where(drop[:, None] & stray, 0.0, w)
    coef, _, counted = _fit(centres, rho, w)
    delta = tf.einsum("bij,bj->bi", to_delta, coef[:, 1, :])
    return delta, counted >= 3.0


def stack_loss(frame_out: Any, rho: Any, to_delta: Any, label: Any) -> Any:
    """Mean Huber distance (in LABEL_SCALE_UNITS) between the walk's delta and the label."""
    delta, usable = walk_delta(frame_out, rho, to_delta)
    dist = tf.sqrt(tf.reduce_sum(tf.square(delta - label), axis=-1) + 1e-9) / LABEL_SCALE_UNITS
    huber = tf.where(dist < 1.0, 0.5 * dist * dist, dist - 0.5)
    weight = tf.cast(usable, tf.float32)
    return tf.reduce_sum(weight * huber) / (tf.reduce_sum(weight) + 1e-6)


@dataclass(frozen=True)
class Learning:
    steps: int = 400
    stacks_per_step: int = 8
    frames_per_step: int = 32
    learning_rate: float = 3e-4
    seed: int = 0


def predict_deltas(frame_model: keras.Model, data: ColumnSet, batch: int = 16) -> np.ndarray:
    """The walk's delta for each stack (NaN where fewer than three frames were confident), in
    Keras: for watching training; the evidence is measured through LiteRT (tools/learn.py)."""
    out = []
    for start in range(0, len(data), batch):
        part = data.take(np.arange(start, min(start + batch, len(data))))
        per_frame = frame_model(_frames(part.x), training=False)
        delta, usable = walk_delta(tf.reshape(per_frame, (-1, spotnet.FRAMES, 3)),
                                   tf.constant(part.rho, tf.float32), tf.constant(part.to_delta, tf.float32))
        d = delta.numpy().astype(np.float64)
        d[~usable.numpy()] = np.nan
        out.append(d)
    return np.concatenate(out) if out else np.zeros((0, 2))


def _frames(x: np.ndarray) -> Any:
    """(B, H, W, 7) -> (B * 7, H, W, 1), wobble order kept (trainkit.spotnet.FramesAsBatch)."""
    b, h, w, k = x.shape
    return tf.reshape(tf.transpose(tf.constant(x, tf.float32), (0, 3, 1, 2)), (b * k, h, w, 1))


def rms_units(predicted: np.ndarray, label: np.ndarray) -> float:
    """RMS distance (units) over the stacks with a prediction."""
    err = np.linalg.norm(np.asarray(predicted) - np.asarray(label), axis=1)
    err = err[np.isfinite(err)]
    return float(np.sqrt(np.mean(err**2))) if len(err) else math.nan


def fine_tune(frame_model: keras.Model, column: ColumnSet, twin: dict[str, np.ndarray], cfg: Learning,
              held_out: ColumnSet | None = None,
              say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Train `frame_model` in place on `column` mixed with the twin's per-frame set `twin`
    (trainkit.spot_data arrays); returns the history (loss per step, held-out RMS every so often)."""
    keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    twin_frames, twin_labels = spot_training.frames_of(twin)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.steps,
                                                                             alpha=0.05))
    history: dict[str, Any] = {"loss": [], "held_out_rms_units": []}
    start = time.monotonic()
    every = max(1, cfg.steps // 10)

    @tf.function(reduce_retracing=True)
    def step(frames: Any, rho: Any, to_delta: Any, label: Any, tframes: Any, tlabels: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            out = frame_model(frames, training=True)
            column_part = stack_loss(tf.reshape(out, (-1, spotnet.FRAMES, 3)), rho, to_delta, label)
            twin_part = spot_training.frame_loss(tlabels, frame_model(tframes, training=True))
            loss = column_part + FRAME_WEIGHT * twin_part
        grads = tape.gradient(loss, frame_model.trainable_variables)
        optimizer.apply_gradients(zip(grads, frame_model.trainable_variables, strict=True))
        return column_part, twin_part

    for k in range(cfg.steps):
        batch = orient(column.take(rng.choice(len(column), size=min(cfg.stacks_per_step, len(column)),
                                              replace=False)), int(rng.integers(8)))
        pick = rng.choice(len(twin_frames), size=cfg.frames_per_step, replace=False)
        tframes, tlabels = _oriented_frames(twin_frames[pick].astype(np.float32), twin_labels[pick],
                                            int(rng.integers(8)))
        column_part, twin_part = step(_frames(batch.x), tf.constant(batch.rho, tf.float32),
                                      tf.constant(batch.to_delta, tf.float32),
                                      tf.constant(batch.label, tf.float32), tf.constant(tframes),
                                      tf.constant(tlabels))
        history["loss"].append([float(column_part), float(twin_part)])
        if (k + 1) % every == 0 or k + 1 == cfg.steps:
            line = (f"step {k + 1}/{cfg.steps}: column loss {float(column_part):.3f}, twin frames "
                    f"{float(twin_part):.3f}")
            if held_out is not None and len(held_out):
                rms = rms_units(predict_deltas(frame_model, held_out), held_out.label)
                history["held_out_rms_units"].append([k + 1, rms])
                line += f", held-out column stacks {rms:.2f} units RMS"
            elapsed = time.monotonic() - start
            say(f"{line}, {elapsed:.0f} s, about {elapsed / (k + 1) * (cfg.steps - k - 1):.0f} s left")
    return history


def _oriented_frames(frames: np.ndarray, labels: np.ndarray, which: int) -> tuple[np.ndarray, np.ndarray]:
    """Twin frames (N, H, W, 1) and their (x, y, on) labels in one of the eight orientations."""
    turned, f = _turned(frames, which)
    labels = labels.copy()
    labels[:, :2] = labels[:, :2] @ f.T
    return turned, labels
