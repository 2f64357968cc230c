"""Our own estimator designs: far smaller and cheaper than the paper's CNN, and built to transfer.

Recommended: `wobble_physics` (6 trainable scalars, 0.17 MB .tflite at 128 px). It does what the
images are: in each frame it measures the disc (a soft threshold at a fraction of the disc's own
plateau, so any per-frame scaling, display LUT or gamma leaves it unchanged), takes its centroid
``p_k`` and its equivalent radius ``r_k``, and then solves the normative geometry of twin.md in
closed form:

* the radius law ``r = sqrt((|g| 0.156)^2 + 0.012^2)`` gives ``g_k^2``; the wobble is linear in k,
  so ``g_k = alpha + beta * tau_k`` (``tau_k = (k - 3) / 3``): each stack tells its own wobble
  fraction and centre (c0), and a wobble never seen (the N 6-like 2 % at c0 = 1.02 c_f) needs no
  retraining. Two fits of (alpha, beta) that fail differently are mixed (``fit="blend"``), the
  first when all 7 frames are usable, the second when 5 or fewer are (``mix="count"``):
  ``g^2`` as a quadratic in tau by weighted least squares (its free constant absorbs a bias of the
  apparent size; fragile when only three frames are usable and the focused spot looks too big, as
  on an auto-contrast display), and a straight line through the signed ``|g|`` of the frames whose
  disc is large enough (the sign from the side of the smallest disc; blind to the focused spot's
  apparent size, sensitive to a size bias);
* with complex positions ``P_k = S + G_k M``, ``G_k = g_k D exp(i theta(0.03 g_k))``, the
  misalignment ``M`` is a weighted complex linear regression with intercept (the unknown beam
  shift ``S``): a handful of elementwise ops and sums, all builtin TFLite ops;
* every frame carries a weight from two quality checks: the share of the disc's outline on the
  detector's border (a cut disc's centroid is biased) and its scatter (second moment against a
  disc's ``r^2 / 2``: a frame with no beam, or noise only, is not a disc). The far set's outer
  frames drop out and the inner ones carry the fit.

What can be learnt: the threshold, a radius gain and offset (renderings blur and ring the edge
differently), D's gain and theta's offset (a column's camera rotation and magnification: the
daemon's two-move calibration could set these directly), and the output gain. They start at the
physics' values, so the untrained model is the estimator (docs/model-design.md: training them
with MSE on a broad random mix made every set worse; ship it untrained, or calibrate with a robust
loss on in-distribution stacks). Output: ``delta / 1000`` (x, y), so the card's
``output_scale`` is 1000.

Input: one stack ``(side, side, 7)`` float32 with the frames in wobble order (C1 ascending),
background removed (about 0 off the disc), any positive per-frame scale, NOT clipped; 128 px
recommended (the focused spot is then 3 px wide). Its preprocessing is the runtime's
``temalign.estimate.preprocess.physics_128`` (numpy only); ``preprocess.standard_128`` is fine on the
twin but its clip at twice an estimated level merges a halo into the disc on the independent
renderer (docs/model-design.md). The geometry's constants are ``temalign.optics``'s; the test
sets and the evaluation behind the design note are in ``trainkit.evaluation``.

`wobble_physics_known` takes a second input (wobble fraction, c0 / c_f), as the daemon sets them,
and needs no radius at all: 5 to 10 times more accurate and robust to rendering, if the runtime
feeds that input and c0 / c_f is really known.

Also here, for comparison (docs/model-design.md has the numbers): `tiny_cnn64`, a small generic
CNN on 64 x 64 x 7 with global pooling."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from temalign.optics import D_FOV, RADIUS_MIN, RADIUS_PER_G, THETA0_DEG, THETA_PER_U_DEG, WOBBLE_UNIT

try:  # the registry lives in trainkit.models (another module); stay importable without it
    from trainkit.models import register_model as _register
except ImportError:  # pragma: no cover - only while models.py is absent
    _register = None

OUTPUT_SCALE = 1000.0
"""Model output times this is delta in motor units."""


@keras.saving.register_keras_serializable(package="temalign")
class WobblePhysics(layers.Layer):
    """Per-frame disc measurement and the closed-form geometry solve (see the module docstring)."""

    def __init__(self, ramp: float = 0.3, ridge: float = 0.01, border_gain: float = 10.0,
                 r_min: float = 0.025, fit: str = "blend", floor: float = 1.0,
                 mix: str = "count", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mix = mix
        self.fit = fit
        self.floor = floor
        self.r_min = r_min
        self.ramp = ramp
        self.ridge = ridge
        self.border_gain = border_gain

    def build(self, input_shape: Sequence[int]) -> None:
        def scalar(name: str, value: float) -> Any:
            return self.add_weight(name=name, shape=(), initializer=keras.initializers.Constant(value))

        self.threshold = scalar("threshold", 0.5)
        self.r_gain = scalar("r_gain", 1.0)
        self.r_offset = scalar("r_offset", 0.0)
        self.d_gain = scalar("d_gain", 1.0)
        self.theta_offset = scalar("theta_offset", 0.0)
        self.out_gain = scalar("out_gain", 1.0)
        if isinstance(input_shape[0], list | tuple):
            input_shape = input_shape[0]  # [stack, wobble]
        side_y, side_x = int(input_shape[1]), int(input_shape[2])
        self._sx, self._sy = side_x, side_y
        xs = ((np.arange(side_x) + 0.5) / side_x - 0.5).astype(np.float32)
        ys = ((np.arange(side_y) + 0.5) / side_x - 0.5 * side_y / side_x).astype(np.float32)
        self._xgrid = xs.reshape(1, 1, side_x, 1)
        self._ygrid = ys.reshape(1, side_y, 1, 1)
        ring = np.zeros((1, side_y, side_x, 1), np.float32)
        ring[:, 0, :] = ring[:, -1, :] = 1.0
        ring[:, :, 0] = ring[:, :, -1] = 1.0
        self._ring = ring
        self._tau = ((np.arange(7) - 3.0) / 3.0).astype(np.float32).reshape(1, 7)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ramp": self.ramp, "ridge": self.ridge,
                "border_gain": self.border_gain, "r_min": self.r_min, "fit": self.fit, "floor": self.floor,
                "mix": self.mix}

    def measure(self, x: Any) -> tuple[Any, Any, Any, Any]:
        """Per-frame centroid (FOV), radius (FOV) and quality weight, each (B, 7)."""
        h, w = self._sy, self._sx
        p = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        nmax = None
        for di in (0, 1, 2):
            for dj in (0, 1, 2):
                if di == 1 and dj == 1:
                    continue
                v = p[:, di:di + h, dj:dj + w, :]
                nmax = v if nmax is None else ops.maximum(nmax, v)
        clean = ops.minimum(x, nmax)  # an isolated hot pixel takes its brightest neighbour's value
        sm = ops.average_pool(clean, 3, strides=1, padding="same")
        # the disc's level from the 2x2-eroded frame (a cluster of a few hot pixels, as resampling a
        # hot pixel by a non-integer factor makes, cannot set it), then the mean over the disc with
        # values capped at that peak, so such a cluster cannot inflate it either
        eroded = -ops.max_pool(-sm, 2, strides=1, padding="same")
        peak = ops.max(eroded, axis=(1, 2), keepdims=True)
        first = ops.cast(ops.greater(sm, 0.3 * peak), "float32")
        plateau = ops.sum(ops.minimum(sm, peak) * first, axis=(1, 2), keepdims=True) / (
            ops.sum(first, axis=(1, 2), keepdims=True) + 1e-6)
        rel = sm / (plateau + 1e-12)
        mask = ops.clip((rel - self.threshold) / self.ramp + 0.5, 0.0, 1.0)
        area = ops.sum(mask, axis=(1, 2)) + 1e-3  # (B, 7) pixels
        cx = ops.sum(mask * self._xgrid, axis=(1, 2)) / area
        cy = ops.sum(mask * self._ygrid, axis=(1, 2)) / area
        r_px = ops.sqrt(area / math.pi)
        r = r_px / w
        var = ops.sum(mask * (ops.square(self._xgrid) + ops.square(self._ygrid)), axis=(1, 2)) / area - (
            ops.square(cx) + ops.square(cy))
        scatter = 2.0 * var / (ops.square(r) + 1e-9)
        w_scatter = ops.clip(2.0 - scatter, 0.0, 1.0)
        cut = ops.sum(mask * self._ring, axis=(1, 2)) / (2.0 * math.pi * r_px + 1.0)
        w_border = ops.square(ops.clip(1.0 - self.border_gain * cut, 0.0, 1.0))
        weight = w_scatter * w_border + 1e-4
        r = r * self.r_gain + self.r_offset
        return cx, cy, r, weight

    def _quadratic(self, hsq: Any, wt: Any) -> tuple[Any, Any]:
        """g^2 = (alpha + beta tau)^2 = A + B tau + C tau^2 by weighted least squares (Cramer's rule,
        a weak ridge towards the 3 % centred wobble (0, 0, 1)); beta = sqrt(C), alpha = B / 2 beta."""
        tau = self._tau
        lam = self.ridge
        f = (ops.ones_like(tau), tau, tau * tau)
        n = [[ops.sum(wt * f[i] * f[j], axis=1) + (lam if i == j else 0.0) for j in range(3)]
             for i in range(3)]
        q = [ops.sum(wt * f[i] * hsq, axis=1) + (lam if i == 2 else 0.0) for i in range(3)]

        def det3(m: Sequence[Sequence[Any]]) -> Any:
            return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                    - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                    + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

        den = det3(n)
        coef_b = det3([[n[i][0], q[i], n[i][2]] for i in range(3)]) / den
        coef_c = ops.maximum(det3([[n[i][0], n[i][1], q[i]] for i in range(3)]) / den, 0.01)
        beta = ops.sqrt(coef_c)
        return coef_b / (2.0 * beta), beta

    def call(self, inputs: Any) -> Any:
        known = isinstance(inputs, list | tuple)
        x = inputs[0] if known else inputs
        cx, cy, r, wt = self.measure(x)
        tau = self._tau
        if known:  # (wobble fraction, c0 / c_f) given: g_k exactly, the radius is not needed
            wob = inputs[1]
            u = wob[:, 1:2] * (1.0 + wob[:, 0:1] * tau) - 1.0
            return self._solve(u / WOBBLE_UNIT, cx, cy, wt)
        hsq = (ops.square(r) - RADIUS_MIN**2) / RADIUS_PER_G**2  # g_k^2 from the radius law
        # |g| from the radius; the sign from the side of the focus (the smallest valid disc) the
        # frame lies on; then the line g = alpha + beta * tau through the frames whose disc is
        # large enough for its radius to mean something (near focus a display's white point, a
        # halo or the blur set the apparent size, not the optics)
        focus = ops.softmax(-r / 0.01 + ops.log(wt), axis=1)
        tau_f = ops.sum(focus * tau, axis=1, keepdims=True)
        sign = ops.tanh((tau - tau_f) / 0.05)
        g_signed = sign * ops.sqrt(ops.maximum(hsq, 0.0))
        v = wt * ops.clip((r - self.r_min) / 0.02, 0.0, 1.0)
        if self.fit in ("linear", "blend"):
            lam = self.ridge  # a weak pull towards the 3 % centred wobble: decides a degenerate stack
            s0, s1 = ops.sum(v, axis=1) + lam, ops.sum(v * tau, axis=1)
            s2 = ops.sum(v * tau * tau, axis=1) + lam
            q0 = ops.sum(v * g_signed, axis=1)
            q1 = ops.sum(v * tau * g_signed, axis=1) + lam
            det = s0 * s2 - s1 * s1
            alpha = (q0 * s2 - q1 * s1) / det
            beta = (s0 * q1 - s1 * q0) / det
            if self.fit == "blend":  # the two fits fail differently: mix them
                alpha_q, beta_q = self._quadratic(hsq, wt)
                # mix="count": the quadratic when all 7 frames are usable, the line at 5 or fewer
                k = ops.clip(ops.sum(wt, axis=1) - 5.0, 0.0, 1.0) if self.mix == "count" else 0.5
                alpha, beta = (1.0 - k) * alpha + k * alpha_q, (1.0 - k) * beta + k * beta_q
        else:
            alpha, beta = self._quadratic(hsq, wt * (self.floor + (1.0 - self.floor) * v / wt))
        g = ops.expand_dims(alpha, 1) + ops.expand_dims(beta, 1) * tau  # (B, 7)
        return self._solve(g, cx, cy, wt)

    def _solve(self, g: Any, cx: Any, cy: Any, wt: Any) -> Any:
        """M from P_k = S + g_k D exp(i theta_k) M by weighted complex regression; returns -M."""
        theta = (math.radians(THETA0_DEG) + self.theta_offset
                 + math.radians(THETA_PER_U_DEG) * WOBBLE_UNIT * g)
        amp = g * (D_FOV * self.d_gain)
        gr, gi = amp * ops.cos(theta), amp * ops.sin(theta)
        wn = wt / ops.sum(wt, axis=1, keepdims=True)

        def centred(v: Any) -> Any:
            return v - ops.sum(wn * v, axis=1, keepdims=True)

        gr, gi, px, py = centred(gr), centred(gi), centred(cx), centred(cy)
        den2 = ops.sum(wn * (gr * gr + gi * gi), axis=1) + 1e-6
        mx = ops.sum(wn * (gr * px + gi * py), axis=1) / den2
        my = ops.sum(wn * (gr * py - gi * px), axis=1) / den2
        delta = -ops.stack([mx, my], axis=1) * self.out_gain
        return ops.clip(delta, -2.0, 2.0)


def _compile(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse",
                  metrics=[keras.metrics.RootMeanSquaredError(name="rmse")])
    return model


def wobble_physics(input_shape: Sequence[int] = (128, 128, 7), output_dim: int = 2, *,
                   learning_rate: float = 0.003, **options: Any) -> keras.Model:
    """The recommended design: a measured disc per frame and the twin.md geometry solved per stack.

    Output is delta / 1000 (OUTPUT_SCALE); 6 trainable scalars; input (side, side, 7)."""
    if output_dim != 2:
        raise ValueError("wobble_physics predicts (dx, dy): output_dim must be 2")
    known = {"ramp", "ridge", "border_gain", "r_min", "fit", "floor", "mix"}
    inputs = keras.Input(shape=tuple(input_shape), name="stack")
    out = WobblePhysics(**{k: v for k, v in options.items() if k in known}, name="physics")(inputs)
    return _compile(keras.Model(inputs, out, name="wobble_physics"), learning_rate)


def wobble_physics_known(input_shape: Sequence[int] = (128, 128, 7), output_dim: int = 2, *,
                         learning_rate: float = 0.003, **options: Any) -> keras.Model:
    """`wobble_physics` told the wobble: a second input (1, 2) = (wobble fraction, c0 / c_f), as
    the daemon sets them, gives each frame's g exactly; only the centroids are measured."""
    if output_dim != 2:
        raise ValueError("wobble_physics_known predicts (dx, dy): output_dim must be 2")
    known = {"ramp", "border_gain"}
    stack = keras.Input(shape=tuple(input_shape), name="stack")
    wobble = keras.Input(shape=(2,), name="wobble")
    layer = WobblePhysics(**{k: v for k, v in options.items() if k in known}, name="physics")
    out = layer([stack, wobble])
    return _compile(keras.Model([stack, wobble], out, name="wobble_physics_known"), learning_rate)


def tiny_cnn64(input_shape: Sequence[int] = (64, 64, 7), output_dim: int = 2, *,
               learning_rate: float = 0.002, width: int = 16, **_: Any) -> keras.Model:
    """A generic small CNN for comparison: 4 strided conv blocks, global average pooling, a
    dense head. Output delta / 1000."""
    inputs = keras.Input(shape=tuple(input_shape), name="stack")
    x = inputs
    for i, f in enumerate((width, 2 * width, 2 * width, 4 * width)):
        x = layers.Conv2D(f, 3, strides=2 if i else 1, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(64, activation="relu")(x)
    out = layers.Dense(output_dim)(x)
    return _compile(keras.Model(inputs, out, name="tiny_cnn64"), learning_rate)


MODELS_OWN: dict[str, Callable[..., keras.Model]] = {
    "wobble_physics": wobble_physics,
    "wobble_physics_known": wobble_physics_known,
    "tiny_cnn64": tiny_cnn64,
}
if _register is not None:
    for _name, _builder in MODELS_OWN.items():
        _register(_name, _builder, replace=True)
