"""The wheel, as a site installs it: built from the checkout, installed (not editable) into a fresh
venv, and run from another directory. The default config and the shipped model with its card come
from the installed package (temalign.shipped), `config check` opens the model and exits 2 on one it
cannot use, and `temalign demo` (the sibling package temalign_twin, through its entry points) runs.

The new venv has no pip and no index: the wheel goes in with `--no-deps` by this venv's pip, and the
dependencies (numpy, pydantic, LiteRT...) come from this venv's site-packages, listed by a .pth
file in the new one. That line adds the directory only: the .pth files there (this checkout's
editable install among them) are not processed, and the new venv's own site-packages comes first,
so `temalign` is the installed one (checked below)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_CONFIG = Path("/etc/temalign/temalign.yaml")
TOP_LEVEL_LEFT_OUT = {".git", ".venv", "build", "dist", "data", "runs", "bench-out", "demo-out", "out",
                      ".whl", ".gl", ".pytest_cache", ".ruff_cache", ".hypothesis", ".mypy_cache"}
"""What a fresh clone does not have (.gitignore): the copy the wheel is built from leaves it out."""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site: Path
    env: dict[str, str]

    @property
    def temalign(self) -> Path:
        return self.venv / "bin" / "temalign"


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == REPO
    return {n for n in names
            if n == "__pycache__" or n.endswith(".egg-info") or (top and n in TOP_LEVEL_LEFT_OUT)}


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, and a stale
    # build/lib of an earlier layout would end up in the wheel.
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_ignore)
    wheels = root / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--disable-pip-version-check", "-q", "-w", wheels, source], cwd=root, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("temalign-*.whl")

    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    assert site.is_relative_to(venv), site
    # Installed before the .pth below exists: pip must not see this venv's editable temalign.
    pip = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                "--disable-pip-version-check", "-q", wheel], cwd=root, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    dev_paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_temalign_test_dependencies.pth").write_text("".join(f"{p}\n" for p in dev_paths))

    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONNOUSERSITE"] = "1"
    where = _run([python, "-c", "import temalign, temalign_twin, numpy; "
                                "print(temalign.__file__); print(temalign_twin.__file__)"],
                 cwd=root, env=env)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(site), f"{line} is not the installed package (in {site})"
    return Installed(wheel, venv, site, env)


def test_the_wheel_holds_both_packages_and_the_shipped_data(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        shipped_yaml = wheel.read("temalign/config/temalign.yaml")
        entry_points = next(wheel.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    for name in ("temalign/__init__.py", "temalign/shipped.py", "temalign/py.typed",
                 "temalign/config/temalign.yaml", "temalign/models/spotnet.tflite",
                 "temalign/models/spotnet.json", "temalign/models/wobble_physics.tflite",
                 "temalign/models/wobble_physics.json", "temalign_twin/__init__.py", "temalign_twin/demo.py"):
        assert name in names, f"the wheel lacks {name}"
    tops = {n.split("/", 1)[0] for n in names}
    dist_info = installed.wheel.name.split("-py3")[0] + ".dist-info"
    assert tops == {"temalign", "temalign_twin", dist_info}, tops
    assert not any(n.startswith(("tests/", "tools/")) or "/tests/" in n for n in names)
    # The file itself, not the checkout's symlink to it.
    assert shipped_yaml == (REPO / "daemon" / "temalign" / "config" / "temalign.yaml").read_bytes()
    assert "[temalign.commands]" in entry_points and "temalign_twin.demo:register" in entry_points


def test_version(installed: Installed, tmp_path: Path) -> None:
    result = _run([installed.temalign, "--version"], cwd=tmp_path, env=installed.env)
    version = installed.wheel.name.split("-")[1]
    assert result.returncode == 0 and result.stdout.strip() == f"temalign {version}", result


def test_config_check_of_the_shipped_config(installed: Installed, tmp_path: Path) -> None:
    shipped_config = installed.site / "temalign" / "config" / "temalign.yaml"
    # The default path is the shipped config unless this machine has a site config: then name it.
    args = [str(shipped_config)] if SYSTEM_CONFIG.exists() else []
    result = _run([installed.temalign, "config", "check", *args], cwd=tmp_path, env=installed.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{shipped_config}: OK\n"), result.stdout
    model = installed.site / "temalign" / "models" / "spotnet.tflite"
    assert f"model       {model} (card: preprocess " in result.stdout, result.stdout
    assert "MISSING" not in result.stdout
    assert model.is_file() and model.with_suffix(".json").is_file()


def _config(directory: Path, model: Path) -> Path:
    path = directory / "temalign.yaml"
    path.write_text(f"microscope: {{address: '127.0.0.1:7801'}}\nestimator: {{model: '{model}'}}\n")
    return path


def test_config_check_exits_2_naming_a_missing_model(installed: Installed, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "gone.tflite"
    result = _run([installed.temalign, "config", "check", _config(tmp_path, missing)], cwd=tmp_path,
                  env=installed.env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert f"temalign: error: model {missing}: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_exits_2_naming_an_invalid_card(installed: Installed, tmp_path: Path) -> None:
    shipped_model = installed.site / "temalign" / "models" / "wobble_physics.tflite"
    model = tmp_path / "mine.tflite"
    shutil.copy(shipped_model, model)
    card = json.loads(shipped_model.with_suffix(".json").read_text())
    del card["training"]
    model.with_suffix(".json").write_text(json.dumps(card))
    result = _run([installed.temalign, "config", "check", _config(tmp_path, model)], cwd=tmp_path,
                  env=installed.env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"temalign: error: model {model}: invalid model card "
                                    f"{model.with_suffix('.json')}: missing key 'training'"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_short_demo_runs(installed: Installed, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = _run([installed.temalign, "demo", "--hours", "0.1", "--scale", "2000", "--out", out,
                   "--metrics-port", "0"], cwd=tmp_path, env=installed.env, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["twin_hours"] == 0.1
    # The installed model estimated (model and classical agreed) and the daemon moved on it.
    assert summary["cycles"] >= 1 and summary["corrections"] >= 1, summary
