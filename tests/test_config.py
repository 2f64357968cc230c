"""temalign.yaml: the shipped file, every kind of bad file (one clear message, exit 2), strictness,
path resolution, the model (a shipped name or a path; `config check` opens it and its card), the token
file, the --microscope override, and fuzzing that finds nothing but Settings or ConfigError."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import temalign.cli
from temalign import shipped
from temalign.config import loader
from temalign.config.loader import apply_overrides, leaf_keys, load_config, parse_config
from temalign.config.schema import Settings
from temalign.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = shipped.config_path()
SHIPPED_MODEL = shipped.model_path("spotnet")
DOCS = REPO / "docs" / "configuration.md"
MINIMAL = "microscope:\n  address: '127.0.0.1:7801'\n"


def write(directory: Path, text: str | bytes, name: str = "temalign.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert "Traceback" not in message
    return message


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch) -> Any:
    """temalign.cli.main with the subcommand modules that exist so far (others are built in parallel)."""
    present = tuple(m for m in temalign.cli.COMMAND_MODULES if importlib.util.find_spec(m) is not None)
    monkeypatch.setattr(temalign.cli, "COMMAND_MODULES", present)
    return temalign.cli.main


# --- the shipped file and its documentation -------------------------------------------------------

def test_shipped_file_loads_and_shows_the_defaults() -> None:
    loaded = load_config(SHIPPED)
    assert loaded.microscope.host_port == ("127.0.0.1", 7801)
    assert loaded.microscope.token is None
    assert loaded.source.kind == "camera" and loaded.source.camera.exposure_s == 0.1
    assert (loaded.wobble.fraction, loaded.wobble.settle_s, loaded.wobble.restore_attempts) == (0.03, 2.0, 5)
    assert loaded.paths.state_dir == Path("/var/lib/temalign")
    # The file promises that every value shown is the default: leaving a key out changes nothing.
    assert loaded == Settings.model_validate({"microscope": {"address": "127.0.0.1:7801"}})


def test_shipped_file_has_every_key_each_with_a_comment() -> None:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))

    def leaves(node: dict[str, Any], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for key, value in node.items():
            out |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return out

    assert leaves(data) == set(leaf_keys())
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s+\w+: \S", line):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line.strip()!r}"


def test_the_shipped_config_is_package_data_and_the_checkout_links_to_it() -> None:
    assert SHIPPED == REPO / "daemon" / "temalign" / "config" / "temalign.yaml" and SHIPPED.is_file()
    link = REPO / "config" / "temalign.yaml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == SHIPPED.resolve()
    assert not (REPO / "models").exists(), "the models ship inside the package: temalign/models/"
    assert "model: spotnet\n" in SHIPPED.read_text(encoding="utf-8")


def test_docs_describe_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [key for key in leaf_keys() if f"`{key}`" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}"
    assert "temalign config check" in text and "/etc/temalign/temalign.yaml" in text


def test_default_path_prefers_etc_then_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = write(tmp_path, MINIMAL, "etc/temalign.yaml")
    monkeypatch.setattr(loader, "SYSTEM_CONFIG_PATH", site)
    assert loader.default_config_path() == site
    monkeypatch.setattr(loader, "SYSTEM_CONFIG_PATH", tmp_path / "absent.yaml")
    assert loader.default_config_path() == SHIPPED
    monkeypatch.setattr(shipped, "config_path", lambda: tmp_path / "also-absent.yaml")
    with pytest.raises(ConfigError, match="no configuration file") as caught:
        loader.default_config_path()
    assert str(tmp_path / "absent.yaml") in str(caught.value)
    assert str(tmp_path / "also-absent.yaml") in str(caught.value)


def test_shipped_data_off_a_filesystem_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package imported from a zip: its data is no file LiteRT or the loader could open."""
    import zipfile

    archive = tmp_path / "temalign.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("temalign/config/temalign.yaml", MINIMAL)
        zf.writestr("temalign/models/wobble_physics.tflite", b"")
    monkeypatch.setattr(shipped, "_root", lambda: zipfile.Path(archive, "temalign/"))
    for opener in (shipped.config_path, shipped.model_names):
        with pytest.raises(shipped.ShippedError, match="not a file on a filesystem") as caught:
            opener()
        assert caught.value.exit_status == 2


