"""A spot network's Keras model rebuilt from its .tflite: what `temalign learn` fine-tunes.

The daemon runs a .tflite and nothing else; a column that teaches its model starts from exactly the
file the daemon used, not from a Keras file that may be lost or belong to another run. The float32
file keeps every weight as a named constant (the converter names each after its layer), so the
per-frame trunk (trainkit.spotnet.frame_trunk) is built again and each layer's kernel and bias are
copied back: TFLite keeps convolution kernels as (out, h, w, in) and dense ones as (out, in), Keras as
(h, w, in, out) and (in, out)."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from trainkit import spotnet

_LAYER = re.compile(r"/spot_frame(?:_\d+)?/([a-z0-9]+)_\d+/(convolution|MatMul|BiasAdd|Add)")


def _constants(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """The file's weight constants by (layer, role): role "kernel" or "bias"."""
    # without XNNPACK, which would take the weights over and leave the constants unreadable
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    found: dict[tuple[str, str], np.ndarray] = {}
    for detail in interpreter.get_tensor_details():
        name = str(detail["name"])
        match = _LAYER.search(name.split(";")[0])
        if match is None:
            continue
        layer, op = match.groups()
        role = "kernel" if op in ("convolution", "MatMul") else "bias"
        try:
            value = np.array(interpreter.get_tensor(detail["index"]))
        except ValueError:  # an activation, not a constant
            continue
        if role == "bias" and value.ndim != 1:
            continue
        found.setdefault((layer, role), value)
    return found


def spotnet_from_tflite(path: str | Path, width: int = 16) -> keras.Model:
    """The per-frame trunk (plain variant, `width` inner channels, 128 px) with the file's weights;
    ValueError when the file is not such a network (a layer missing or of another shape)."""
    path = Path(path)
    constants = _constants(path)
    model = spotnet.frame_trunk(128, width, "plain")
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel = constants.get((layer.name, "kernel"))
        bias = constants.get((layer.name, "bias"))
        if kernel is None or bias is None:
            raise ValueError(f"{path}: no weights for layer {layer.name!r}: not a float32 spot network "
                             f"of width {width} (trainkit.spotnet, plain)")
        kernel = np.transpose(kernel, (1, 2, 3, 0)) if kernel.ndim == 4 else kernel.T
        if kernel.shape != weights[0].shape or bias.shape != weights[1].shape:
            raise ValueError(f"{path}: layer {layer.name!r} holds {kernel.shape} and {bias.shape}, the "
                             f"network of width {width} needs {weights[0].shape} and {weights[1].shape}")
        layer.set_weights([kernel, bias])
    return model
