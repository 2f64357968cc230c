"""Our own designs (tools/trainkit/own_models.py): each builds, is as small as claimed, converts to
builtin-op TFLite, runs in LiteRT like Keras, and the physics model reads a twin stack correctly;
the evaluation behind docs/model-design.md (tools/trainkit/evaluation.py) runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason='needs the [train] extra: pip install -e ".[train]"')

from trainkit import evaluation as ev
from trainkit import own_models as om
from trainkit.conversion import LiteModel, convert, latency, non_builtin_ops

from temalign.clock import SteppedClock
from temalign.estimate.preprocess import physics
from temalign.optics import wobble_values
from temalign_twin.model import Twin
from temalign_twin.settings import TwinSettings

SIDE = 64
QUIET = {"camera": {"width": SIDE, "height": SIDE},
         "drift": {"linear_per_hour": (0, 0), "random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0,
                   "beam_shift_linear_per_hour": (0, 0), "beam_shift_random_walk_per_sqrt_hour": 0},
         "motor": {"position_noise_units": 0.0, "backlash_units": 0.0}}


def _twin_stack(m: tuple[float, float], c0_over_cf: float, w: float, seed: int = 3
                ) -> tuple[np.ndarray, np.ndarray]:
    twin = Twin(TwinSettings().updated(QUIET), SteppedClock(), seed)
    a = twin.aligned()
    twin.move_aperture(round(a[0] + m[0]), round(a[1] + m[1]))
    frames = []
    for c in wobble_values(c0_over_cf * twin.settings.optics.c_f, w):
        twin.set_c1(float(c))
        twin.clock.advance(2.0)
        frames.append(twin.acquire())
    return np.stack(frames), -np.asarray(twin.truth()["misalignment"])


def test_registered_under_their_names() -> None:
    assert {"wobble_physics", "wobble_physics_known", "tiny_cnn64"} <= set(om.MODELS_OWN)
    models = pytest.importorskip("trainkit.models")
    assert {"wobble_physics", "tiny_cnn64"} <= set(models.model_names())


def test_wobble_physics_is_tiny_converts_and_matches_litert() -> None:
    model = om.wobble_physics((SIDE, SIDE, 7))
    assert model.count_params() == 6
    stack, _ = _twin_stack((120.0, -80.0), 1.0, 0.03)
    x = physics(stack, SIDE)
    assert x.shape == (1, SIDE, SIDE, 7) and x.dtype == np.float32
    keras_out = np.asarray(model.predict(x, verbose=0))
    assert keras_out.shape == (1, 2)
    tflite = convert(model)
    assert len(tflite) < 4 * 2**20
    assert non_builtin_ops(tflite) == []
    lite_out = LiteModel(tflite)(x)
    assert np.max(np.abs(lite_out - keras_out)) * om.OUTPUT_SCALE < 0.05  # motor units
    assert latency(tflite, x, repeats=5, warmup=1)["p50"] > 0.0


@pytest.mark.parametrize(("m", "c0", "w"), [((150.0, -90.0), 1.0, 0.03),   # the paper's usual wobble
                                            ((-120.0, 60.0), 1.02, 0.02)])  # N 6-like, never trained on
def test_wobble_physics_reads_a_twin_stack(m: tuple[float, float], c0: float, w: float) -> None:
    stack, delta = _twin_stack(m, c0, w)
    pred = om.wobble_physics((SIDE, SIDE, 7)).predict(physics(stack, SIDE), verbose=0)
    assert np.max(np.abs(pred[0] * om.OUTPUT_SCALE - delta)) < 10.0  # 1 % of the range, at 64 px


def test_known_wobble_variant_uses_its_second_input() -> None:
    stack, delta = _twin_stack((-100.0, 140.0), 1.02, 0.02)
    model = om.wobble_physics_known((SIDE, SIDE, 7))
    pred = model.predict([physics(stack, SIDE), np.array([[0.02, 1.02]], np.float32)],
                         verbose=0)
    assert np.max(np.abs(pred[0] * om.OUTPUT_SCALE - delta)) < 5.0


def test_tiny_cnn_builds_small_and_converts() -> None:
    model = om.tiny_cnn64((SIDE, SIDE, 7))
    assert model.count_params() < 100_000
    out = LiteModel(convert(model))(np.zeros((1, SIDE, SIDE, 7), np.float32))
    assert out.shape == (1, 2)


def test_the_geometry_is_the_twins() -> None:
    from temalign import optics

    for name in ("D_FOV", "THETA0_DEG", "THETA_PER_U_DEG", "WOBBLE_UNIT", "RADIUS_PER_G", "RADIUS_MIN"):
        assert getattr(om, name) is getattr(optics, name)


def test_independent_stack_follows_the_geometry() -> None:
    rng = np.random.default_rng(1)
    stack = ev.independent_stack(np.array([100.0, -50.0]), 1.0, 0.03, rng, side=96, display=False)
    assert stack.shape == (7, 96, 96) and stack.dtype == np.float32
    xs, ys = ev.independent_set("ind_n6", 2)
    assert len(xs) == 2 and ys.shape == (2, 2) and np.all(np.abs(ys) <= 200.0)


def test_evaluate_design_scores_with_the_shared_metrics() -> None:
    table = ev.evaluate_design(om.wobble_physics((SIDE, SIDE, 7)), SIDE, n_twin=4, n_ind=3,
                               sets=["n13", "ind_default"])
    assert set(table) == {"n13", "ind_default"}
    assert table["n13"]["samples"] == 4 and table["ind_default"]["samples"] == 3
    assert 0.0 <= table["n13"]["rmse_percent"] < 2.0
    with pytest.raises(ValueError, match="unknown sets"):
        ev.evaluate_design(om.wobble_physics((SIDE, SIDE, 7)), SIDE, sets=["nope"])
