"""The service package's boundaries: it imports no simulator, demo or TensorFlow, and its
module-level imports form no cycle (each layer of the data's way stands on the ones before it)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import temalign

PACKAGE_DIR = Path(temalign.__file__).parent
FOREIGN = ("temalign_twin", "tensorflow", "keras", "matplotlib")


def service_modules() -> list[str]:
    """Every module of the service package but `temalign.__main__` (which runs the command line)."""
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="temalign.")
                  if m.name != "temalign.__main__")


def loaded_after(code: str) -> list[str]:
    """The foreign modules a fresh interpreter holds after running `code`."""
    probe = (f"import sys\n{code}\nimport json\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FOREIGN!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_service_module_imports_without_a_simulator() -> None:
    modules = service_modules()
    assert "temalign.service.daemon" in modules and "temalign.estimate.classical" in modules
    assert not any(m.startswith("temalign.twin") or m == "temalign.demo" for m in modules), \
        "the twin or the demo is back inside the service package"
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    assert loaded_after(code) == []


def test_the_command_line_loads_the_twin_only_for_its_commands() -> None:
    assert loaded_after("from temalign.cli import build_parser; build_parser(['run'])") == []
    assert loaded_after("from temalign.cli import build_parser; build_parser(['status', '--json'])") == []
    twin = loaded_after("from temalign.cli import build_parser; build_parser(['twin', '--port', '1'])")
    assert "temalign_twin.cli" in twin and "temalign_twin.demo" in twin


def _imports(name: str, *, anywhere: bool) -> set[str]:
    """The temalign modules `name` imports: at module level, or `anywhere` (inside functions too)."""
    path = PACKAGE_DIR.joinpath(*name.split(".")[1:])
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(file.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("temalign."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("temalign"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if PACKAGE_DIR.joinpath(*sub.split(".")[1:]).with_suffix(".py").exists()
                          else node.module)
    return {m for m in found if m != name}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def _layer(module: str) -> str:
    """temalign.estimate.walk -> temalign.estimate; temalign.optics -> temalign.optics. The command
    line's modules (temalign.cli, temalign.*.cli, temalign.*.*_cli such as service.model_cli) stand
    above every layer: they compose them."""
    if module == "temalign.cli" or module.endswith((".cli", "_cli")):
        return "commands"
    return ".".join(module.split(".")[:2])


def test_imports_form_no_cycle_between_modules_or_between_layers() -> None:
    modules = set(service_modules()) | {"temalign"}
    graph = {m: {d for d in _imports(m, anywhere=False) if d in modules} for m in modules - {"temalign"}}
    assert _find_cycle(graph) is None, "module import cycle: " + " -> ".join(_find_cycle(graph) or [])
    assert graph["temalign.estimate.classical"] >= {"temalign.estimate.calibration", "temalign.estimate.walk"}
    layers: dict[str, set[str]] = {}
    for m in modules - {"temalign"}:
        layers.setdefault(_layer(m), set()).update(
            _layer(d) for d in _imports(m, anywhere=True) if _layer(d) != _layer(m))
    cycle = _find_cycle(layers)
    assert cycle is None, "the layers import each other: " + " -> ".join(cycle or [])
    assert "temalign.estimate" in layers["temalign.service"]
