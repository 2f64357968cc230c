"""The test sets and the evaluation behind docs/model-design.md (tools/trainkit/own_models.py's
designs, or any single-input model with a (dx, dy) output).

* `twin_set`: stacks of a twin preset (its settings, wobble, c0 and beam shift; drift quiet so the
  label is the truth), misalignments uniform within the preset's radius.
* `independent_stack` / `independent_set`: a second renderer of twin.md's geometry that shares no
  rendering code with the twin (only the normative constants of `temalign.optics`).
* `evaluate_design`: both kinds of set, preprocessed (default: the runtime's
  `temalign.estimate.preprocess.physics`), predicted with Keras, and scored with `trainkit.metrics`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import keras
import numpy as np

from temalign.estimate.preprocess import physics
from temalign.optics import D_FOV, RADIUS_MIN, RADIUS_PER_G, THETA0_DEG, THETA_PER_U_DEG, WOBBLE_UNIT
from temalign_twin.settings import NO_DRIFT
from trainkit.metrics import p99_percent, rmse_percent
from trainkit.own_models import OUTPUT_SCALE

QUIET_DRIFT = {**NO_DRIFT,
               "motor": {"position_noise_units": 0.0, "backlash_units": 0.0}}


def twin_set(name: str, n: int, seed: int = 7, side: int = 256, display_frames: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """`n` stacks (7, side, side) of twin preset `name` (its settings, wobble, c0 = its lens start,
    beam shift) at uniform misalignments within the preset's radius; labels delta = a* - a."""
    from temalign.clock import SteppedClock
    from temalign.optics import wobble_values
    from temalign_twin import display
    from temalign_twin.model import Twin
    from temalign_twin.presets import preset

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
TWIN_SETS = ("n13", "n6", "far", "low-dose", "large-aperture", "n13-display")
"""The twin presets of the table (n13-display: n13 through the 8-bit display, half as many stacks)."""
SET_NAMES = (*TWIN_SETS, *INDEPENDENT_SETS)


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
                    preprocess: Callable[[np.ndarray, int], np.ndarray] = physics,
                    output_scale: float = OUTPUT_SCALE, sets: Iterable[str] | None = None
                    ) -> dict[str, dict[str, float]]:
    """The table of docs/model-design.md for one single-input model: the twin presets and the
    independent renderer's sets (`sets` names a subset, default all of `SET_NAMES`), RMSE and p99 in
    % of 1000 units (trainkit.metrics) of the model's output times `output_scale`."""
    names = list(SET_NAMES if sets is None else sets)
    unknown = sorted(set(names) - set(SET_NAMES))
    if unknown:
        raise ValueError(f"unknown sets {unknown}; known: {', '.join(SET_NAMES)}")
    out = {}
    for name in names:
        if name in INDEPENDENT_SETS:
            stacks, labels = independent_set(name, n_ind)
        elif name == "n13-display":
            stacks, labels = twin_set("n13", n_twin // 2, display_frames=True)
        else:
            stacks, labels = twin_set(name, n_twin)
        x = np.concatenate([preprocess(s, side) for s in stacks])
        pred = np.asarray(model.predict(x, verbose=0)) * output_scale
        out[name] = {"rmse_percent": rmse_percent(pred, labels), "p99_percent": p99_percent(pred, labels),
                     "samples": len(labels)}
    return out