# --- bad files: one message naming the file, the key and the reason -------------------------------

BAD_FILES = {
    "empty": ("", ["empty", "microscope.address"]),
    "only comments": ("# nothing yet\n", ["empty"]),
    "top level list": ("- microscope\n", ["top level must be a mapping", "a list"]),
    "top level text": ("hello\n", ["top level must be a mapping", "text"]),
    "empty mapping": ("{}\n", ["microscope.address", "required"]),
    "no microscope": ("wobble: {fraction: 0.03}\n", ["microscope.address", "required"]),
    "no address": ("microscope: {call_timeout_s: 3}\n", ["microscope.address", "required"]),
    "unknown key, close": (MINIMAL + "wobble: {fracton: 0.03}\n",
                           ["wobble.fracton", "unknown key", "did you mean wobble.fraction"]),
    "unknown key, other section": (MINIMAL + "  settle_s: 2\n",
                                   ["microscope.settle_s", "belongs at wobble.settle_s"]),
    "unknown section": (MINIMAL + "safty: {}\n", ["safty", "unknown key", "did you mean safety"]),
    "quoted number": (MINIMAL + "wobble: {fraction: '0.03'}\n",
                      ["wobble.fraction", "expected a number", "'0.03'", "remove the quotes"]),
    "bool for int": (MINIMAL + "wobble: {restore_attempts: yes}\n",
                     ["wobble.restore_attempts", "expected a whole number", "boolean true"]),
    "bool for number": (MINIMAL + "wobble: {settle_s: true}\n", ["wobble.settle_s", "expected a number"]),
    "float for int": (MINIMAL + "source: {screen: {region: {left: 1.5, top: 0, width: 64, height: 64}}}\n",
                      ["source.screen.region.left", "expected a whole number", "1.5"]),
    "number for text": ("microscope: {address: 7801}\n", ["microscope.address", "expected text"]),
    "list for section": (MINIMAL + "wobble: [0.03]\n", ["wobble", "expected a mapping", "a list"]),
    "above range": (MINIMAL + "wobble: {fraction: 0.5}\n",
                    ["wobble.fraction", "out of range", "from 0.005 to 0.1"]),
    "below range": (MINIMAL + "wobble: {fraction: 0.001}\n", ["wobble.fraction", "out of range"]),
    "zero timeout": ("microscope: {address: 'a:1', call_timeout_s: 0}\n",
                     ["microscope.call_timeout_s", "out of range", "more than 0"]),
    "nan": ("microscope: {address: 'a:1', connect_timeout_s: .nan}\n", ["microscope.connect_timeout_s"]),
    "infinite": (MINIMAL + "wobble: {settle_s: .inf}\n", ["wobble.settle_s", "out of range"]),
    "negative settle": (MINIMAL + "wobble: {settle_s: -1}\n", ["wobble.settle_s", "from 0 to 60"]),
    "tiny region": (MINIMAL + "source: {screen: {region: {left: 0, top: 0, width: 8, height: 64}}}\n",
                    ["source.screen.region.width", "from 16 to 16384"]),
    "negative left": (MINIMAL + "source: {screen: {region: {left: -1, top: 0, width: 64, height: 64}}}\n",
                      ["source.screen.region.left", "out of range"]),
    "partial region": (MINIMAL + "source: {screen: {region: {left: 0, top: 0}}}\n",
                       ["source.screen.region.width", "required"]),
    "zero attempts": (MINIMAL + "wobble: {restore_attempts: 0}\n",
                      ["wobble.restore_attempts", "from 1 to 50"]),
    "bad kind": (MINIMAL + "source: {kind: microscope}\n", ["source.kind", "'camera'", "'screen'"]),
    "bad level": (MINIMAL + "logging: {level: INFO}\n", ["logging.level", "must be one of", "'INFO'"]),
    "yaml boolean word": (MINIMAL + "logging: {format: off}\n", ["logging.format", "got false"]),
    "bad display": (MINIMAL + "source: {screen: {display: zero}}\n", ["source.screen.display", "':0'"]),
    "bad address": ("microscope: {address: 'localhost'}\n", ["microscope.address", "no port"]),
    "bad port": ("microscope: {address: 'localhost:99999'}\n", ["microscope.address", "port"]),
    "screen without region": (MINIMAL + "source: {kind: screen}\n",
                              ["source.screen.region", "required when kind is screen"]),
    "acquire shorter than exposure": ("microscope: {address: 'a:1', acquire_timeout_s: 1}\n"
                                      "source: {camera: {exposure_s: 2}}\n",
                                      ["microscope.acquire_timeout_s", "exposure_s"]),
    "state_dir is a file": (MINIMAL + "paths: {state_dir: /dev/null}\n",
                            ["paths.state_dir", "not a directory"]),
    "non-text key": (MINIMAL + "7: 1\n", ["keys must be text"]),
    "repeated key": (MINIMAL + "wobble:\n  fraction: 0.03\n  fraction: 0.02\n",
                     ["wobble.fraction", "given twice", "lines 4 and 5"]),
    "repeated section": (MINIMAL + "microscope: {address: 'b:2'}\n", ["microscope", "given twice"]),
    "not YAML": ("microscope:\n  address: a: b\n", ["not valid YAML", "line 2, column", "mapping values"]),
    "unclosed quote": ("microscope:\n  address: 'a:1\n", ["not valid YAML", "line 3", "quoted scalar"]),
    "tab indent": ("microscope:\n\taddress: 'a:1'\n", ["line 2, column 1", "spaces, not tabs"]),
    "python tag": ("!!python/object/apply:os.system ['true']\n", ["not valid YAML", "constructor"]),
    "two documents": (MINIMAL + "---\nwobble: {}\n", ["not valid YAML", "single document"]),
    "deep nesting": ("[" * 500 + "]" * 500, ["not valid YAML", "nested deeper"]),
    "huge integer": (MINIMAL + "wobble: {restore_attempts: " + "9" * 5000 + "}\n", ["not valid YAML"]),
    "control character": ("microscope: {address: 'a\x01:1'}\n", ["line 1, column 25", "U+0001"]),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_gives_one_clear_message(tmp_path: Path, name: str) -> None:
    text, expected = BAD_FILES[name]
    message = config_error(write(tmp_path, text))
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_several_problems_are_all_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "microscope: {address: 'a:1', call_timeout_s: -1}\n"
                                           "wobble: {fraction: 9, settle_s: '1'}\n"))
    first, *rest = message.splitlines()
    assert "microscope.call_timeout_s" in first
    assert any("wobble.fraction" in line for line in rest) and any("wobble.settle_s" in line for line in rest)


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in config_error(tmp_path / "nope.yaml")


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in config_error(tmp_path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in config_error(fifo)


def test_unreadable_file() -> None:
    directory = Path(tempfile.mkdtemp())
    try:
        directory.chmod(0o755)
        path = write(directory, MINIMAL)
        path.chmod(0o600 if os.geteuid() == 0 else 0o000)
        if os.geteuid() == 0:  # root reads anything: drop to nobody for the read itself
            os.seteuid(65534)
        try:
            message = config_error(path)
        finally:
            if os.getuid() == 0:
                os.seteuid(0)
        assert "permission denied" in message
    finally:
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


def test_non_utf8(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, b"microscope:\n  address: 'caf\xe9:1'\n"))
    assert "not UTF-8" in message and "0xe9" in message and "line 2, column 16" in message


