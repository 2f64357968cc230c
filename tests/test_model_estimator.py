"""The runtime's learnt estimator: the shipped model and its card, through LiteRT, as the daemon runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from temalign.clock import SteppedClock
from temalign.estimate import card as cards
from temalign.estimate.model_estimator import ModelError, ModelEstimator
from temalign.optics import wobble_values
from temalign_twin.model import Twin
from temalign_twin.settings import TwinSettings

SHIPPED = Path(__file__).resolve().parents[1] / "daemon" / "temalign" / "models" / "wobble_physics.tflite"
QUIET = {"drift": {"linear_per_hour": (0, 0), "random_walk_per_sqrt_hour": 0, "jump_rate_per_hour": 0}}


def twin_stack(misalignment: tuple[int, int], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px wobble stack of the default twin `misalignment` units off, and its true delta."""
    twin = Twin(TwinSettings().updated(QUIET), SteppedClock(), seed)
    a = twin.aligned()
    twin.move_aperture(round(a[0] + misalignment[0]), round(a[1] + misalignment[1]))
    frames = []
    for c in wobble_values(twin.settings.lens.start_over_cf * twin.settings.optics.c_f, 0.03):
        twin.set_c1(float(c))
        twin.clock.advance(2.0)
        frames.append(twin.acquire())
    return np.stack(frames), -np.asarray(twin.truth()["misalignment"], dtype=np.float64)


def test_the_shipped_card_is_valid_and_names_the_runtime_preprocessing() -> None:
    card = cards.read_card(SHIPPED)
    assert card["preprocess"] == "temalign.estimate.preprocess:physics_128"
    assert card["input_shape"] == [128, 128, 7] and card["wobble_fraction"] == 0.03
    assert card["model"]["file"] == SHIPPED.name
    assert card["model"]["file_size_bytes"] == SHIPPED.stat().st_size
    assert card["parity"]["max_diff_units"] < 0.5  # LiteRT against Keras, measured at conversion
    assert card["training"]["command"].startswith("tools/train.py")


@pytest.mark.parametrize("misalignment", [(0, 0), (150, -90), (-230, 200)])
def test_the_shipped_model_recentres_a_twin_stack(misalignment: tuple[int, int]) -> None:
    estimator = ModelEstimator(SHIPPED)
    stack, truth = twin_stack(misalignment)
    estimate = estimator.predict(stack)
    assert np.allclose(estimate.delta, truth, atol=5.0), (estimate.delta, truth)  # 0.5 % of the range
    assert estimate.preprocess_ms > 0 and estimate.inference_ms > 0


def test_uint8_and_any_camera_size_are_accepted() -> None:
    stack, truth = twin_stack((120, 60))
    small = stack.reshape(7, 128, 2, 128, 2).mean(axis=(2, 4))  # a 128 px camera of the same field
    scaled = np.clip(small / small.max() * 255, 0, 255).astype(np.uint8)
    assert np.allclose(ModelEstimator(SHIPPED).predict(scaled).delta, truth, atol=10.0)


def _copy(tmp_path: Path) -> Path:
    model = tmp_path / "m.tflite"
    shutil.copy(SHIPPED, model)
    shutil.copy(cards.card_path(SHIPPED), cards.card_path(model))
    return model


def _edit_card(model: Path, **changes: object) -> None:
    path = cards.card_path(model)
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def test_missing_model_or_card_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        ModelEstimator(tmp_path / "absent.tflite")
    model = _copy(tmp_path)
    cards.card_path(model).unlink()
    with pytest.raises(ModelError, match=r"card .* is missing"):
        ModelEstimator(model)


@pytest.mark.parametrize(("changes", "words"), [
    ({"input_shape": [64, 64, 7]}, "file's input is \\[128, 128, 7\\] but its card says \\[64, 64, 7\\]"),
    ({"preprocess": "temalign.estimate.preprocess:nothing"}, "has no 'nothing'"),
    ({"preprocess": "no_such_module:f"}, "cannot import 'no_such_module'"),
    ({"output_scale": [0, 1000]}, "zero scale"),
    ({"frames": "film"}, "frames"),
])
def test_a_card_that_disagrees_is_refused_by_name(tmp_path: Path, changes: dict, words: str) -> None:
    model = _copy(tmp_path)
    _edit_card(model, **changes)
    with pytest.raises(ModelError, match=words):
        ModelEstimator(model)


def test_a_corrupt_model_file_or_card_is_refused(tmp_path: Path) -> None:
    model = _copy(tmp_path)
    cards.card_path(model).write_text("{not json")
    with pytest.raises(ModelError, match=r"m\.tflite"):
        ModelEstimator(model)
    model = _copy(tmp_path)
    model.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(ModelError, match="LiteRT cannot load it"):
        ModelEstimator(model)


def test_a_stack_it_cannot_use_is_a_value_error_naming_it() -> None:
    estimator = ModelEstimator(SHIPPED)
    with pytest.raises(ValueError, match="7"):
        estimator.predict(np.zeros((5, 64, 64)))
    bad = np.ones((7, 64, 64))
    bad[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN|finite"):
        estimator.predict(bad)
