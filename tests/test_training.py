"""The training tools end to end on tiny twin datasets: acquire -> train -> convert -> LiteRT -> card.

Tiny on purpose (32 px frames, a few dozen stacks, 2 epochs at a 64 px input): this checks the
plumbing and the contracts (scale/offset, card keys, parity, files written), not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras", reason='needs the [train] extra: pip install -e ".[train]"')

from trainkit import conversion, models, training
from trainkit.datasets import Dataset

from temalign.estimate import card as cards
from temalign.estimate import preprocess as pre
from temalign.estimate.model_estimator import ModelEstimator

TINY = ["--twin-set", "camera.width=32", "--twin-set", "camera.height=32", "--no-progress"]


def acquire(tmp: Path, preset: str, samples: int, name: str) -> Path:
    """A dataset from the real acquisition tool (twin in process, stepped clock, 32 px frames)."""
    import acquire as acquire_tool

    out = tmp / name
    rc = acquire_tool.main(["--twin", preset, "--samples", str(samples), "--out", str(out),
                            "--state-dir", str(tmp / "state"), *TINY])
    assert rc == 0 and out.exists()
    return out


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return acquire(root, "n13", 40, "train.npz"), acquire(root, "n6", 12, "other.npz")


@pytest.fixture(scope="module")
def trained(data_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    train_file, other = data_files
    out = tmp_path_factory.mktemp("run")
    from train import main

    rc = main(["--data", str(train_file), "--input-size", "64", "--epochs", "2", "--runs", "2",
               "--batch-size", "8", "--sizes", "0.5", "--eval-on", str(other), "--seed", "3",
               "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_train_writes_runs_summary_and_plots(trained: Path) -> None:
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["input_shape"] == [64, 64, 7]
    assert summary["preprocess"] == "temalign.estimate.preprocess:standard_64"
    spread = summary["test_rmse_percent"]
    assert spread["n"] == 2 and spread["min"] <= spread["median"] <= spread["max"]
    assert spread["iqr"] == pytest.approx(spread["q3"] - spread["q1"])
    assert [r["seed"] for r in summary["runs"]] == [3, 4]
    for r in (0, 1):
        folder = trained / f"run_{r:02d}"
        for name in ("config.json", "history.json", "metrics.json", "loss.png", "pred_vs_true.png"):
            assert (folder / name).stat().st_size > 0, name
        history = json.loads((folder / "history.json").read_text())
        assert len(history["loss"]) == 2 and len(history["val_loss"]) == 2
        m = json.loads((folder / "metrics.json").read_text())
        assert m["train_samples"] == 32 and m["test_samples"] == 8
        assert len(m["test"]["rmse_percent_xy"]) == 2
    assert (trained / "best.keras").stat().st_size > 0
    assert summary["sizes"][0]["fraction"] == 0.5 and summary["sizes"][0]["train_samples"] == 16
    assert summary["eval_on"][0]["samples"] == 12 and (trained / "eval_other.png").exists()
    # the recorded scale maps the training labels' range onto [0, 1] (min-max, the paper's way)
    assert all(s > 0 for s in summary["output_scale"])
    card = summary["card"]
    assert card["wobble_fraction"] == 0.03 and card["frames"] == "raw"
    assert card["c0_over_cf"] == pytest.approx(1.0, abs=1e-6)
    assert card["training"]["datasets"][0]["sources"][0]["preset"] == "n13"


def test_card_reads_the_wobble_centre_of_the_data(data_files: tuple[Path, Path]) -> None:
    other = training.prepare([str(data_files[1])], "temalign.estimate.preprocess:standard_64", "labels")
    assert training.provenance(other.dataset, other.files)["wobble_fractions"] == [0.02]
    assert training._c0_over_cf(other.dataset) == pytest.approx(1.02, abs=1e-6)  # the N 6-like set


def test_label_scale_round_trips() -> None:
    y = np.array([[-240.0, 10.0], [100.0, 230.0], [5.0, -200.0]])
    for method in training.SCALINGS:
        s = training.LabelScale.fit(y, method)
        np.testing.assert_allclose(s.decode(s.encode(y)), y, atol=1e-3)
    mm = training.LabelScale.fit(y, "minmax")
    enc = mm.encode(y)
    assert enc.min() == pytest.approx(0.0) and enc.max() == pytest.approx(1.0)


def test_convert_litert_card_and_parity(trained: Path, data_files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "paper_cnn.tflite"
    reports = conversion.export(trained / "best.keras", out, ["float32", "dynamic-int8"],
                                latency_repeats=5, verbose=False, frames="any")
    assert [r["quantisation"] for r in reports] == ["float32", "dynamic-int8"]
    f32, dyn = reports
    assert f32["max_diff_units"] < 0.05  # float32: LiteRT equals Keras up to rounding
    assert dyn["max_diff_units"] < 25.0  # int8 weights: within a few units on this scale
    assert dyn["size_bytes"] < f32["size_bytes"] / 2
    for path in (out, tmp_path / "paper_cnn.dynamic-int8.tflite"):
        card = cards.read_card(path)  # validates
        assert cards.validate_card(card) == []
        assert conversion.non_builtin_ops(path.read_bytes()) == []
        assert card["model"]["file_size_bytes"] == path.stat().st_size
        assert {"max_diff_units", "rms_diff_units"} <= set(card["parity"])
        assert card["latency_ms"]["threads"] == 1
    # the daemon's path: the card's preprocess + LiteRT + the card's scale/offset
    card = cards.read_card(out)
    assert card["frames"] == "any"
    ds = Dataset.load(data_files[1])
    fn = pre.resolve(card["preprocess"])
    estimator = ModelEstimator(out)
    delta = [estimator.predict(s).delta for s in ds.stacks[:4]]
    import keras

    model = keras.models.load_model(trained / "best.keras", compile=False)
    x = pre.preprocess_batch(ds.stacks[:4], fn)
    ref = model.predict(x, verbose=0) * np.asarray(card["output_scale"]) + np.asarray(card["output_offset"])
    np.testing.assert_allclose(np.asarray(delta), ref, atol=0.05)


def test_convert_reports_parity_and_the_evaluation_against_the_gates_limit(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parity is reported as parity; the accuracy the daemon judges is the evaluation through its
    own path (one set, two stacks here), and the last word is the daemon's gate's."""
    import convert

    from temalign.decide.model_gate import model_gate

    out = tmp_path / "tiny.tflite"
    assert convert.main([str(trained / "best.keras"), "--out", str(out), "--latency-repeats", "2",
                         "--evaluate-stacks", "2", "--evaluate-sets", "reference/vacuum"]) == 0
    printed = capsys.readouterr().out
    assert "parity: held-out RMSE" in printed and "keeps" not in printed and "accuracy" not in printed
    assert "[1/1] reference/vacuum: RMSE" in printed
    card = cards.read_card(out)
    e = card["evaluation"]
    assert [s["name"] for s in e["sets"]] == ["reference/vacuum"] and e["stacks"] == 2
    assert e["command"].startswith("tools/convert.py ")
    accepted = model_gate(card, 1.0) is None
    verdict = f"evaluated RMSE {e['rmse_percent']:.3f} % (pooled over 1 sets), limit 1 %: the daemon will "
    assert verdict + ("accept it" if accepted else "refuse it") in printed, printed
    # without the evaluation it says so plainly, and the daemon's gate refuses the model
    skipped = tmp_path / "skipped.tflite"
    assert convert.main([str(trained / "best.keras"), "--out", str(skipped), "--latency-repeats", "2",
                         "--evaluate-stacks", "0"]) == 0
    assert "NOT evaluated (--evaluate-stacks 0): the daemon will refuse it" in capsys.readouterr().out
    assert "no evaluation" in (model_gate(cards.read_card(skipped), 1.0) or "")


