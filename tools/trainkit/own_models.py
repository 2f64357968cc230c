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
recommended (the focused spot is then 3 px wide). `preprocess_stack` here (numpy only) is its
preprocessing; ``preprocess.standard_128`` is fine on the twin but its clip at twice an estimated
level merges a halo into the disc on the independent renderer (docs/model-design.md).

`wobble_physics_known` takes a second input (wobble fraction, c0 / c_f), as the daemon sets them,
and needs no radius at all: 5 to 10 times more accurate and robust to rendering, if the runtime
feeds that input and c0 / c_f is really known.

Also here, for comparison (docs/model-design.md has the numbers): `tiny_cnn64`, a small generic
CNN on 64 x 64 x 7 with global pooling."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

try:  # the registry lives in trainkit.models (another module); stay importable without it
    from trainkit.models import register_model as _register
except ImportError:  # pragma: no cover - only while models.py is absent
    _register = None

D_FOV = 1.25
THETA0_DEG = 30.0
THETA_PER_U_DEG = 150.0
WOBBLE_UNIT = 0.03
RADIUS_PER_G = 0.156
RADIUS_MIN = 0.012
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


# ---- reference preprocessing and the measuring helpers behind docs/model-design.md -------------

def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) area-averaging weights: output pixel i is the mean of the input over its span."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(math.floor(lo), min(n_in, math.ceil(hi))):
            m[i, j] = min(hi, j + 1) - max(lo, j)
        m[i] /= hi - lo
    return m


def _clamp_hot(s: np.ndarray) -> np.ndarray:
    """Each pixel capped at the brightest of its 8 neighbours, at the camera's own sampling: an
    isolated hot pixel vanishes before resampling can smear it into a cluster."""
    p = np.pad(s, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = s.shape[1:]
    nmax = None
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            if di == 1 and dj == 1:
                continue
            v = p[:, di:di + h, dj:dj + w]
            nmax = v if nmax is None else np.maximum(nmax, v)
    return np.minimum(s, nmax)


def preprocess_stack(stack: np.ndarray, side: int = 128) -> np.ndarray:
    """(7, H, W) any dtype -> (1, side, side, 7) float32, numpy only (portable to the daemon as the
    physics model's preprocessing): hot pixels capped at the camera's own sampling, the frame made
    square (rows padded with background or cropped), area-averaged to side x side, each frame's
    background (its 20th percentile: a frame is mostly background) subtracted and the frame divided
    by its 99.9th percentile above that. No clipping: the model finds the disc's plateau itself, and
    a clip (as in preprocess.standard, at 2x a level it estimates) can merge a halo into the disc."""
    s = np.asarray(stack, dtype=np.float32)
    if s.ndim != 3 or s.shape[0] != 7:
        raise ValueError(f"a wobble stack is (7, H, W), got shape {s.shape}")
    s = _clamp_hot(s)
    _, h, w = s.shape
    if h != w:  # the FOV is 1.0 wide (twin.md): pad rows with the background, or crop, symmetrically
        if h < w:
            fill = np.median(s.reshape(7, -1), axis=1)[:, None, None]
            top = (w - h) // 2
            out = np.broadcast_to(fill, (7, w, w)).copy()
            out[:, top:top + h] = s
            s = out
        else:
            top = (h - w) // 2
            s = s[:, top:top + w]
        h = w
    if h % side == 0:  # an integer factor: block means
        k = h // side
        small = s.reshape(7, side, k, side, k).mean(axis=(2, 4))
    else:
        ry = _area_matrix(h, side)
        small = np.einsum("ih,khw,jw->kij", ry, s, ry, optimize=True)
    flat = small.reshape(7, -1)
    n = flat.shape[1]
    lo_k, hi_k = n // 5, min(n - 1, round(0.999 * n))
    part = np.partition(flat, (lo_k, hi_k), axis=1)  # one partial sort for both levels
    bg = part[:, lo_k][:, None, None]
    top = part[:, hi_k][:, None, None] - bg
    small = (small - bg) / np.maximum(top, 1e-6)
    return np.transpose(small, (1, 2, 0))[None].astype(np.float32)


def to_tflite(model: keras.Model) -> bytes:
    """Float32 .tflite with builtin ops only (converter from a concrete function, batch 1)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    shape = (1, *model.input_shape[1:])
    fn = tf.function(tf.autograph.experimental.do_not_convert(lambda x: model(x, training=False)))
    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)  # weights as constants: no READ_VARIABLE ops
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv.convert()


def litert_runner(tflite: bytes, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A predict function over one LiteRT interpreter (batch 1, input (1, side, side, 7))."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp, np.ascontiguousarray(x, dtype=np.float32))
        interp.invoke()
        return interp.get_tensor(out).copy()

    return run


def litert_latency_ms(tflite: bytes, runs: int = 200) -> dict[str, float]:
    """p50 / p90 of one LiteRT invoke on one thread, ms (random input of the model's shape)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite, num_threads=1)
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    x = np.random.default_rng(0).random(d["shape"]).astype(np.float32)
    times = []
    for i in range(runs + 10):
        interp.set_tensor(d["index"], x)
        t0 = time.perf_counter()
        interp.invoke()
        if i >= 10:
            times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90))}


