"""What ships inside the package: the default config and the models with their cards.

They are package data (pyproject.toml `[tool.setuptools.package-data]`), found with
`importlib.resources`, so the same names work from a checkout (the editable install) and from an
installed wheel. The loader and LiteRT open them as files: a package that does not sit on a real
filesystem (run from a zip) is refused with a ShippedError naming the resource, never a guessed path.

Pure standard library: `temalign config` imports this without pydantic, numpy or LiteRT."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from temalign.errors import TemalignError

PACKAGE = "temalign"
CONFIG = ("config", "temalign.yaml")
MODELS = "models"
MODEL_SUFFIX = ".tflite"
DEFAULT_MODEL = "spotnet"
"""The model `estimator.model` names when the config leaves it out."""


class ShippedError(TemalignError):
    """The package's own data cannot be used as files; exit status 2, like a bad config."""

    exit_status = 2


def _on_disk(resource: Traversable, what: str) -> Path:
    if not isinstance(resource, Path):
        raise ShippedError(f"the shipped {what} ({resource}) is not a file on a filesystem: install "
                           f"{PACKAGE} as a directory (pip install, not a zip) or name a file instead")
    return resource


def _root() -> Traversable:
    return files(PACKAGE)


def config_path() -> Path:
    """The shipped temalign.yaml (every key at its default, each with a comment)."""
    resource = _root()
    for part in CONFIG:
        resource = resource / part
    return _on_disk(resource, "config")


def models_dir() -> Path:
    """The folder of the shipped models and their cards."""
    return _on_disk(_root() / MODELS, "models folder")


def model_names() -> list[str]:
    """The names of the shipped models (their files without `.tflite`), sorted."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix == MODEL_SUFFIX and p.is_file())


def is_model_name(text: str) -> bool:
    """Whether `text` names a shipped model (a bare name: no directory part, no suffix, no `~`)
    rather than a path."""
    return bool(text) and not any(c in text for c in "/\\.~") and text.strip() == text


def default_model() -> Path:
    """The .tflite of DEFAULT_MODEL, not checked here: a broken install without it is named by
    whoever opens it (temalign.estimate.model_estimator.open_model: no such file, exit status 2)."""
    return models_dir() / f"{DEFAULT_MODEL}{MODEL_SUFFIX}"


def model_path(name: str) -> Path:
    """The .tflite of the shipped model `name` (its card beside it, `.json`); ValueError listing
    the shipped names when there is none of that name."""
    names = model_names()
    if name not in names:
        shipped = ", ".join(names) if names else "none"
        raise ValueError(f"no shipped model named {name!r} (shipped: {shipped}); a model of your own "
                         f"is named by its path, e.g. ./{name}{MODEL_SUFFIX}")
    return models_dir() / f"{name}{MODEL_SUFFIX}"
