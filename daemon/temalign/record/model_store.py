"""The models the daemon keeps in its state directory (issue 14): the promoted live model, the one
it replaced (for `temalign model rollback`), and the candidate in shadow with its evidence.

    <state_dir>/models/models.json            which stored model plays which part, the evidence
    <state_dir>/models/<fingerprint>-<card>/  one stored model: its .tflite and its card, copied

Each model is copied in once, into a folder named by the SHA-256 of its file and of its card, so a
file that changes where it was found cannot change what was compared or promoted. Which model is
live, previous or in shadow is one small JSON file written atomically (temalign.durable): a swap
is one rename, and a kill at any moment leaves the old parts or the new ones, never half a swap.
Folders no part names any more are removed; nothing else in the state directory is touched.

A models.json that cannot be read is an error, never a guess (a guess could put another model in
charge of the aperture)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from temalign.decide.promotion import Evidence
from temalign.durable import atomic_write, fsync_dir
from temalign.errors import TemalignError
from temalign.estimate.card import card_path
from temalign.estimate.model_estimator import file_fingerprint
from temalign.values import JsonObject

MODELS_DIR = "models"
STATE_NAME = "models.json"
STATE_VERSION = 1
FILE_MODE = 0o640
_STORED = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{8}$")
_INCOMING = ".incoming-"
ORIGINS = ("config", "candidate")
"""Where a stored model came from: the config's `estimator.model` (kept when a promotion replaced
it) or `temalign model shadow PATH`."""


class ModelStoreError(TemalignError, ValueError):
    """models.json cannot be used, or a model cannot be copied in; nothing was changed."""


@dataclass(frozen=True)
class StoredModel:
    """One model in the store: `file` relative to the models folder, the model file's fingerprint
    (ModelEstimator.fingerprint), the path it was copied from, where it came from (ORIGINS), when
    it took its part, and the shadow evidence that promoted it (None: not promoted)."""

    file: str
    fingerprint: str
    source: str
    origin: str
    since: str
    evidence: Evidence | None = None

    @property
    def name(self) -> str:
        return Path(self.file).name

    def to_json(self) -> JsonObject:
        return {"file": self.file, "fingerprint": self.fingerprint, "source": self.source,
                "origin": self.origin, "since": self.since,
                "evidence": None if self.evidence is None else self.evidence.to_json()}

    @classmethod
    def from_json(cls, data: object) -> StoredModel:
        if not isinstance(data, dict):
            raise ValueError(f"a stored model is an object, got {data!r}")
        texts = {k: data.get(k) for k in ("file", "fingerprint", "source", "origin", "since")}
        wrong = [k for k, v in texts.items() if not isinstance(v, str)]
        if wrong:
            raise ValueError(f"a stored model needs {', '.join(wrong)} as text")
        file = str(texts["file"])
        if len(Path(file).parts) != 2 or not _STORED.match(Path(file).parts[0]):
            raise ValueError(f"file {file!r} is not a stored model's (<fingerprint>-<card>/<name>.tflite)")
        if texts["origin"] not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, got {texts['origin']!r}")
        evidence = data.get("evidence")
        return cls(file, str(texts["fingerprint"]), str(texts["source"]), str(texts["origin"]),
                   str(texts["since"]), None if evidence is None else Evidence.from_json(evidence))


@dataclass(frozen=True)
class Shadowed:
    """The candidate in shadow and what it has shown so far."""

    model: StoredModel
    evidence: Evidence

    def to_json(self) -> JsonObject:
        return {"model": self.model.to_json(), "evidence": self.evidence.to_json()}

    @classmethod
    def from_json(cls, data: object) -> Shadowed:
        if not isinstance(data, dict):
            raise ValueError(f"the shadow is an object, got {data!r}")
        return cls(StoredModel.from_json(data.get("model")), Evidence.from_json(data.get("evidence")))


@dataclass(frozen=True)
class ModelParts:
    """Which stored model plays which part. `live` None: the config's `estimator.model` is live."""

    live: StoredModel | None = None
    previous: StoredModel | None = None
    shadow: Shadowed | None = None

    def to_json(self) -> JsonObject:
        return {"version": STATE_VERSION,
                "live": None if self.live is None else self.live.to_json(),
                "previous": None if self.previous is None else self.previous.to_json(),
                "shadow": None if self.shadow is None else self.shadow.to_json()}

    @classmethod
    def from_json(cls, data: object) -> ModelParts:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version is {data.get('version')!r}; this temalign reads {STATE_VERSION}")
        unknown = sorted(set(data) - {"version", "live", "previous", "shadow"})
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}")
        live, previous, shadow = data.get("live"), data.get("previous"), data.get("shadow")
        return cls(None if live is None else StoredModel.from_json(live),
                   None if previous is None else StoredModel.from_json(previous),
                   None if shadow is None else Shadowed.from_json(shadow))

    def with_evidence(self, evidence: Evidence) -> ModelParts:
        """These parts with the shadow's evidence replaced."""
        assert self.shadow is not None
        return replace(self, shadow=replace(self.shadow, evidence=evidence))

    def stored(self) -> list[StoredModel]:
        """Every stored model some part names."""
        return [m for m in (self.live, self.previous, self.shadow.model if self.shadow else None)
                if m is not None]


