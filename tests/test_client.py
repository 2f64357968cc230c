"""temalign.client, the acquisition PC's side of the HTTP control endpoint: standard library only,
Python 3.8 syntax, run from a bare copy of its three files in an isolated interpreter against a
real daemon; and the DigitalMicrograph and SerialEM examples, run with stand-ins for their
programs' modules, pausing the daemon around every exposure."""

from __future__ import annotations

import ast
import glob
import json
import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_http_control import TOKEN, http_daemon

from temalign.client import Client, DaemonError, Unreachable
from temalign.service.control import request

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "daemon" / "temalign"
CLIENT_FILES = ("__init__.py", "client.py", "timetext.py")
EXAMPLES = REPO / "examples" / "acquisition"


def bare_copy(directory: Path) -> Path:
    """The three files a camera PC gets, in `directory/temalign/`; returns `directory`."""
    (directory / "temalign").mkdir(parents=True)
    for name in CLIENT_FILES:
        shutil.copy(PACKAGE / name, directory / "temalign" / name)
    return directory


def isolated(python: str, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m temalign.client ARGS` with nothing but the bare copy and the standard library:
    -I (no environment, no user site), -S (no site-packages)."""
    program = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
               "runpy.run_module('temalign.client', run_name='__main__', alter_sys=True)")
    return subprocess.run([python, "-I", "-S", "-c", program, str(directory), *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})


def python38() -> str | None:
    """An interpreter of Python 3.8, the oldest the client promises, if this machine has one (a
    pyenv shim that names a version not selected does not count)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    found = shutil.which("python3.8")
    candidates += [found] if found else []
    for python in candidates:
        check = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30)
        if check.stdout.strip() == "(3, 8)":
            return python
    return None


@pytest.fixture
def daemon(make_twin: Any, connect: Any, short_dir: Path) -> Iterator[Any]:
    served = make_twin()
    running = http_daemon(served, connect, short_dir)
    try:
        yield running
    finally:
        running.stop()


# --- what it is made of -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLIENT_FILES)
def test_the_client_files_import_only_the_standard_library_in_python_38_syntax(name: str) -> None:
    source = (PACKAGE / name).read_text()
    tree = ast.parse(source, feature_version=(3, 8))  # a SyntaxError for anything newer
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    outside = sorted(imported - set(sys.stdlib_module_names) - {"__future__", "temalign"})
    assert not outside, f"{name} imports {outside}"
    inside = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module and node.module.startswith("temalign")}
    assert inside <= {"temalign.timetext"}, inside


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_the_acquisition_examples_are_python_38(script: Path) -> None:
    ast.parse(script.read_text(), feature_version=(3, 8))


def test_a_bare_copy_loads_no_other_module(tmp_path: Path) -> None:
    program = ("import sys; sys.path.insert(0, sys.argv[1]); import temalign.client; "
               "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", program, str(bare_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['__main__', 'temalign']"


# --- against a real daemon -----------------------------------------------------------------------------

def test_the_command_line_from_a_bare_copy(daemon: Any, tmp_path: Path) -> None:
    copy = bare_copy(tmp_path / "pc")
    url = daemon.http_url
    token = str(daemon.settings.control.http_token_file)
    auth = ("--url", url, "--token-file", token)
    status = isolated(sys.executable, copy, "status", *auth)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("temalign: running in dry-run")
    paused = isolated(sys.executable, copy, "pause", "10m", "--reason", "hologram series", *auth)
    assert paused.returncode == 0 and paused.stdout.startswith("paused for 10m, until "), paused
    assert request(daemon.settings.control.socket, "status")["pause_reason"] == "hologram series"
    bare = isolated(sys.executable, copy, "pause", "10", *auth)
    assert bare.returncode == 2 and "'10' has no unit" in bare.stderr
    as_json = json.loads(isolated(sys.executable, copy, "status", "--json", *auth).stdout)
    assert as_json["paused"] is True and as_json["pause_reason"] == "hologram series"
    resumed = isolated(sys.executable, copy, "resume", *auth)
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed"), resumed
    (tmp_path / "wrong").write_text("not-the-token\n")
    refused = isolated(sys.executable, copy, "status", "--url", url, "--token-file", str(tmp_path / "wrong"))
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    gone = isolated(sys.executable, copy, "status", "--url", "http://127.0.0.1:9", "--token-file", token)
    assert gone.returncode == 3 and "no answer from the temalign daemon" in gone.stderr
    nothing = isolated(sys.executable, copy, "status")
    assert nothing.returncode == 2 and "no daemon URL" in nothing.stderr


def test_the_client_runs_on_python_38(daemon: Any, tmp_path: Path) -> None:
    python = python38()
    if python is None:
        pytest.skip("no Python 3.8 on this machine (python3.8 on PATH or in ~/.pyenv): the syntax "
                    "check above still holds the client to 3.8")
    copy = bare_copy(tmp_path / "pc")
    auth = ("--url", daemon.http_url, "--token-file", str(daemon.settings.control.http_token_file))
    for args in (("pause", "90s", "--reason", "old python"), ("status",), ("resume",)):
        result = isolated(python, copy, *args, *auth)
        assert result.returncode == 0, (args, result.stderr)
    assert "temalign: running" in isolated(python, copy, "status", *auth).stdout


def test_paused_resumes_its_own_pause_and_keeps_a_persons(daemon: Any) -> None:
    sock = daemon.settings.control.socket
    client = Client(daemon.http_url, token=TOKEN)
    with client.paused(for_s=300, reason="series") as reply:
        assert reply["changed"] is True
        assert request(sock, "status")["pause_reason"] == "series"
    assert request(sock, "status")["paused"] is False
    request(sock, "pause", {"reason": "a person at the column"})
    with client.paused(for_s=300, reason="series") as reply:
        assert reply["changed"] is False
    after = request(sock, "status")
    assert after["paused"] is True and after["pause_reason"] == "a person at the column"
    with pytest.raises(DaemonError, match="HTTP 401"):
        Client(daemon.http_url, token="wrong").status()
    with pytest.raises(Unreachable):
        Client("http://127.0.0.1:9", token=TOKEN, timeout_s=2).status()
    with pytest.raises(ValueError, match="no token"):
        Client(daemon.http_url)


# --- the acquisition scripts ----------------------------------------------------------------------------

STAND_INS = {
    "DigitalMicrograph": '''
import json, os
from temalign.service.control import request
log = []
def _state():
    return request(os.environ["TEST_SOCKET"], "status")["state"]
class _Image:
    def SetName(self, name): log.append(("name", name))
    def ShowImage(self): pass
class _Camera:
    def PrepareForAcquire(self): log.append(("prepare", _state()))
    def AcquireImage(self, exposure, bx, by):
        log.append(("expose", _state()))
        return _Image()
def GetActiveCamera(): return _Camera()
def OkDialog(text): log.append(("dialog", text))
''',
    "serialem": '''
import os
from temalign.service.control import request
log = []
def _state():
    return request(os.environ["TEST_SOCKET"], "status")["state"]
def SetExposure(kind, seconds): log.append(("exposure", kind, seconds))
def OpenNewFile(path): log.append(("open", path))
def Record(): log.append(("expose", _state()))
def Save(): log.append(("save",))
def CloseFile(): log.append(("close", _state()))
def OKBox(text): log.append(("dialog", text))
''',
}


@pytest.mark.parametrize(("script", "module"), [("dm_hologram_series.py", "DigitalMicrograph"),
                                                ("serialem_hologram_series.py", "serialem")])
def test_the_acquisition_examples_pause_around_every_exposure(daemon: Any, tmp_path: Path, script: str,
                                                              module: str, monkeypatch: Any) -> None:
    (tmp_path / f"{module}.py").write_text(STAND_INS[module])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TEMALIGN_CLIENT_DIR", str(bare_copy(tmp_path / "pc")))
    monkeypatch.setenv("TEMALIGN_URL", daemon.http_url)
    monkeypatch.setenv("TEMALIGN_TOKEN_FILE", str(daemon.settings.control.http_token_file))
    monkeypatch.setenv("TEST_SOCKET", str(daemon.settings.control.socket))
    monkeypatch.setenv("SERIES_FRAMES", "3")
    monkeypatch.setenv("SERIES_FILE", str(tmp_path / "holograms.mrc"))
    stand_in = __import__(module)
    try:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
        exposures = [entry[1] for entry in stand_in.log if entry[0] == "expose"]
        assert exposures == ["paused"] * 3, stand_in.log
        status = request(daemon.settings.control.socket, "status")
        assert status["state"] == "dry_run", "resumed after the series"
        stand_in.log.clear()
        monkeypatch.setenv("TEMALIGN_URL", "http://127.0.0.1:9")  # the daemon cannot be reached
        with pytest.raises(Unreachable):
            runpy.run_path(str(EXAMPLES / script), run_name="__main__")
        assert [entry[0] for entry in stand_in.log if entry[0] in ("expose", "dialog")] == ["dialog"]
    finally:
        sys.modules.pop(module, None)
