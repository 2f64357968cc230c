"""A .tflite model run by LiteRT (`ai-edge-litert`): the one inference path of the daemon and of
the tools' parity and latency checks, so what is measured is what runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


class LiteModel:
    """A .tflite run with LiteRT on a fixed number of threads, one stack per call."""

    def __init__(self, model: bytes | str | Path, num_threads: int = 1) -> None:
        source = ({"model_content": bytes(model)} if isinstance(model, bytes | bytearray)
                  else {"model_path": str(model)})
        self.delegate = "xnnpack"
        try:
            self.interpreter = Interpreter(**source, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except RuntimeError:
            # XNNPACK refuses some int8 graphs (degenerate quantisation ranges) at prepare time;
            # LiteRT's own builtin kernels run every builtin op.
            self.delegate = "none"
            plain = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            self.interpreter = Interpreter(**source, num_threads=num_threads,
                                           experimental_op_resolver_type=plain)
            self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self._in["shape"])

    @property
    def output_size(self) -> int:
        return int(np.prod(self._out["shape"]))

    def invoke_one(self, x: np.ndarray) -> np.ndarray:
        """One invoke on one input shaped as the model's (batch 1); its output, flat."""
        self.interpreter.set_tensor(self._in["index"], np.asarray(x, dtype=np.float32))
        self.interpreter.invoke()
        output: np.ndarray = self.interpreter.get_tensor(self._out["index"])  # LiteRT has no types
        return output.reshape(-1).copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Model output for inputs (N, H, W, C) or (H, W, C), one invoke per stack."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        return np.stack([self.invoke_one(x[i:i + 1]) for i in range(len(x))])
