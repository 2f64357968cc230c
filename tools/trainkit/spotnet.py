"""The spot network: a learned CNN that finds the beam's spot in each frame of a wobble stack.

Why this shape (docs/model-design.md). The images show a disc per frame whose centre walks along a
line as C1 changes; the walk's slope is linear in the misalignment, and the column's calibration
(measured by `temalign calibrate`) maps it to motor units. So the network does what the images can
tell, and nothing a column changes: for each frame it predicts the spot's centre (FOV, twin.md's
detector coordinates) and how far that centre can be trusted. The daemon then fits the walk
against the C1 values it set (temalign/estimate/walk.py, the fit the classical estimator uses) and
maps it through the calibration. Any wobble, c0, magnification, rotation and mirror composes; no
wobble is baked into the weights; a column the network never saw is just other discs.

Per frame (shared weights, every frame alone):
* four learned convolutions (128 -> 64 -> 32 px, then two dilated ones that see a whole disc),
  leaky ReLU as the paper's A.2 found best;
* a heat map over a 32 x 32 grid with a learned sub-cell offset per cell: the centre is the
  soft-argmax, sum_i softmax(h)_i (cell_i + offset_i) (differentiable, sub-pixel, bounded);
* a confidence logit from the pooled features: low for a disc that left the detector, no beam,
  a frame the network cannot read.

Input `(side, side, 7)` from `temalign.estimate.preprocess.spots_128`; output `(7, 3)` flattened
to 21 values: x, y (FOV) and the confidence logit of each frame, in wobble order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

FRAMES = 7
OUTPUTS_PER_FRAME = 3


@keras.saving.register_keras_serializable(package="temalign")
class FramesAsBatch(layers.Layer):
    """(B, H, W, 7) -> (B * 7, H, W, 1): every frame through the same per-frame layers."""

    def call(self, x: Any) -> Any:
        shape = ops.shape(x)
        frames = ops.transpose(x, (0, 3, 1, 2))
        return ops.reshape(frames, (-1, shape[1], shape[2], 1))


@keras.saving.register_keras_serializable(package="temalign")
class FramesPerStack(layers.Layer):
    """(B * 7, 3) -> (B, 21): the per-frame answers back in one row per stack."""

    def call(self, x: Any) -> Any:
        return ops.reshape(x, (-1, FRAMES * OUTPUTS_PER_FRAME))


@keras.saving.register_keras_serializable(package="temalign")
class SoftArgmax(layers.Layer):
    """(N, G, G, 3) heat map, x offset, y offset -> (N, 2) centre in FOV (x right, y down, 0 at the
    image centre): the softmax-weighted mean of each cell's centre plus its offset (in cells)."""

    def build(self, input_shape: Sequence[int]) -> None:
        grid = int(input_shape[1])
        centres = (np.arange(grid, dtype=np.float32) + 0.5) / grid - 0.5
        self.grid = grid
        self.cx = np.tile(centres[None, :], (grid, 1)).reshape(1, grid * grid)
        self.cy = np.tile(centres[:, None], (1, grid)).reshape(1, grid * grid)

    def call(self, x: Any) -> Any:
        n = self.grid * self.grid
        flat = ops.reshape(x, (-1, n, 3))
        p = ops.softmax(flat[:, :, 0], axis=-1)
        cell = 1.0 / self.grid
        px = ops.sum(p * (self.cx + cell * flat[:, :, 1]), axis=-1)
        py = ops.sum(p * (self.cy + cell * flat[:, :, 2]), axis=-1)
        return ops.stack([px, py], axis=-1)


VARIANTS = ("plain", "separable")


def frame_trunk(side: int = 128, width: int = 16, kind: str = "plain") -> keras.Model:
    """One frame (side, side, 1) -> (x, y, confidence logit). `kind`: "plain" (the shipped one: four
    convolutions, the last two dilated) or "separable" (depthwise-separable convolutions, three
    dilated ones: twice the width and receptive field at about the same cost)."""
    if kind not in VARIANTS:
        raise ValueError(f"unknown spot network variant {kind!r}; known: {', '.join(VARIANTS)}")
    frame = keras.Input(shape=(side, side, 1), name="frame")
    act = {"activation": "leaky_relu", "padding": "same"}
    x = layers.Conv2D(width // 2, 5, strides=2, name="c1", **act)(frame)
    if kind == "plain":
        x = layers.Conv2D(width, 3, strides=2, name="c2", **act)(x)
        x = layers.Conv2D(width, 3, dilation_rate=2, name="c3", **act)(x)
        x = layers.Conv2D(width, 3, dilation_rate=4, name="c4", **act)(x)
    else:
        x = layers.SeparableConv2D(width, 3, strides=2, name="c2", **act)(x)
        for i, rate in enumerate((2, 4, 8)):
            x = layers.SeparableConv2D(width, 3, dilation_rate=rate, name=f"c{3 + i}", **act)(x)
    heat = layers.Conv2D(3, 1, name="heat")(x)
    centre = SoftArgmax(name="centre")(heat)
    pooled = layers.Concatenate()([layers.GlobalMaxPooling2D()(x), layers.GlobalAveragePooling2D()(x),
                                   layers.GlobalMaxPooling2D()(heat)])
    h = layers.Dense(16, activation="leaky_relu", name="conf1")(pooled)
    confidence = layers.Dense(1, name="confidence")(h)
    out = layers.Concatenate(name="frame_out")([centre, confidence])
    return keras.Model(frame, out, name="spot_frame")


def stack_model(frame_model: keras.Model, side: int = 128) -> keras.Model:
    """The whole stack (side, side, 7) -> 21 values, around a trained per-frame model."""
    stack = keras.Input(shape=(side, side, FRAMES), name="stack")
    per_frame = frame_model(FramesAsBatch(name="frames")(stack))
    return keras.Model(stack, FramesPerStack(name="spots")(per_frame), name="spotnet")