def test_huge_file(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, MINIMAL + "#" * loader.MAX_CONFIG_BYTES))
    assert "larger than" in message and "limit" in message


# --- what is accepted ---------------------------------------------------------------------------------

def test_only_the_address_is_required_and_empty_sections_mean_defaults(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, MINIMAL + "wobble:\nlogging:\n"))
    assert loaded == Settings.model_validate({"microscope": {"address": "127.0.0.1:7801"}})
    assert loaded.wobble.fraction == 0.03 and loaded.logging.format == "auto"


def test_yaml12_floats_and_ipv6_and_screen_source(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, "microscope: {address: '[::1]:7801'}\n"
                                         "source:\n  kind: screen\n  camera: {exposure_s: 5e-3}\n"
                                         "  screen:\n"
                                         "    region: {left: 10, top: 20, width: 300, height: 200}\n"
                                         "    display: ':1'\n"))
    assert loaded.microscope.host_port == ("::1", 7801)
    assert loaded.source.camera.exposure_s == pytest.approx(0.005)
    assert loaded.source.screen.region.left == 10 and loaded.source.screen.display == ":1"


def test_merge_keys_may_override_but_plain_repeats_may_not(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, "microscope:\n  <<: {address: 'a:1', call_timeout_s: 3}\n"
                                         "  address: 'b:2'\n"))
    assert loaded.microscope.address == "b:2" and loaded.microscope.call_timeout_s == 3.0


