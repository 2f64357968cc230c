"""temalign learn (tools/learn.py): a spot model fine-tuned on a column's own labelled stacks beats
its parent on the column's held-out stacks, through the daemon's path; the differentiable walk is
the daemon's walk; the eight orientations keep a stack's label; the model rebuilt from its .tflite
is the model LiteRT runs; bad input is refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import learn
import numpy as np
import pytest
import tensorflow as tf
from benchkit.column_store import labelled_store
from trainkit import column_learning, column_stacks, spotnet
from trainkit.tflite_weights import spotnet_from_tflite

from temalign import shipped
from temalign.estimate.litert_model import LiteModel

COLUMN, SCENE = "high-mag-contaminated", "stigmated-holography"
"""The traced cell the shipped model reads worst (docs/models.md): both estimators 8 to 14 units
off near alignment."""
SPOTNET = shipped.model_path("spotnet")


@pytest.fixture(scope="module")
def column_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_store(tmp_path_factory.mktemp("column") / "stacks", COLUMN, SCENE, 40)


def test_a_learnt_candidate_beats_its_parent_on_held_out_column_stacks(
        column_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "learnt.tflite"
    code = learn.main(["--store", str(column_store), "--model", str(SPOTNET), "--out", str(out),
                       "--steps", "200", "--twin-stacks", "24", "--twin-check-stacks", "4",
                       "--evaluate-stacks", "0", "--held-out-fraction", "0.25", "--workers", "1"])
    said = capsys.readouterr().out
    assert code == 0, said
    card = json.loads(out.with_suffix(".json").read_text())
    held = card["evidence"]["column_held_out"]
    parent, candidate = held["parent"], held["candidate"]
    assert parent["stacks"] == candidate["stacks"] == 10
    assert candidate["answered"] >= parent["answered"] - 1
    # the parent reads this cell 10 to 20 units off; the candidate must do clearly better
    assert candidate["rms_units"] < 0.8 * parent["rms_units"], held
    assert card["training"]["parent"]["fingerprint"]
    assert "column stacks: 30" in card["training"]["datasets"][0]
    assert "CONV_2D" in card["model"]["ops"] and card["output"] == "spots"
    assert "NOT evaluated (--evaluate-stacks 0): the daemon will refuse it" in said
    assert "next: temalign model shadow" in said


def test_the_walk_trained_through_is_the_daemons_walk(column_store: Path) -> None:
    """The differentiable fit (Keras, rebuilt weights) gives the delta the daemon's path gives
    (LiteRT, model_walk, the calibration) on the same stored stacks, with the classical M."""
    stacks = column_stacks.labelled_stacks(column_store, say=lambda _: None)[:12]
    inputs = column_stacks.column_set(stacks, "temalign.estimate.preprocess:spots_128")
    keras_deltas = column_learning.predict_deltas(spotnet_from_tflite(SPOTNET), inputs)
    for s in stacks:  # the daemon's path with the classical M, as the candidate is trained and runs
        s.stored.meta["calibration"].pop("model_matrix", None)
        s.stored.meta["calibration"].pop("model_fingerprint", None)
    daemon = column_stacks.daemon_deltas(SPOTNET, stacks)
    both = np.isfinite(keras_deltas).all(axis=1) & np.isfinite(daemon).all(axis=1)
    assert both.sum() >= 9
    gap = np.linalg.norm(keras_deltas[both] - daemon[both], axis=1)
    assert np.median(gap) < 1.0, gap  # units; the daemon also drops a frame that strays (model_walk)


def test_the_eight_orientations_keep_a_stacks_label() -> None:
    rho = np.linspace(-0.03, 0.03, 7)
    slope = np.array([0.8, -0.5])
    centres = 0.05 + rho[:, None] * slope[None, :]
    to_delta = np.array([[[2.0, 0.3], [-0.4, 1.5]]])
    frames = np.zeros((1, 4, 4, 7), np.float32)
    base = column_learning.ColumnSet(frames, rho[None], to_delta, np.zeros((1, 2)))
    want = to_delta[0] @ slope
    for which in range(8):
        turned = column_learning.orient(base, which)
        f = column_learning._orientation_matrix(*column_learning._ORIENTATIONS[which])
        out = np.concatenate([centres @ f.T, np.full((7, 1), 5.0)], axis=1)[None].astype(np.float32)
        delta, usable = column_learning.walk_delta(tf.constant(out), tf.constant(rho[None], tf.float32),
                                                   tf.constant(turned.to_delta, tf.float32))
        assert bool(usable.numpy()[0])
        np.testing.assert_allclose(delta.numpy()[0], want, rtol=1e-4, err_msg=f"orientation {which}")


def test_the_network_rebuilt_from_its_tflite_is_the_one_litert_runs() -> None:
    x = np.random.default_rng(0).random((2, 128, 128, 7)).astype(np.float32)
    rebuilt = spotnet.stack_model(spotnet_from_tflite(SPOTNET)).predict(x, verbose=0)
    np.testing.assert_allclose(rebuilt, LiteModel(SPOTNET)(x), atol=1e-4)


def test_a_delta_model_cannot_be_rebuilt_as_a_spot_network() -> None:
    with pytest.raises(ValueError, match="no weights for layer"):
        spotnet_from_tflite(shipped.model_path("wobble_physics"))


@pytest.mark.parametrize(("extra", "expected"), [
    (["--min-stacks", "100"], "fewer than --min-stacks 100"),
    (["--model", str(shipped.model_path("wobble_physics"))], "learn fine-tunes a spot model"),
    (["--held-out-fraction", "1.5"], "--held-out-fraction must lie in (0, 1)"),
])
def test_learn_refuses_what_it_cannot_do(column_store: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], extra: list[str],
                                         expected: str) -> None:
    code = learn.main(["--store", str(column_store), "--out", str(tmp_path / "c.tflite"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "c.tflite").exists()


def test_learn_refuses_a_store_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = learn.main(["--store", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.tflite")])
    assert code == 2 and "no such directory" in capsys.readouterr().err


def test_learn_will_not_overwrite_its_parent(column_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = learn.main(["--store", str(column_store), "--out", str(SPOTNET)])
    assert code == 2 and "is the model learnt from" in capsys.readouterr().err


def test_learn_takes_several_stores_each_held_out_on_its_own(column_store: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Several columns (or the twin's cells, tools/tune_spotnet.py): each store's newest are held out."""
    other = labelled_store(tmp_path / "other", "reference", "holography", 12, seed=4)
    out = tmp_path / "both.tflite"
    code = learn.main(["--store", str(column_store), str(other), "--model", str(SPOTNET), "--out", str(out),
                       "--steps", "10", "--twin-stacks", "24", "--twin-check-stacks", "4",
                       "--evaluate-stacks", "0", "--held-out-fraction", "0.25", "--workers", "1",
                       "--name", "spotnet-both"])
    assert code == 0, capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    held = card["evidence"]["column_held_out"]["ids"]
    assert len(held) == 10 + 3
    assert card["evidence"]["column_stacks_learnt"] == 30 + 9
    learnt_from = card["training"]["datasets"][0]
    assert str(column_store) in learnt_from and str(other) in learnt_from
    assert card["model"]["name"] == "spotnet-both"
