"""The learnt estimator at run time: a .tflite model, its card, and the card's preprocessing.

Everything the model needs to be fed exactly what it was trained on comes from the card beside it
(the preprocessing function, the input shape, the output scale); `load` refuses a model whose card
is missing, invalid or disagrees with the file, before anything is connected or moved."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from temalign.errors import TemalignError
from temalign.estimate import card as cards
from temalign.estimate.calibration import Calibration, nominal_calibration
from temalign.estimate.classical import remap_matrix
from temalign.estimate.litert_model import LiteModel
from temalign.estimate.preprocess import resolve
from temalign.values import JsonObject

if TYPE_CHECKING:
    from temalign.config.schema import Settings


class ModelError(TemalignError):
    """A model or card that cannot be used; exit status 2, like a bad config."""

    exit_status = 2


@dataclass(frozen=True)
class ModelEstimate:
    """delta (motor units, x and y) that re-centres the aperture, and what it cost."""

    delta: tuple[float, float]
    preprocess_ms: float
    inference_ms: float


class ModelEstimator:
    """Predicts delta from one wobble stack `(7, H, W)` with LiteRT on `num_threads` threads."""

    def __init__(self, model_path: str | Path, num_threads: int = 1) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"model {self.path}: no such file")
        try:
            self.card: JsonObject = cards.read_card(self.path)
        except FileNotFoundError:
            raise ModelError(f"model {self.path}: its card {cards.card_path(self.path)} is missing") from None
        except (ValueError, OSError) as error:  # JSONDecodeError is a ValueError
            raise ModelError(f"model {self.path}: {error}") from None
        try:
            self.preprocess = resolve(self.card["preprocess"])
        except ValueError as error:
            raise ModelError(f"model card {cards.card_path(self.path)}: {error}") from None
        try:
            self.lite = LiteModel(self.path, num_threads=num_threads)
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"model {self.path}: LiteRT cannot load it ({error})") from None
        want = tuple(self.card["input_shape"])
        got = self.lite.input_shape[1:]
        if got != want:
            raise ModelError(f"model {self.path}: the file's input is {list(got)} but its card says "
                             f"{list(want)}")
        if self.lite.output_size != 2:
            raise ModelError(f"model {self.path}: outputs {self.lite.output_size} values, expected (dx, dy)")
        self.scale = np.asarray(self.card["output_scale"], dtype=np.float64)
        self.offset = np.asarray(self.card.get("output_offset") or [0.0, 0.0], dtype=np.float64)

    @property
    def fingerprint(self) -> str:
        """The model file's SHA-256 (hex, first 16): what a calibration of this model's output is
        tied to (another file, even of the same name, needs its own)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        return self._fingerprint

    @property
    def twin_basis(self) -> Calibration | None:
        """The calibration of the geometry a twin-trained model speaks (None for a model trained
        on a column's own data: it already speaks that column's)."""
        if self.card.get("geometry", "twin") != "twin":
            return None
        return nominal_calibration(float(self.card["c0_over_cf"]), float(self.card["wobble_fraction"]))

    def output_geometry(self, column_matrix: np.ndarray) -> np.ndarray:
        """R: this model's output as the column's delta through the calibration matrix alone (the
        remap of a twin-trained model; the identity for a column-trained one)."""
        basis = self.twin_basis
        return np.eye(2) if basis is None else remap_matrix(basis.array, column_matrix)

    @property
    def identity(self) -> dict[str, str]:
        """What names this model in logs and metrics: file, preprocessing, training date."""
        training = self.card.get("training", {})
        return {"file": self.path.name, "preprocess": self.card["preprocess"],
                "trained": str(training.get("date", ""))}

    def tensor(self, stack: np.ndarray) -> np.ndarray:
        """The model input for one stack, shaped (1, H, W, 7) as the card says."""
        x = np.asarray(self.preprocess(stack), dtype=np.float32)
        if x.shape[1:] != tuple(self.card["input_shape"]):
            raise ModelError(f"preprocessing {self.card['preprocess']} gave {list(x.shape)}, the model "
                             f"takes [1, {', '.join(map(str, self.card['input_shape']))}]")
        return x

    def predict(self, stack: np.ndarray) -> ModelEstimate:
        """delta for one stack; ValueError (from the preprocessing) names a stack it cannot use."""
        t0 = time.perf_counter()
        x = self.tensor(stack)
        t1 = time.perf_counter()
        out = self.lite.invoke_one(x).astype(np.float64)
        t2 = time.perf_counter()
        delta = out * self.scale + self.offset
        return ModelEstimate((float(delta[0]), float(delta[1])), (t1 - t0) * 1e3, (t2 - t1) * 1e3)


def check_compatible(card: JsonObject, *, wobble_fraction: float, frames: str) -> None:
    """Refuse at start a model whose card does not match the configured wobble or image source:
    a model fed a wobble or a kind of frame it was not made for gives confident nonsense."""
    expected = float(card["wobble_fraction"])
    if not math.isclose(expected, wobble_fraction, rel_tol=1e-6):
        raise ModelError(f"the model's card expects a {expected:.3g} wobble (wobble_fraction) but "
                         f"wobble.fraction is {wobble_fraction:.3g}: set wobble.fraction to {expected:.3g} "
                         "or use a model trained at this wobble")
    declared = card["frames"]
    if declared not in ("any", frames):
        source = "screen" if frames == "display" else "camera"
        raise ModelError(f"the model's card says it takes {declared!r} frames, but source.kind {source} "
                         f"gives {frames!r} frames: use a model for {frames!r} (or 'any') frames")


def open_model(settings: Settings, frames: str) -> ModelEstimator:
    """The configured model (`estimator.model`, on `estimator.threads` threads), loaded and checked
    against the configured wobble and the kind of `frames` the source gives ("raw" from the camera,
    "display" from the screen): the one way `temalign config check` and the daemon open it. Raises
    ModelError (exit status 2) naming the file when the model or its card is missing, invalid or
    made for another wobble or source."""
    model = ModelEstimator(settings.estimator.model, settings.estimator.threads)
    try:
        check_compatible(model.card, wobble_fraction=settings.wobble.fraction, frames=frames)
    except ModelError as error:
        raise ModelError(f"model {model.path} (card {cards.card_path(model.path)}): {error}") from None
    return model