def test_settings_are_immutable() -> None:
    settings = Settings.model_validate({"microscope": {"address": "a:1"}})
    with pytest.raises(ValidationError):
        settings.wobble.fraction = 0.5  # type: ignore[misc]


# --- paths ------------------------------------------------------------------------------------------

def test_relative_state_dir_resolves_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config_dir = tmp_path / "etc" / "temalign"
    assert load_config(write(config_dir, MINIMAL + "paths: {state_dir: state}\n")).paths.state_dir \
        == config_dir / "state"
    assert load_config(write(config_dir, MINIMAL + "paths: {state_dir: ../../var/x}\n")).paths.state_dir \
        == tmp_path / "var" / "x"
    # The same relative file name, loaded from elsewhere, still resolves next to the file.
    monkeypatch.chdir("/")
    assert load_config(Path(os.path.relpath(config_dir, "/")) / "temalign.yaml").paths.state_dir \
        == tmp_path / "var" / "x"
    assert load_config(write(config_dir, MINIMAL + "paths: {state_dir: /srv/t}\n")).paths.state_dir \
        == Path("/srv/t")


def test_ensure_state_dir_creates_it_private(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL + "paths: {state_dir: a/b}\n"))
    created = settings.paths.ensure_state_dir()
    assert created == tmp_path / "a" / "b" and created.is_dir()
    assert stat.S_IMODE(created.stat().st_mode) & 0o007 == 0


# --- the model: a shipped name or a path ---------------------------------------------------------

def test_the_model_is_a_shipped_name_or_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shipped.model_names() == ["spotnet", "wobble_physics"]
    assert SHIPPED_MODEL.is_file() and SHIPPED_MODEL.with_suffix(".json").is_file()
    assert Settings.model_validate({"microscope": {"address": "a:1"}}).estimator.model == SHIPPED_MODEL
    assert shipped.default_model() == SHIPPED_MODEL
    by_name = load_config(write(tmp_path, MINIMAL + "estimator: {model: wobble_physics}\n"))
    assert by_name.estimator.model == shipped.model_path("wobble_physics")
    # Anything with a directory part or a suffix is a path, relative to the config's directory.
    monkeypatch.chdir("/")
    for text, expected in (("wobble_physics.tflite", tmp_path / "wobble_physics.tflite"),
                           ("./wobble_physics", tmp_path / "wobble_physics"),
                           ("models/mine.tflite", tmp_path / "models" / "mine.tflite"),
                           ("/srv/m.tflite", Path("/srv/m.tflite"))):
        loaded = load_config(write(tmp_path, MINIMAL + f"estimator: {{model: '{text}'}}\n"))
        assert loaded.estimator.model == expected, text


def test_an_unknown_shipped_model_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, MINIMAL + "estimator: {model: wobble_phisics}\n"))
    assert message.startswith(f"{tmp_path / 'temalign.yaml'}: estimator.model: ")
    assert "no shipped model named 'wobble_phisics'" in message
    assert "(shipped: spotnet, wobble_physics)" in message
    assert "./wobble_phisics.tflite" in message  # how to name a file of one's own instead