def accuracy(pred_units: np.ndarray, true_units: np.ndarray) -> dict[str, float]:
    """RMSE and p99 (both axes pooled) in % of the 1000-unit range, as twin.md defines them."""
    e = np.asarray(pred_units, float).reshape(-1, 2) - np.asarray(true_units, float).reshape(-1, 2)
    return {"rmse_pct": float(np.sqrt(np.mean(e**2)) / 10.0),
            "p99_pct": float(np.percentile(np.abs(e), 99) / 10.0), "n": len(e)}


# ---- the test sets behind docs/model-design.md -------------------------------------------------

QUIET_DRIFT = {"drift": {"linear_per_hour": (0, 0), "random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0,
                         "beam_shift_linear_per_hour": (0, 0), "beam_shift_random_walk_per_sqrt_hour": 0},
               "motor": {"position_noise_units": 0.0, "backlash_units": 0.0}}


def twin_set(name: str, n: int, seed: int = 7, side: int = 256, display_frames: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """`n` stacks (7, side, side) of twin preset `name` (its settings, wobble, c0 = its lens start,
    beam shift) at uniform misalignments within the preset's radius; labels delta = a* - a."""
    from temalign.clock import SteppedClock
    from temalign.twin import display
    from temalign.twin.model import Twin
    from temalign.twin.optics import wobble_values
    from temalign.twin.presets import preset

    p = preset(name)
    st = p.settings()
    over = {**QUIET_DRIFT, "camera": {"width": side, "height": side},
            "drift": {**QUIET_DRIFT["drift"], "beam_shift_start": tuple(st.drift.beam_shift_start)}}
    twin = Twin(st.updated(over), SteppedClock(), seed + p.seed_offset)
    rng = np.random.default_rng(seed + 1000 + p.seed_offset)
    xs, ys = [], []
    for _ in range(n):
        m = rng.uniform(-p.radius, p.radius, 2)
        a = twin.aligned()
        twin.move_aperture(round(a[0] + m[0]), round(a[1] + m[1]))
        frames = []
        for c in wobble_values(st.lens.start_over_cf * st.optics.c_f, p.wobble_fraction):
            twin.set_c1(float(c))
            twin.clock.advance(2.0)
            f = twin.acquire()
            frames.append(display.to_display(f, st.display) if display_frames else f)
        xs.append(np.stack(frames))
        ys.append(-np.asarray(twin.truth()["misalignment"]))
    return np.stack(xs), np.stack(ys)


def independent_stack(m: np.ndarray, c0_over_cf: float, w: float, rng: np.random.Generator,
                      side: int | None = None, display: bool | None = None) -> np.ndarray:
    """One stack from a second renderer of twin.md's geometry that shares no code with the twin's:
    tanh edge, Airy-like fringes on both sides of the edge, a halo, 1/f texture, ellipticity up to
    0.1, a background gradient, saturation, 3 hot pixels a frame, camera 192 to 512 px, and in
    40 % of stacks an auto-contrast 8-bit display with gamma 0.5 to 2."""
    side = side or int(rng.choice([192, 256, 384, 512]))
    s = rng.uniform(-0.03, 0.03, 2)
    ell, ang = rng.uniform(0, 0.1), rng.uniform(0, np.pi)
    edge, per = rng.uniform(0.001, 0.005), rng.uniform(0.008, 0.03)
    amp, dec, halo = rng.uniform(0, 0.6), rng.uniform(0.005, 0.03), rng.uniform(0, 0.05)
    n = side
    f = np.fft.fftfreq(n)
    spec = (f[:, None] ** 2 + f[None, :] ** 2 + (2.0 / n) ** 2) ** (-0.75)
    z = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * spec).real
    tex = np.exp(rng.uniform(0, 0.35) * (z - z.mean()) / z.std())
    dose = 10 ** rng.uniform(1.5, 3.5)
    grad = rng.uniform(-0.2, 0.2, 2)
    xs = (np.arange(side) + 0.5) / side - 0.5
    xx, yy = np.meshgrid(xs, xs)
    bgfield = 1 + grad[0] * xs[None, :] + grad[1] * xs[:, None]
    sat = rng.uniform(0.3, 1.0) / 0.012**2 * dose * 0.156**2
    frames = []
    for k in range(7):
        u = c0_over_cf * (1 + w * (k - 3) / 3) - 1.0
        g = u / WOBBLE_UNIT
        th = math.radians(THETA0_DEG + THETA_PER_U_DEG * u)
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        p = s + g * D_FOV * (rot @ m) / 1000.0
        r = math.hypot(abs(g) * RADIUS_PER_G, RADIUS_MIN)
        dx, dy = xx - p[0], yy - p[1]
        a = (math.cos(ang) * dx + math.sin(ang) * dy) / (1 + ell)
        b = (-math.sin(ang) * dx + math.cos(ang) * dy) * (1 + ell)
        q = np.sqrt(a * a + b * b)
        d = q - r
        prof = 0.5 * (1 - np.tanh(d / edge))
        prof = np.clip(prof * (1 + amp * min(1.0, r / 0.03) * np.exp(-np.abs(d) / dec)
                               * np.cos(2 * np.pi * d / per)), 0, None)
        prof += halo * np.exp(-0.5 * (q / (2.5 * r)) ** 2)
        img = prof / max(r, RADIUS_MIN) ** 2 * tex * dose * RADIUS_PER_G**2
        img = rng.poisson(np.clip(img, 0, 1e9)).astype(np.float64) if dose < 1e4 else img
        img = np.minimum(img + 50 * bgfield + rng.normal(0, rng.uniform(1, 8), img.shape), sat)
        hot = rng.integers(0, side, (3, 2))
        img[hot[:, 0], hot[:, 1]] = sat
        frames.append(img)
    st = np.stack(frames)
    if display if display is not None else rng.uniform() < 0.4:
        gam = rng.uniform(0.5, 2.0)
        lo, hi = np.percentile(st, [1, 99.7], axis=(1, 2))
        st = np.rint(255 * np.clip((st - lo[:, None, None]) / (hi - lo)[:, None, None], 0, 1) ** (1 / gam))
    return st.astype(np.float32)


