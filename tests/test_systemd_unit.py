"""systemd/temalign.service: `systemd-analyze verify` prints nothing at all (it exits 0 even on an
unknown key or a value it cannot parse, so silence is the check), and a config error (exit status
2) is never restarted in a loop."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "temalign.service"
EXEC = "ExecStart=/opt/temalign/.venv/bin/temalign"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze is not installed on this machine")


def unit_copy(directory: Path, text: str | None = None) -> Path:
    """The unit (or `text`) with ExecStart on an executable that exists here: verify refuses a
    missing binary, and /opt/temalign is not installed on a CI machine."""
    text = UNIT.read_text() if text is None else text
    assert f"\n{EXEC} " in text
    copy = directory / "temalign.service"
    copy.write_text(text.replace(EXEC, f"ExecStart={sys.executable}"))
    return copy


def verify(path: Path) -> str:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return (result.stdout + result.stderr).strip()


def service_section() -> dict[str, list[str]]:
    """Every key of [Service] with its values in order (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            section = stripped.strip("[]")
        elif section == "Service":
            key, _, value = stripped.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_a_config_error_is_never_restarted() -> None:
    service = service_section()
    assert service["Restart"] == ["on-failure"]
    # temalign exits 2 on a bad config, model or card (ConfigError, ModelError): not retried.
    assert service["RestartPreventExitStatus"] == ["2"]
    text = UNIT.read_text()
    comment = text[: text.index("RestartPreventExitStatus=2")].rsplit("\n\n", 1)[-1]
    assert "config error never loops" in comment


@needs_systemd_analyze
def test_verify_prints_no_warning(tmp_path: Path) -> None:
    assert verify(unit_copy(tmp_path)) == ""


@needs_systemd_analyze
@pytest.mark.parametrize("broken, warning", [
    ("RestartPreventExitStatus=bogus", "Failed to parse value"),
    ("RestartPreventExitStatu=2", "Unknown key"),
])
def test_verify_would_catch_a_broken_line(tmp_path: Path, broken: str, warning: str) -> None:
    """The check above means something: verify still exits 0 here, but says what is wrong."""
    text = UNIT.read_text().replace("RestartPreventExitStatus=2", broken)
    assert warning in verify(unit_copy(tmp_path, text))
