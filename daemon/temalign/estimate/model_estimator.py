"""The learnt estimator at run time: a .tflite model, its card, and the card's preprocessing.

Everything the model needs to be fed exactly what it was trained on comes from the card beside it
(the preprocessing function, the input shape, what it outputs); loading refuses a model whose card
is missing, invalid or disagrees with the file, before anything is connected or moved.

Two kinds of output (the card's `output`):
- "spots" (the spot network, the default model): each frame's spot centre (FOV) and a confidence;
  the walk through them is fitted against the C1 values the daemon set (estimate/model_walk.py)
  and mapped through the column's calibration, like the classical estimator's centroids;
- "delta" (`wobble_physics` and the paper's CNNs): delta in motor units directly, times the card's
  output_scale plus its output_offset."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from temalign.decide.model_gate import model_gate
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


def read_model_card(path: Path) -> JsonObject:
    """The card of the model at `path`, validated; ModelError names the file when it is missing or
    invalid."""
    try:
        return cards.read_card(path)
    except FileNotFoundError:
        raise ModelError(f"model {path}: its card {cards.card_path(path)} is missing") from None
    except (ValueError, OSError) as error:  # JSONDecodeError is a ValueError
        raise ModelError(f"model {path}: {error}") from None


OUTPUT_SIZES = {"delta": 2, "spots": 21}
"""Values per stack of each kind of output: (dx, dy), or (x, y, confidence logit) for 7 frames."""


@dataclass(frozen=True)
class SpotReading:
    """What a spot model read in one stack: each frame's spot centre (7, 2) in FOV (x right, y down,
    0 at the image centre) and its confidence (7,) from 0 to 1, and what it cost."""

    centres: np.ndarray
    confidence: np.ndarray
    preprocess_ms: float
    inference_ms: float


@dataclass(frozen=True)
class ModelEstimate:
    """delta (motor units, x and y) that re-centres the aperture, and what it cost."""

    delta: tuple[float, float]
    preprocess_ms: float
    inference_ms: float


def file_fingerprint(path: Path) -> str:
    """A model file's SHA-256 (hex, first 16): what names one model file (ModelEstimator.fingerprint,
    the model store of service.lifecycle)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class ModelEstimator:
    """Predicts delta from one wobble stack `(7, H, W)` with LiteRT on `num_threads` threads."""

    def __init__(self, model_path: str | Path, num_threads: int = 1) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"model {self.path}: no such file")
        self.card: JsonObject = read_model_card(self.path)
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
        self.output: str = str(self.card.get("output", "delta"))
        if self.lite.output_size != OUTPUT_SIZES[self.output]:
            raise ModelError(f"model {self.path}: outputs {self.lite.output_size} values, but its card says "
                             f"{self.output!r}, which is {OUTPUT_SIZES[self.output]} values")
        self.scale = np.asarray(self.card.get("output_scale") or [1.0, 1.0], dtype=np.float64)
        self.offset = np.asarray(self.card.get("output_offset") or [0.0, 0.0], dtype=np.float64)

    @property
    def fingerprint(self) -> str:
        """The model file's SHA-256 (hex, first 16): what a calibration of this model's output is
        tied to (another file, even of the same name, needs its own)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = file_fingerprint(self.path)
        return self._fingerprint

    @property
    def reads_spots(self) -> bool:
        """The model reads each frame's spot (card output "spots") rather than giving delta."""
        return self.output == "spots"

    @property
    def lowest_wobble(self) -> float | None:
        """The narrowest wobble this model was made for (its card's `wobble_range`), or None for a
        model made for one wobble only."""
        if "wobble_range" not in self.card:
            return None
        return float(self.card["wobble_range"][0])

    @property
    def twin_basis(self) -> Calibration | None:
        """The calibration of the geometry a twin-trained delta model speaks (None for a model
        trained on a column's own data, which already speaks that column's, and for a spot model,
        whose spots are the images' own)."""
        if self.reads_spots or self.card.get("geometry", "twin") != "twin":
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

    def read_spots(self, stack: np.ndarray) -> SpotReading:
        """Each frame's spot for one stack (a spot model); ValueError (from the preprocessing) names
        a stack it cannot use."""
        if not self.reads_spots:
            raise ModelError(f"model {self.path} gives delta, not spots (card output {self.output!r})")
        t0 = time.perf_counter()
        x = self.tensor(stack)
        t1 = time.perf_counter()
        out = self.lite.invoke_one(x).astype(np.float64).reshape(7, 3)
        t2 = time.perf_counter()
        confidence = 1.0 / (1.0 + np.exp(-np.clip(out[:, 2], -50.0, 50.0)))
        return SpotReading(out[:, :2].copy(), confidence, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def predict(self, stack: np.ndarray) -> ModelEstimate:
        """delta for one stack (a delta model); ValueError (from the preprocessing) names a stack it
        cannot use."""
        if self.reads_spots:
            raise ModelError(f"model {self.path} reads spots; its delta comes from the walk through "
                             "them and the calibration (estimate/model_walk.py)")
        t0 = time.perf_counter()
        x = self.tensor(stack)
        t1 = time.perf_counter()
        out = self.lite.invoke_one(x).astype(np.float64)
        t2 = time.perf_counter()
        delta = out * self.scale + self.offset
        return ModelEstimate((float(delta[0]), float(delta[1])), (t1 - t0) * 1e3, (t2 - t1) * 1e3)


def check_compatible(card: JsonObject, *, wobble_fraction: float, frames: str) -> None:
    """Refuse at start a model whose card does not match the configured wobble or image source:
    a model fed a wobble or a kind of frame it was not made for gives confident nonsense. A card
    with a `wobble_range` was trained on every wobble in it and takes any of them."""
    if "wobble_range" in card:
        low, high = (float(v) for v in card["wobble_range"])
        if not low * (1 - 1e-6) <= wobble_fraction <= high * (1 + 1e-6):
            raise ModelError(f"the model was trained on wobbles of {low:.3g} to {high:.3g} (wobble_range) "
                             f"but wobble.fraction is {wobble_fraction:.3g}: set a wobble in that range or "
                             "use a model trained for this one")
        expected = wobble_fraction
    else:
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


def open_model(settings: Settings, frames: str, path: Path | None = None) -> ModelEstimator:
    """A model the daemon is to run (the configured `estimator.model`, or `path`: a candidate for
    the shadow, a promoted model), on `estimator.threads` threads, loaded and checked against the
    configured wobble and the kind of `frames` the source gives ("raw" from the camera, "display"
    from the screen), and through the model gate (`estimator.max_model_rmse_percent`): the one way
    `temalign config check`, the daemon and `temalign model shadow` open one. Raises ModelError
    (exit status 2) naming the file when the model or its card is missing, invalid, made for
    another wobble or source, not evaluated or evaluated over the limit."""
    model = ModelEstimator(settings.estimator.model if path is None else path, settings.estimator.threads)
    try:
        check_compatible(model.card, wobble_fraction=settings.wobble.fraction, frames=frames)
    except ModelError as error:
        raise ModelError(f"model {model.path} (card {cards.card_path(model.path)}): {error}") from None
    check_evaluated(model.card, model.path, settings.estimator.max_model_rmse_percent)
    return model


def check_evaluated(card: JsonObject, path: Path, limit_percent: float) -> None:
    """The model gate (decide.model_gate) as an error: ModelError (exit status 2) naming the file,
    the number that failed and the limit, when the card has no evaluation or one over the limit."""
    reason = model_gate(card, limit_percent)
    if reason is not None:
        raise ModelError(f"model {path} refused: {reason}")


def check_configured_card(settings: Settings) -> None:
    """The configured model's card read and gated, without loading the model: what a reload
    (SIGHUP) checks of the model a restart would run. ModelError as open_model's."""
    path = Path(settings.estimator.model)
    check_evaluated(read_model_card(path), path, settings.estimator.max_model_rmse_percent)
