"""Models, conversion, metrics and the model card, each against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason='needs the [train] extra: pip install -e ".[train]"')
tf = pytest.importorskip("tensorflow", reason='needs the [train] extra: pip install -e ".[train]"')

from trainkit import conversion, metrics, models  # noqa: E402

from temalign.estimate import card as cards  # noqa: E402

PAPER_NAMES = ("paper_cnn", "paper_fc", "paper_dropout", "paper_batchnorm", "paper_conv_deep",
               "paper_conv_shallow", "paper_dense_deep", "paper_dense_shallow", "paper_tanh",
               "paper_sigmoid", "paper_leakyrelu", "paper_final")


def test_paper_cnn_parameter_count_at_256() -> None:
    # conv 5*5*7*32+32 = 5632; conv 5*5*32*64+64 = 51264; conv 3*3*64*32+32 = 18464;
    # flatten 64*64*32 = 131072 -> dense 64: 8388672; dense 32: 2080; dense 2: 66
    model = models.build("paper_cnn", (256, 256, 7))
    assert model.count_params() == 5632 + 51264 + 18464 + 8388672 + 2080 + 66 == 8_466_178  # paper: 8.5 M
    assert models.output_activation_of(model) == "relu"  # A.1 as printed
    fixed = models.build("paper_cnn", (256, 256, 7), output_activation="linear")
    assert models.output_activation_of(fixed) == "linear"
    final = models.build("paper_final", (256, 256, 7))
    # + conv 32 3x3 (3*3*32*32+32 = 9248) + dense 16 (32*16+16 = 528); output 16*2+2 instead of 32*2+2 (-32)
    assert final.count_params() == 8_466_178 + 9248 + 528 - 32 == 8_475_922


def test_registry_has_the_paper_and_is_open() -> None:
    assert set(PAPER_NAMES) <= set(models.model_names())

    def tiny(input_shape: tuple[int, ...], output_dim: int = 2, **_: object) -> keras.Model:
        inp = keras.Input(input_shape)
        return keras.Model(inp, keras.layers.Dense(output_dim)(keras.layers.GlobalAveragePooling2D()(inp)))

    models.register_model("test_tiny", tiny)
    try:
        assert models.build("test_tiny", (16, 16, 7)).count_params() == 16
        with pytest.raises(ValueError):
            models.register_model("test_tiny", lambda *a, **k: None)
    finally:
        models.MODELS.pop("test_tiny")
    with pytest.raises(KeyError, match="unknown model"):
        models.build("no_such_model", (16, 16, 7))
    assert set(models.OPTIMIZERS) >= {"adam-0.01", "adadelta", "adamax", "adagrad", "sgd", "nadam", "rmsprop",
                                      "ftrl"}


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_every_paper_model_converts_with_builtin_ops(name: str) -> None:
    model = models.build(name, (16, 16, 7), compile=False)
    tflite = conversion.convert(model, "float32")
    assert conversion.non_builtin_ops(tflite) == []
    x = np.random.default_rng(0).random((2, 16, 16, 7), dtype=np.float32)
    par = conversion.parity(model, tflite, x, [1000.0, 1000.0])
    assert par["max_diff_units"] < 0.05


def _needs_flex() -> keras.Model:
    inp = keras.Input((4, 4))
    out = keras.layers.Lambda(lambda z: tf.linalg.inv(z))(inp)  # MatrixInverse: no builtin kernel
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(out)))


def test_conversion_refuses_and_flags_non_builtin_ops() -> None:
    model = _needs_flex()
    with pytest.raises(conversion.NonBuiltinOps):
        conversion.convert(model)
    flex = conversion.convert(model, allow_select_ops=True)  # what a careless converter would ship
    assert conversion.non_builtin_ops(flex) == ["FlexMatrixInverse"]


def test_full_int8_needs_representative_data() -> None:
    model = models.build("paper_cnn", (16, 16, 7), compile=False)
    with pytest.raises(ValueError, match="representative"):
        conversion.convert(model, "int8")
    x = np.random.default_rng(1).random((8, 16, 16, 7), dtype=np.float32)
    tflite = conversion.convert(model, "int8", x)
    assert "QUANTIZE" in conversion.op_names(tflite)
    assert conversion.LiteModel(tflite)(x).shape == (8, 2)  # float input and output kept


def test_metrics_against_hand_computed_values() -> None:
    true = np.zeros((2, 2))
    pred = np.array([[10.0, -20.0], [0.0, 20.0]])  # errors 10, -20, 0, 20 units
    # RMSE = sqrt((100 + 400 + 0 + 400) / 4) = 15 units = 1.5 % of 1000
    assert metrics.rmse_percent(pred, true) == pytest.approx(1.5)
    assert metrics.per_axis_rmse_percent(pred, true) == pytest.approx((np.sqrt(50) / 10, 2.0))
    # |e| = 0, 10, 20, 20: 99th percentile (linear) = 20 units = 2 %
    assert metrics.p99_percent(pred, true) == pytest.approx(2.0)
    assert metrics.real_difference_units(1.37) == pytest.approx(13.7)  # Table 2: 1.37 % -> 14
    s = metrics.summary(pred, true)
    assert s["max_abs_error_units"] == 20.0 and s["samples"] == 2
    with pytest.raises(ValueError):
        metrics.rmse_percent(pred, np.zeros((3, 2)))


def _card() -> dict:
    return {"preprocess": "temalign.estimate.preprocess:standard_128", "output_scale": [480.0, 480.0],
            "output_offset": [-240.0, -240.0], "input_shape": [128, 128, 7], "wobble_fraction": 0.03,
            "c0_over_cf": 1.0, "frames": "raw", "training": {"datasets": [{"files": ["n13.npz"]}]},
            "metrics": {"rmse_percent": 0.4}}


def test_card_validation_and_round_trip(tmp_path: Path) -> None:
    assert cards.validate_card(_card()) == []
    bad = {**_card(), "preprocess": "standard", "output_scale": [0.0, 1.0], "input_shape": [128, 128, 3],
           "wobble_fraction": 3, "frames": "png"}
    del bad["metrics"]
    problems = cards.validate_card(bad)
    for needle in ("missing key 'metrics'", "preprocess", "output_scale", "7 channels", "wobble_fraction",
                   "frames"):
        assert any(needle in p for p in problems), (needle, problems)
    assert cards.validate_card([]) != []
    path = cards.write_card(tmp_path / "m.tflite", _card())
    assert path == tmp_path / "m.json"
    assert cards.read_card(tmp_path / "m.tflite")["output_offset"] == [-240.0, -240.0]
    assert cards.to_motor_units([0.5, 1.0], _card()) == [0.0, 240.0]
    with pytest.raises(ValueError, match="invalid model card"):
        cards.write_card(tmp_path / "x.tflite", bad)
