"""The paper's CNNs (Appendix A) as Keras 3 models, behind an open registry.

Every builder takes `(input_shape, output_dim, **options)` and returns an uncompiled model made of
layers that convert to builtin TFLite ops only (Conv2D, MaxPooling2D, Dense, Dropout,
BatchNormalization, Flatten, Reshape and the relu/tanh/sigmoid/leaky_relu activations).
`build()` compiles it (Adam + MSE + RMSE metric, as A.1) with the optimiser of A.2.7 chosen by name.

Faithfulness notes. A.1 ends with `Dense(2, activation='relu')`: the paper trained on labels
normalised to [0, 1] (Fig. 3b), where a relu output can work, but it still clips any negative
prediction and can "die". We keep it by default (`output_activation="relu"`) and pair it with min-max
label scaling; `output_activation="linear"` is the obvious fix. The appendix's figures for A.2.1 to
A.2.6 and A.2.8 are images we do not have, so those variants change exactly one feature of A.1 in
the way the text describes; the choices are written in each builder's docstring."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import layers

Builder = Callable[..., keras.Model]
MODELS: dict[str, Builder] = {}
_OWN_MODULE = "trainkit.own_models"
_own_loaded = False


def register_model(name: str, builder: Builder, *, replace: bool = False) -> Builder:
    """Add a builder to MODELS (other modules, e.g. trainkit.own_models, extend the registry)."""
    if name in MODELS and not replace and MODELS[name] is not builder:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = builder
    return builder


def _load_own_models() -> None:
    """Import trainkit.own_models once if it exists, so its register_model calls run."""
    global _own_loaded
    if _own_loaded:
        return
    _own_loaded = True
    try:
        importlib.import_module(_OWN_MODULE)
    except ModuleNotFoundError as error:
        if error.name != _OWN_MODULE:
            raise


def model_names() -> list[str]:
    """Every registered model name (own models included)."""
    _load_own_models()
    return sorted(MODELS)


# ---- optimisers (A.2.7) --------------------------------------------------------------------------

OPTIMIZERS: dict[str, Callable[[], keras.optimizers.Optimizer]] = {
    "adam": lambda: keras.optimizers.Adam(0.001),
    "adam-0.01": lambda: keras.optimizers.Adam(0.01),
    "adam-0.001": lambda: keras.optimizers.Adam(0.001),
    "adadelta": lambda: keras.optimizers.Adadelta(),
    "adamax": lambda: keras.optimizers.Adamax(),
    "adagrad": lambda: keras.optimizers.Adagrad(),
    "sgd": lambda: keras.optimizers.SGD(),
    "nadam": lambda: keras.optimizers.Nadam(),
    "rmsprop": lambda: keras.optimizers.RMSprop(),
    "ftrl": lambda: keras.optimizers.Ftrl(),
}
"""The optimisers the paper tried on the initial CNN (A.2.7), Keras defaults unless it names a rate."""


def optimizer(name: str, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    """A fresh optimiser by A.2.7 name, optionally with another learning rate."""
    try:
        opt = OPTIMIZERS[name]()
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None
    if learning_rate is not None:
        opt.learning_rate = learning_rate
    return opt


# ---- the paper's models ------------------------------------------------------------------------

def _paper(input_shape: Sequence[int], output_dim: int = 2, *, name: str = "paper_cnn",
           activation: str = "relu", output_activation: str = "relu",
           convs: Sequence[tuple[int, int, bool]] = ((32, 5, True), (64, 5, True), (32, 3, False)),
           dense: Sequence[int] = (64, 32), dropout: float = 0.0, batchnorm: bool = False,
           **_: Any) -> keras.Model:
    """A.1's Sequential layout, parameterised so each variant changes one feature of it.

    `convs` lists (filters, kernel, followed by 2x2 max pooling)."""
    model = keras.Sequential(name=name)
    model.add(keras.Input(shape=tuple(input_shape)))
    for filters, kernel, pool in convs:
        if batchnorm:
            model.add(layers.Conv2D(filters, (kernel, kernel), padding="same"))
            model.add(layers.BatchNormalization())
            model.add(layers.Activation(activation))
        else:
            model.add(layers.Conv2D(filters, (kernel, kernel), activation=activation, padding="same"))
        if pool:
            model.add(layers.MaxPooling2D((2, 2)))
            if dropout:
                model.add(layers.Dropout(dropout))
    model.add(layers.Flatten())
    for units in dense:
        model.add(layers.Dense(units, activation=activation))
    model.add(layers.Dense(output_dim, activation=output_activation))
    model.add(layers.Reshape((output_dim,)))
    return model


def paper_cnn(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.1 verbatim: Conv 32 5x5, pool, Conv 64 5x5, pool, Conv 32 3x3, Dense 64, 32, 2 (relu)."""
    return _paper(input_shape, output_dim, **{"name": "paper_cnn", **options})