INDEPENDENT_SETS = {"ind_default": (1.0, 0.03, 240.0), "ind_n6": (1.02, 0.02, 200.0),
                    "ind_far": (1.0, 0.03, 400.0), "ind_w4_c099": (0.99, 0.04, 240.0)}
"""(c0 / c_f, wobble fraction, misalignment radius) of the independent-renderer sets."""


def independent_set(name: str, n: int, seed: int = 100, display: bool | None = None
                    ) -> tuple[list[np.ndarray], np.ndarray]:
    """`n` stacks of `independent_stack` (cameras of mixed sizes, hence a list) and their labels."""
    c0, w, radius = INDEPENDENT_SETS[name]
    rng = np.random.default_rng([seed, list(INDEPENDENT_SETS).index(name)])
    xs, ys = [], []
    for _ in range(n):
        m = rng.uniform(-radius, radius, 2)
        xs.append(independent_stack(m, c0, w, rng, display=display))
        ys.append(-m)
    return xs, np.stack(ys)


def evaluate_design(model: keras.Model, side: int = 128, n_twin: int = 200, n_ind: int = 100,
                    preprocess: Callable[[np.ndarray, int], np.ndarray] = preprocess_stack
                    ) -> dict[str, dict[str, float]]:
    """The table of docs/model-design.md for one single-input model: the twin presets and the
    independent renderer's sets, accuracy in % of 1000 units (OUTPUT_SCALE applied)."""
    sets: dict[str, tuple[Any, np.ndarray]] = {}
    for name in ("n13", "n6", "far", "low-dose", "large-aperture"):
        sets[name] = twin_set(name, n_twin)
    sets["n13-display"] = twin_set("n13", n_twin // 2, display_frames=True)
    for name in INDEPENDENT_SETS:
        sets[name] = independent_set(name, n_ind)
    out = {}
    for name, (stacks, labels) in sets.items():
        x = np.concatenate([preprocess(s, side) for s in stacks])
        out[name] = accuracy(np.asarray(model.predict(x, verbose=0)) * OUTPUT_SCALE, labels)
    return out
