"""The daemon's configuration: schema (Settings), loader (load_config) and `temalign config`.

Names are re-exported lazily so that importing `temalign.config.cli` does not pull in pydantic."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temalign.config.loader import apply_overrides as apply_overrides
    from temalign.config.loader import default_config_path as default_config_path
    from temalign.config.loader import load_config as load_config
    from temalign.config.schema import Settings as Settings

_EXPORTS = {
    "Settings": "temalign.config.schema",
    "load_config": "temalign.config.loader",
    "apply_overrides": "temalign.config.loader",
    "default_config_path": "temalign.config.loader",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