def paper_fc(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.1: no convolutions, the image flattened straight into A.1's dense layers."""
    return _paper(input_shape, output_dim, **{"name": "paper_fc", "convs": (), **options})


def paper_dropout(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.2: Dropout(0.25) after each convolution/max-pooling pair."""
    return _paper(input_shape, output_dim, **{"name": "paper_dropout", "dropout": 0.25, **options})


def paper_batchnorm(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.3: BatchNormalization between each convolution and its activation."""
    return _paper(input_shape, output_dim, **{"name": "paper_batchnorm", "batchnorm": True, **options})


def paper_conv_deep(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.4, one convolution more: a second Conv 32 3x3 without pooling (the flatten size, hence
    the dense block, is unchanged)."""
    convs = ((32, 5, True), (64, 5, True), (32, 3, False), (32, 3, False))
    return _paper(input_shape, output_dim, **{"name": "paper_conv_deep", "convs": convs, **options})


def paper_conv_shallow(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.4, one convolution less: the unpooled Conv 32 3x3 removed (flatten of 64 channels)."""
    convs = ((32, 5, True), (64, 5, True))
    return _paper(input_shape, output_dim, **{"name": "paper_conv_shallow", "convs": convs, **options})


def paper_dense_deep(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.5, one dense layer more: Dense 64, 32, 16."""
    return _paper(input_shape, output_dim, **{"name": "paper_dense_deep", "dense": (64, 32, 16), **options})


def paper_dense_shallow(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.5, one dense layer less: Dense 64 only."""
    return _paper(input_shape, output_dim, **{"name": "paper_dense_shallow", "dense": (64,), **options})


def paper_tanh(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.6: tanh in every hidden layer (output as A.1)."""
    return _paper(input_shape, output_dim, **{"name": "paper_tanh", "activation": "tanh", **options})


def paper_sigmoid(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.6: sigmoid in every hidden layer (output as A.1)."""
    return _paper(input_shape, output_dim, **{"name": "paper_sigmoid", "activation": "sigmoid", **options})


def paper_leakyrelu(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.6: LeakyReLU (Keras default slope 0.2) in every hidden layer (output as A.1)."""
    return _paper(input_shape, output_dim,
                  **{"name": "paper_leakyrelu", "activation": "leaky_relu", **options})


def paper_final(input_shape: Sequence[int], output_dim: int = 2, **options: Any) -> keras.Model:
    """A.2.8: the improvements combined: one convolution more, one dense layer more, and LeakyReLU
    for all layers (the output too, as 'for all layers' says; pass output_activation='linear' to fix)."""
    convs = ((32, 5, True), (64, 5, True), (32, 3, False), (32, 3, False))
    return _paper(input_shape, output_dim, **{
        "name": "paper_final", "convs": convs, "dense": (64, 32, 16), "activation": "leaky_relu",
        "output_activation": "leaky_relu", **options})


for _builder in (paper_cnn, paper_fc, paper_dropout, paper_batchnorm, paper_conv_deep, paper_conv_shallow,
                 paper_dense_deep, paper_dense_shallow, paper_tanh, paper_sigmoid, paper_leakyrelu,
                 paper_final):
    register_model(_builder.__name__, _builder)


def output_activation_of(model: keras.Model) -> str:
    """Name of the last Dense layer's activation: it decides whether labels must be >= 0."""
    for layer in reversed(model.layers):
        if isinstance(layer, layers.Dense):
            return getattr(layer.activation, "__name__", str(layer.activation))
    return "linear"


LOSSES: dict[str, Any] = {"mse": "mse", "mae": "mae",
                          "huber": keras.losses.Huber(delta=0.01)}
"""Training losses by name; Huber's delta 0.01 is 10 units when labels are delta / 1000."""


def build(name: str, input_shape: Sequence[int], output_dim: int = 2, *, optimizer_name: str = "adam",
          learning_rate: float | None = None, compile: bool = True, loss: str = "mse",
          **options: Any) -> keras.Model:
    """The registered model `name` for `input_shape` (H, W, 7), compiled as the paper's A.1 (MSE loss,
    RMSE metric) with an A.2.7 optimiser unless compile=False. `loss` "huber" or "mae" calibrate a
    few physical parameters without letting a handful of odd stacks pull them (LOSSES)."""
    _load_own_models()
    try:
        builder = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    model = builder(tuple(input_shape), output_dim, **options)
    if compile:
        model.compile(optimizer=optimizer(optimizer_name, learning_rate), loss=LOSSES[loss],
                      metrics=[keras.metrics.RootMeanSquaredError(name="rmse")])
    return model


def load_keras(path: str) -> keras.Model:
    """A saved .keras model, after the own-models module and the spot network have registered the
    custom layers it may use."""
    _load_own_models()
    from trainkit import spotnet  # noqa: F401 (registers SoftArgmax and the spot network's layers)

    return keras.models.load_model(path, compile=False)