def own_model(directory: Path, **card_changes: Any) -> Path:
    """A copy of the shipped delta model (wobble_physics: one wobble, an output scale) and its card
    in `directory`, the card changed as given (a value of None removes the key)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "mine.tflite"
    physics = shipped.model_path("wobble_physics")
    shutil.copy(physics, model)
    card = json.loads(physics.with_suffix(".json").read_text())
    for key, value in card_changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    model.with_suffix(".json").write_text(json.dumps(card))
    return model


SCREEN = "source: {kind: screen, screen: {region: {left: 0, top: 0, width: 256, height: 256}}}\n"


def _break_card(model: Path) -> Path:
    model.with_suffix(".json").write_text("{not json")
    return model


@pytest.mark.parametrize(("case", "extra", "expected"), [
    ("missing model", "", ["absent.tflite", "no such file"]),
    ("missing card", "", ["mine.tflite", "mine.json", "is missing"]),
    ("card not JSON", "", ["mine.tflite", "Expecting property name"]),
    ("card without a key", "", ["mine.tflite", "invalid model card", "mine.json",
                                "missing key 'preprocess'"]),
    ("card with a bad value", "", ["mine.tflite", "invalid model card", "output_scale"]),
    ("model not a model", "", ["mine.tflite", "LiteRT cannot load it"]),
    ("wobble mismatch", "wobble: {fraction: 0.02}\n", ["mine.tflite", "mine.json", "0.03 wobble",
                                                       "wobble.fraction is 0.02"]),
    ("frames mismatch", SCREEN, ["mine.tflite", "mine.json", "'raw' frames", "source.kind screen"]),
])
def test_config_check_exits_2_naming_a_model_or_card_it_cannot_use(
    tmp_path: Path, cli_main: Any, capsys: pytest.CaptureFixture[str], case: str, extra: str,
    expected: list[str]
) -> None:
    model = own_model(tmp_path / "models")
    if case == "missing model":
        model = tmp_path / "models" / "absent.tflite"
    elif case == "missing card":
        model.with_suffix(".json").unlink()
    elif case == "card not JSON":
        _break_card(model)
    elif case == "card without a key":
        own_model(tmp_path / "models", preprocess=None)
    elif case == "card with a bad value":
        own_model(tmp_path / "models", output_scale=[0, 1])
    elif case == "model not a model":
        model.write_bytes(b"not a flatbuffer" * 64)
    elif case == "frames mismatch":
        own_model(tmp_path / "models", frames="raw")
    path = write(tmp_path, MINIMAL + extra + f"estimator: {{model: models/{model.name}}}\n")
    assert cli_main(["config", "check", str(path)]) == 2, case
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"temalign: error: model {model}"), captured.err
    assert "Traceback" not in captured.err
    for part in expected:
        assert part in captured.err, f"{part!r} not in {captured.err!r}"


def test_config_check_exits_2_when_the_shipped_model_does_not_fit_the_wobble(
    tmp_path: Path, cli_main: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    physics = shipped.model_path("wobble_physics")
    path = write(tmp_path, MINIMAL + "wobble: {fraction: 0.02}\nestimator: {model: wobble_physics}\n")
    assert cli_main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    card = physics.with_suffix(".json")
    assert err.startswith(f"temalign: error: model {physics} (card {card}): "), err
    assert "set wobble.fraction to 0.03" in err
    # the learned default takes any wobble it was trained on, and refuses one outside by name
    assert cli_main(["config", "check", str(write(tmp_path, MINIMAL + "wobble: {fraction: 0.02}\n"))]) == 0
    capsys.readouterr()
    assert cli_main(["config", "check", str(write(tmp_path, MINIMAL + "wobble: {fraction: 0.06}\n"))]) == 2
    assert "trained on wobbles of 0.015 to 0.04" in capsys.readouterr().err


# --- the token file ---------------------------------------------------------------------------------

def token_file(directory: Path, content: str, mode: int = 0o600, name: str = "token") -> Path:
    path = directory / name
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def test_token_is_read_at_load_time_relative_to_the_config(tmp_path: Path) -> None:
    token_file(tmp_path, "s3cret-token\n", 0o640)
    loaded = load_config(write(tmp_path, "microscope: {address: 'a:1', token_file: token}\n"))
    assert loaded.microscope.token == "s3cret-token"
    assert loaded.microscope.token_file == tmp_path / "token"
    assert "s3cret" not in repr(loaded) and "s3cret" not in str(loaded.model_dump())


@pytest.mark.parametrize(("content", "mode", "reason"), [
    ("s3cret\n", 0o644, "readable by everyone"),
    ("s3cret\n", 0o604, "readable by everyone"),
    ("\n", 0o600, "empty"),
    ("s3cret\nsecond line\n", 0o600, "one token on one line"),
    ("x" * 5000, 0o600, "at most 4096"),
], ids=["world-readable", "other-readable", "empty", "two-lines", "too-long"])
def test_token_file_rules(tmp_path: Path, content: str, mode: int, reason: str) -> None:
    token_file(tmp_path, content, mode)
    message = config_error(write(tmp_path, "microscope: {address: 'a:1', token_file: token}\n"))
    assert "microscope.token_file" in message and reason in message
    assert "s3cret" not in message and "second line" not in message


def test_token_file_must_exist(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "microscope: {address: 'a:1', token_file: missing-token}\n"))
    assert "microscope.token_file" in message and "no such file" in message
    assert str(tmp_path / "missing-token") in message


# --- the --microscope override ----------------------------------------------------------------------

def test_microscope_override(tmp_path: Path) -> None:
    token_file(tmp_path, "tok\n")
    loaded = load_config(write(tmp_path, "microscope: {address: 'a:1', token_file: token}\n"
                                         "wobble: {fraction: 0.02}\n"))
    assert apply_overrides(loaded, None) is loaded
    moved = apply_overrides(loaded, " [::1]:7900 ")
    assert moved.microscope.host_port == ("::1", 7900) and moved.microscope.address == "[::1]:7900"
    assert moved.microscope.token == "tok" and moved.wobble.fraction == 0.02
    assert loaded.microscope.address == "a:1"
    for bad in ("nohost", "host:0", "::1:80", ""):
        with pytest.raises(ConfigError, match="--microscope"):
            apply_overrides(loaded, bad)


# --- the command line ---------------------------------------------------------------------------------

def test_config_check_ok(tmp_path: Path, cli_main: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL + "wobble: {fraction: 0.03, settle_s: 1.5}\n")
    assert cli_main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK\n")
    assert "127.0.0.1:7801" in out and "camera" in out and "±3 %" in out and "settle 1.5 s" in out
    # The model as opened: its file, and its card's preprocessing, wobble, frames and evaluation.
    assert f"model       {SHIPPED_MODEL} (card: preprocess temalign.estimate.preprocess:spots_128, " \
           "wobbles 0.015 to 0.04, any frames, evaluated RMSE " in out
    assert " % over 28 sets, limit 1 %)" in out


def test_config_check_bad_exits_2(tmp_path: Path, cli_main: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL + "wobble: {fraction: 0.5}\n")
    assert cli_main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"temalign: error: {path}: wobble.fraction: ")
    assert "Traceback" not in captured.err
    assert cli_main(["config", "check", str(tmp_path / "absent.yaml")]) == 2
    assert cli_main(["config", "check", "--microscope", "nohost", str(path)]) == 2


def test_config_check_defaults_to_the_default_path(
    tmp_path: Path, cli_main: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    site = write(tmp_path, "microscope: {address: 'site-bridge:7801'}\n")
    monkeypatch.setattr(loader, "SYSTEM_CONFIG_PATH", site)
    assert cli_main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{site}: OK") and "site-bridge:7801" in out


def test_config_show_round_trips(tmp_path: Path, cli_main: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token_file(tmp_path, "s3cret\n")
    path = write(tmp_path, "microscope: {address: 'a:1', token_file: token}\npaths: {state_dir: st}\n")
    assert cli_main(["config", "show", str(path), "--microscope", "b:2"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    shown = yaml.safe_load(out)
    assert shown["wobble"] == {"fraction": 0.03, "settle_s": 2.0, "restore_attempts": 5}
    assert shown["paths"]["state_dir"] == str(tmp_path / "st")
    reloaded = load_config(write(tmp_path / "other", out))
    assert reloaded == apply_overrides(load_config(path), "b:2")


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "daemon")}


def test_config_check_in_a_real_process_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "wobble: {fracton: 0.03}\n")
    result = subprocess.run([sys.executable, "-m", "temalign", "config", "check", str(path)],
                            capture_output=True, text=True, timeout=60, env=_subprocess_env())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"temalign: error: {path}: wobble.fracton: unknown key")


def test_installed_entry_point_exits_2_without_traceback(tmp_path: Path) -> None:
    entry = Path(sys.executable).parent / "temalign"
    assert entry.exists(), f"the console script is not installed beside {sys.executable}"
    path = write(tmp_path, "microscope: {address: 'a:1'}\nwobble: {fraction: 0.5}\n")
    result = subprocess.run([str(entry), "config", "check", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "wobble.fraction" in result.stderr and "out of range" in result.stderr


def test_config_cli_imports_neither_pydantic_nor_yaml() -> None:
    program = "import sys, temalign.config.cli; print(sorted({'pydantic', 'yaml'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                            env=_subprocess_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- fuzzing: nothing but Settings or ConfigError -----------------------------------------------------

SOURCE = "/nonexistent-temalign/fuzz.yaml"
FIELD_NAMES = sorted({part for key in leaf_keys() for part in key.split(".")})
SCALARS = (st.none() | st.booleans() | st.integers(-(10**7), 10**7) | st.floats() | st.text(max_size=16)
           | st.sampled_from(["127.0.0.1:7801", "[::1]:1", "camera", "screen", "info", "json", ":0",
                              "/tmp", "state", "0.03", "yes", "1e-3"]))
TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(raw: bytes) -> Settings | ConfigError:
    try:
        return parse_config(raw, SOURCE)
    except ConfigError as error:
        assert str(error).startswith(f"{SOURCE}: "), str(error)
        return error


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_yaml_text(text: str) -> None:
    outcome(text.encode("utf-8"))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_bytes(raw: bytes) -> None:
    outcome(raw)


@FUZZ
@given(TREES)
def test_fuzz_structures(tree: Any) -> None:
    outcome(yaml.safe_dump({"microscope": {"address": "a:1"}, "x": tree}).encode())
    outcome(yaml.safe_dump(tree).encode())


VALID = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    if value is _DELETE:
        del tree[last]
    else:
        tree[last] = value


_DELETE = object()


@pytest.mark.parametrize("key", ["microscope.token_file", "paths.state_dir"])
def test_a_home_directory_of_no_known_user_is_named(key: str) -> None:
    """"~0" asks for user 0's home, which pathlib cannot find: a ConfigError naming the key, not a
    RuntimeError (found by the fuzz test below)."""
    tree = copy.deepcopy(VALID)
    _set(tree, key, "~0/x")
    result = outcome(yaml.safe_dump(tree).encode())
    assert isinstance(result, ConfigError) and key in str(result).splitlines()[0], result


@pytest.mark.parametrize(("key", "value"), [("schedule.max_interval_s", 60),
                                            ("schedule.min_interval_s", 900)])
def test_an_interval_that_leaves_out_the_check_interval_is_named(key: str, value: int) -> None:
    """The bounds of the adaptive schedule cut off the check interval: the message names the key
    a person changed, with its section (found by the fuzz test below)."""
    tree = copy.deepcopy(VALID)
    _set(tree, key, value)
    result = outcome(yaml.safe_dump(tree).encode())
    assert isinstance(result, ConfigError) and key in str(result).splitlines()[0], result


@FUZZ
@given(st.sampled_from(leaf_keys()), SCALARS | st.just(_DELETE) | TREES)
def test_fuzz_one_broken_key_is_named(key: str, value: Any) -> None:
    tree = copy.deepcopy(VALID)
    _set(tree, key, value)
    result = outcome(yaml.safe_dump(tree).encode())
    if isinstance(result, ConfigError):
        first_line = str(result).splitlines()[0]
        assert key in first_line or "acquire_timeout_s" in first_line, first_line
    else:
        again = parse_config(yaml.safe_dump(result.model_dump(mode="json")).encode(), SOURCE)
        assert again == result