class ModelStore:
    """`<state_dir>/models/`: the parts (models.json) and the stored models they name."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / MODELS_DIR
        self.path = self.root / STATE_NAME

    def load(self) -> ModelParts:
        """The parts as saved; none saved: no promoted model, no previous, no shadow."""
        try:
            text = self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return ModelParts()
        except (OSError, UnicodeDecodeError) as error:
            raise self._corrupt(f"cannot be read ({error})") from error
        try:
            parts = ModelParts.from_json(json.loads(text))
        except ValueError as error:
            raise self._corrupt(f"is not a valid temalign model record: {error}") from error
        missing = [m.file for m in parts.stored() if not self.file(m).is_file()]
        if missing:
            raise self._corrupt(f"names stored models that are gone: {', '.join(missing)}")
        return parts

    def _corrupt(self, what: str) -> ModelStoreError:
        return ModelStoreError(
            f"the model record {self.path} {what}. temalign will not guess which model is live: fix "
            f"the file, or remove {self.root} to go back to the config's estimator.model with no "
            "candidate in shadow")

    def save(self, parts: ModelParts) -> None:
        """Write the parts atomically, then remove the stored models none of them names."""
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)
        encoded = (json.dumps(parts.to_json(), indent=1, allow_nan=False) + "\n").encode()
        atomic_write(self.path, lambda handle: handle.write(encoded), mode=FILE_MODE)
        self.collect(parts)

    def file(self, model: StoredModel) -> Path:
        """Where a stored model's .tflite is (its card beside it)."""
        return self.root / model.file

    def keep(self, source: Path, *, origin: str, since: str) -> StoredModel:
        """Copy a model and its card into the store (no part names it yet: `save` parts that do,
        or `collect` to drop it). ModelStoreError if either cannot be read."""
        source = Path(source)
        card = card_path(source)
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=_INCOMING, dir=self.root))
        try:
            try:
                shutil.copyfile(source, incoming / source.name)
                shutil.copyfile(card, incoming / card.name)
            except OSError as error:
                raise ModelStoreError(f"model {source}: cannot be copied into {self.root} "
                                      f"({error.strerror or error}: {error.filename})") from None
            fingerprint = file_fingerprint(incoming / source.name)
            card_hash = hashlib.sha256((incoming / card.name).read_bytes()).hexdigest()[:8]
            folder = self.root / f"{fingerprint}-{card_hash}"
            name = source.name
            if folder.exists():  # the same bytes, kept before (perhaps under another name)
                name = next((f.name for f in folder.glob("*.tflite")), name)
                shutil.rmtree(incoming)
            else:
                incoming.rename(folder)
                fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return StoredModel(f"{folder.name}/{name}", fingerprint, str(source), origin, since)

    def collect(self, parts: ModelParts) -> None:
        """Remove the stored models `parts` does not name, and copies a kill left half made; only
        folders of the store's own naming are touched."""
        if not self.root.is_dir():
            return
        named = {Path(m.file).parts[0] for m in parts.stored()}
        for entry in self.root.iterdir():
            ours = _STORED.match(entry.name) or entry.name.startswith(_INCOMING)
            if ours and entry.is_dir() and not entry.is_symlink() and entry.name not in named:
                shutil.rmtree(entry, ignore_errors=True)
