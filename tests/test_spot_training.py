"""Training the spot network (tools/trainkit/spot_*.py): the labels follow every orientation of the
frame exactly, a few steps on real traced frames lower the loss, and the export is a real LiteRT
model with builtin ops only whose card the daemon accepts and whose spots match Keras'. Needs the
[train] extra (TensorFlow): skipped, saying so, without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the [train] extra (TensorFlow) is not installed")

from trainkit import spot_data, spot_export, spot_training, spotnet, traced_sets  # noqa: E402

from temalign.estimate.model_estimator import ModelEstimator, check_compatible  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    conds = traced_sets.conditions(12, 5, hold_out_column="quarter-turn-mirrored",
                                   hold_out_scene="stigmated-holography", wide=True)
    return spot_data.build(conds, 5, workers=1)


def test_a_set_holds_the_input_and_per_frame_labels(arrays: dict[str, np.ndarray]) -> None:
    assert arrays["x"].shape == (12, 128, 128, 7) and arrays["x"].dtype == np.float16
    assert arrays["centres"].shape == (12, 7, 2) and arrays["radii"].shape == (12, 7)
    assert np.array_equal(arrays["visible"], np.all(np.abs(arrays["centres"]) < 0.5, axis=-1))
    assert str(arrays["preprocess"]) == spot_data.PREPROCESS
    frames, labels = spot_training.frames_of(arrays)
    assert frames.shape == (84, 128, 128, 1) and labels.shape == (84, 3)
    assert np.array_equal(frames[7 * 3 + 2, :, :, 0], arrays["x"][3, :, :, 2])
    assert np.allclose(labels[7 * 3 + 2, :2], arrays["centres"][3, 2])


def test_every_orientation_moves_the_label_with_the_frame() -> None:
    """A frame with one bright pixel at a known place: after each of the eight orientations the
    label still points at that pixel."""
    frame = np.zeros((16, 16, 1), np.float32)
    row, col = 3, 11
    frame[row, col, 0] = 1.0
    label = np.array([(col + 0.5) / 16 - 0.5, (row + 0.5) / 16 - 0.5, 1.0], np.float32)
    seen = set()
    for i in range(64):
        seed = tf.constant([i, 7], tf.int64)
        out, lab = spot_training._orient(tf.constant(frame), tf.constant(label), seed)
        r, c = np.unravel_index(int(np.argmax(out.numpy()[:, :, 0])), (16, 16))
        assert np.allclose(lab.numpy()[:2], [(c + 0.5) / 16 - 0.5, (r + 0.5) / 16 - 0.5])
        seen.add((int(r), int(c)))
    assert len(seen) == 8


def test_a_few_steps_lower_the_loss_and_the_export_runs_in_litert(arrays, tmp_path: Path) -> None:
    model, history = spot_training.train(arrays, arrays, spot_training.SpotTraining(epochs=3, batch=16,
                                                                                    width=8, seed=1),
                                         say=lambda _text: None)
    assert history["loss"][-1] < history["loss"][0]
    card = {"output": "spots", "preprocess": spot_data.PREPROCESS, "input_shape": [128, 128, 7],
            "frames": "any", "wobble_range": [0.015, 0.04], "c0_over_cf_range": [0.97, 1.03],
            "training": {"datasets": ["test"]}, "metrics": {}}
    report = spot_export.export(model, tmp_path / "spot.tflite", arrays, card, latency_repeats=5,
                                say=lambda _text: None)
    assert report["parity"]["max_diff_px"] < spot_export.PARITY_PX
    estimator = ModelEstimator(tmp_path / "spot.tflite")
    assert estimator.reads_spots and "CONV_2D" in estimator.card["model"]["ops"]
    check_compatible(estimator.card, wobble_fraction=0.02, frames="raw")
    reading = estimator.read_spots(np.zeros((7, 256, 256), np.uint16) + 100)
    assert reading.centres.shape == (7, 2)
    keras_out = spotnet.stack_model(model).predict(arrays["x"][:1].astype(np.float32), verbose=0)
    lite = estimator.lite.invoke_one(arrays["x"][:1].astype(np.float32))
    assert np.abs(lite - keras_out[0]).max() < 1e-4
