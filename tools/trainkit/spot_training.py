"""Training the spot network (trainkit.spotnet) on per-frame labels (trainkit.spot_data).

Every frame is its own example (the network reads frames one at a time), shuffled across stacks,
in the eight orientations of the square (flips and transposes map the true centre exactly): a
column's rotation and mirror are then nothing new.

The loss, per frame:
* where the true centre is on the detector, a Huber loss of the distance between the predicted
  and the true centre (in units of POSITION_SCALE, linear beyond one unit: a frame the network
  cannot read pulls no harder than a frame it misreads a little);
* for every frame, the confidence learns to predict whether the centre came out right: its
  target is exp(-(distance / CONFIDENCE_SCALE)^2) on the detector, 0 off it (cross-entropy on the
  logit; the target does not feed back into the centre)."""

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

from trainkit import spotnet

POSITION_SCALE = 0.004
"""FOV: about half a pixel at 128 px; errors beyond it count linearly."""
CONFIDENCE_SCALE = 0.01
"""FOV: a centre this far off is worth e^-1 of a right one."""
CONFIDENCE_WEIGHT = 0.3


def _distance(y_true: Any, y_pred: Any) -> Any:
    """Each frame's distance (FOV) between the predicted and the true centre."""
    err = y_pred[:, :2] - y_true[:, :2]
    return tf.sqrt(tf.reduce_sum(err * err, axis=-1) + 1e-12)


def frame_loss(y_true: Any, y_pred: Any) -> Any:
    """y_true (N, 3): true x, y and whether the centre is on the detector; y_pred (N, 3): x, y,
    confidence logit."""
    dist = _distance(y_true, y_pred)
    on = y_true[:, 2]
    scaled = dist / POSITION_SCALE
    huber = tf.where(scaled < 1.0, 0.5 * scaled * scaled, scaled - 0.5)
    position = tf.reduce_sum(on * huber) / (tf.reduce_sum(on) + 1.0)
    target = tf.stop_gradient(on * tf.exp(-tf.square(dist / CONFIDENCE_SCALE)))
    confidence = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=y_pred[:, 2]))
    return position + CONFIDENCE_WEIGHT * confidence


def centre_error(y_true: Any, y_pred: Any) -> Any:
    """Mean distance (FOV) over the frames whose centre is on the detector: the metric to watch."""
    on = y_true[:, 2]
    return tf.reduce_sum(on * _distance(y_true, y_pred)) / (tf.reduce_sum(on) + 1e-6)


def frames_of(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N * 7, side, side, 1) float16 frames and (N * 7, 3) labels (x, y, on the detector)."""
    x = arrays["x"]
    n, side = x.shape[0], x.shape[1]
    frames = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n * spotnet.FRAMES, side, side, 1)
    labels = np.concatenate([arrays["centres"].reshape(-1, 2),
                             arrays["visible"].reshape(-1, 1).astype(np.float32)], axis=1)
    return frames, labels.astype(np.float32)


def _orient(frame: Any, label: Any, seed: Any) -> tuple[Any, Any]:
    """One of the square's eight orientations, the label with it."""
    bits = tf.random.stateless_uniform([3], seed=seed, maxval=2, dtype=tf.int32)
    x, y, on = label[0], label[1], label[2]
    frame = tf.cond(bits[0] > 0, lambda: tf.reverse(frame, axis=[1]), lambda: frame)
    x = tf.where(bits[0] > 0, -x, x)
    frame = tf.cond(bits[1] > 0, lambda: tf.reverse(frame, axis=[0]), lambda: frame)
    y = tf.where(bits[1] > 0, -y, y)
    frame = tf.cond(bits[2] > 0, lambda: tf.transpose(frame, (1, 0, 2)), lambda: frame)
    x, y = tf.where(bits[2] > 0, y, x), tf.where(bits[2] > 0, x, y)
    return frame, tf.stack([x, y, on])


def dataset(frames: np.ndarray, labels: np.ndarray, batch: int, seed: int, *,
            augment: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((frames, labels))
    if augment:
        ds = ds.shuffle(len(frames), seed=seed, reshuffle_each_iteration=True)
        counter = tf.data.Dataset.counter(start=seed * 1_000_003)
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda fl, i: _orient(tf.cast(fl[0], tf.float32), fl[1], tf.stack([i, i // 7 + 1])),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda f, lab: (tf.cast(f, tf.float32), lab))
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


class Progress(keras.callbacks.Callback):
    """One line per epoch: losses, centre error in pixels at 128 px, time left."""

    def __init__(self, epochs: int, say: Callable[[str], None]) -> None:
        super().__init__()
        self.epochs, self.say, self.start = epochs, say, time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        done = epoch + 1
        elapsed = time.monotonic() - self.start
        left = elapsed / done * (self.epochs - done)
        val = logs.get("val_centre_error")
        self.say(f"epoch {done}/{self.epochs}: loss {logs.get('loss', math.nan):.3f}, centre error "
                 f"{128 * logs.get('centre_error', math.nan):.2f} px"
                 + (f" (held out {128 * val:.2f} px)" if val is not None else "")
                 + f", {elapsed:.0f} s, about {left:.0f} s left")


@dataclass(frozen=True)
class SpotTraining:
    epochs: int = 20
    batch: int = 64
    learning_rate: float = 2e-3
    width: int = 16
    seed: int = 0
    kind: str = "plain"


def train(train_arrays: dict[str, np.ndarray], held_out: dict[str, np.ndarray] | None, cfg: SpotTraining,
          say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)
          ) -> tuple[keras.Model, dict[str, list[float]]]:
    """The trained per-frame model and its history."""
    keras.utils.set_random_seed(cfg.seed)
    side = int(train_arrays["x"].shape[1])
    frames, labels = frames_of(train_arrays)
    model = spotnet.frame_trunk(side, cfg.width, cfg.kind)
    steps = math.ceil(len(frames) / cfg.batch) * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps, alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=frame_loss, metrics=[centre_error])
    validation = None
    if held_out is not None:
        vf, vl = frames_of(held_out)
        validation = dataset(vf, vl, 256, cfg.seed, augment=False)
    history = model.fit(dataset(frames, labels, cfg.batch, cfg.seed, augment=True), epochs=cfg.epochs,
                        validation_data=validation, verbose=0, shuffle=False,  # the dataset shuffles
                        callbacks=[Progress(cfg.epochs, say)])
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items()}
