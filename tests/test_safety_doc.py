"""docs/safety.md's table names real code and real tests: every function it gives exists in the file
it names, every test it cites exists, and every gate listed in decide/ has a row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import temalign.decide

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "daemon" / "temalign"
DOC = (REPO / "docs" / "safety.md").read_text(encoding="utf-8")
TABLE = [line for line in DOC.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]


def _names(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and `Class.method`s."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef))
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_every_function_in_the_table_exists() -> None:
    assert len(TABLE) >= 15
    cited = 0
    for row in TABLE:
        code_cell = row.split("|")[3]
        for file, functions in re.findall(r"`([\w/]+\.py): ([\w., ]+)`", code_cell):
            names = _names(PACKAGE / file)
            for function in (f.strip() for f in functions.split(",")):
                assert function in names, f"docs/safety.md names {file}: {function}, which is not there"
                cited += 1
    assert cited >= 25


def test_every_test_in_the_table_exists() -> None:
    tests: dict[str, set[str]] = {}
    for row in TABLE:
        cell = row.split("|")[5]
        current = None
        for part in re.findall(r"`([^`]+)`", cell):
            match = re.fullmatch(r"(test_\w+\.py)(?:::(\w+\*?))?", part)
            if match:
                current = match.group(1)
                name = match.group(2)
            else:
                name = part
            assert current is not None, f"a test name without its file in: {cell}"
            names = tests.setdefault(current, _names(REPO / "tests" / current))
            if name is None:
                continue
            if name.endswith("*"):
                assert any(n.startswith(name[:-1]) for n in names), f"no {current}::{name}"
            else:
                assert name in names, f"docs/safety.md cites {current}::{name}, which is not there"


def test_every_gate_of_decide_has_a_row() -> None:
    listed = re.findall(r"^\s+(\w+)\.(\w+)\s{2,}", temalign.decide.__doc__ or "", re.M)
    assert len(listed) >= 12
    for module, function in listed:
        assert function in _names(PACKAGE / "decide" / f"{module}.py"), (module, function)
        assert re.search(rf"`decide/{module}\.py: [\w, ]*\b{function}\b", DOC), \
            f"docs/safety.md has no row for decide/{module}.py: {function}"