def test_same_seed_same_training(data_files: tuple[Path, Path], tmp_path: Path) -> None:
    data = training.prepare([str(data_files[1])], "temalign.estimate.preprocess:standard_64", "labels")
    cfg = training.TrainConfig(data=[], out=str(tmp_path), epochs=2, batch_size=4, verbose=False)
    x, y = data.x, data.y
    a = training.run_once(cfg, x[:8], y[:8], x[8:], y[8:], 11, tmp_path / "a", 0)
    b = training.run_once(cfg, x[:8], y[:8], x[8:], y[8:], 11, tmp_path / "b", 0)
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-5)
    assert a.metrics["test"]["rmse_percent"] == pytest.approx(b.metrics["test"]["rmse_percent"], rel=1e-5)


def test_losses_by_name() -> None:
    assert models.build("tiny_cnn64", (16, 16, 7), loss="huber").loss.name == "huber_loss"
    with pytest.raises(ValueError, match="unknown loss 'l3'; known: mse, mae, huber"):
        models.build("tiny_cnn64", (16, 16, 7), loss="l3")


def test_truth_label_refused_without_truth(data_files: tuple[Path, Path], tmp_path: Path) -> None:
    ds = Dataset.load(data_files[1])
    ds.truth[:] = np.nan  # a column's dataset: no truth
    path = tmp_path / "column.npz"
    ds.save(path)
    with pytest.raises(ValueError, match="truth"):
        training.prepare([str(path)], "temalign.estimate.preprocess:standard_64", "truth")


def test_commands_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    import bench_learning
    import convert
    import learn
    import train
    import tune_spotnet

    for module in (train, convert, learn, tune_spotnet, bench_learning):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
    assert "--eval-on" in capsys.readouterr().out
