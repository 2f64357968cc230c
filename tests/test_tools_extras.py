"""The tools without their extra: each says which extra to install (exit status 2), none dies on
`No module named 'keras'`. The packages are hidden from a real interpreter by a meta-path finder
that answers for them as Python does for a package that is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from extras import missing

TOOLS = Path(__file__).resolve().parents[1] / "tools"
WITHOUT = """
import importlib.abc, os, runpy, sys
HIDDEN = set(sys.argv[1].split(","))
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
tool = sys.argv[2]
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(tool)  # as `python tools/TOOL.py` has it
runpy.run_path(tool, run_name="__main__")
"""
TRAIN = "keras,tensorflow,matplotlib,h5py,tqdm"


@pytest.mark.parametrize(("tool", "args", "hidden", "extra"), [
    ("train.py", ["--help"], TRAIN, "train"),
    ("convert.py", ["--help"], TRAIN, "train"),
    ("study.py", ["--help"], TRAIN, "train"),
    ("train_spotnet.py", ["--help"], TRAIN, "train"),
    ("study_spotnet.py", ["--help"], TRAIN, "train"),
    ("learn.py", ["--help"], TRAIN, "train"),
    ("tune_spotnet.py", ["--help"], TRAIN, "train"),
    ("bench_learning.py", ["--help"], TRAIN, "train"),
    ("acquire.py", ["--twin", "n13", "--out", "OUT"], TRAIN, "train"),
    ("twin_gallery.py", ["--help"], "matplotlib", "demo"),
])
def test_a_tool_without_its_extra_says_which_to_install(tool: str, args: list[str], hidden: str, extra: str,
                                                        tmp_path: Path) -> None:
    args = [str(tmp_path / "set.npz") if arg == "OUT" else arg for arg in args]
    result = subprocess.run([sys.executable, "-c", WITHOUT, hidden, str(TOOLS / tool), *args],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result
    assert f"tools/{tool}: needs the [{extra}] extra" in result.stderr
    assert f"pip install 'temalign[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr and "No module named" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing written, nothing acquired"


def test_missing_names_only_what_cannot_be_imported() -> None:
    assert missing("json", "numpy") == []
    assert missing("json", "no_such_package_temalign") == ["no_such_package_temalign"]
