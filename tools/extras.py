"""What a tool needs beyond the daemon's own packages, and the one line that says how to get it.

The daemon installs without TensorFlow or matplotlib; the tools that need them come with the
`[train]` or `[demo]` extra. A tool calls `require` before it imports them, so without the extra
it says which one to install (exit status 2) instead of dying on `No module named 'keras'`, and
`--help` says so too."""

from __future__ import annotations

import importlib.util
import sys

EXTRAS = {
    "train": "TensorFlow and Keras, h5py, matplotlib, tqdm: training, conversion, acquisition",
    "demo": "matplotlib: the demo's and the gallery's figures",
}


def missing(*modules: str) -> list[str]:
    """The top-level modules of `modules` this interpreter cannot import."""
    gone = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            gone.append(name)
    return gone


def require(tool: str, extra: str, *modules: str) -> None:
    """Exit with a line naming `extra` when any of `modules` cannot be imported."""
    gone = missing(*modules)
    if gone:
        print(f"{tool}: needs the [{extra}] extra ({EXTRAS[extra]}); {', '.join(gone)} "
              f"{'is' if len(gone) == 1 else 'are'} not installed: pip install 'temalign[{extra}]' "
              "(in a checkout: make .venv/.dev-installed)", file=sys.stderr)
        raise SystemExit(2)
