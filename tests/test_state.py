"""What survives a restart (safety.md): pause with its end, dry-run, hold, the reference; a state
file that cannot be read stops the daemon instead of un-pausing it."""

from __future__ import annotations

import json
import math
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from temalign.decide.column import is_paused
from temalign.record.state import STATE_NAME, RunState, StateError, StateStore

FULL = RunState(mode="dry-run", paused_until=math.inf, pause_reason="exposure series", hold="3 rollbacks",
                reference=(120, -40), reference_set_by="person", last_position=(118, -37), last_c1=0.4375)


def strict_loads(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_round_trip_keeps_every_field_in_strict_json(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(FULL)
    assert StateStore(tmp_path).load("live") == FULL
    data = strict_loads((tmp_path / STATE_NAME).read_text())
    assert data["paused_until"] == "inf" and data["reference"] == [120, -40]
    assert stat.S_IMODE((tmp_path / STATE_NAME).stat().st_mode) == 0o640
    finite = RunState(mode="live", paused_until=1.7e9 + 0.25, pause_reason="for 600 s")
    store.save(finite)
    assert store.load("dry-run") == finite


@pytest.mark.parametrize("mode", ["live", "dry-run"])
def test_no_file_means_the_configs_mode_and_nothing_else(tmp_path: Path, mode: str) -> None:
    state = StateStore(tmp_path / "fresh").load(mode)
    assert state == RunState(mode=mode, paused_until=None, pause_reason=None, hold=None, reference=None,
                             reference_set_by=None, last_position=None, last_c1=None)
    assert not (tmp_path / "fresh" / STATE_NAME).exists(), "loading writes nothing"
    with pytest.raises(ValueError, match="default mode"):
        StateStore(tmp_path).load("fast")


def test_the_saved_mode_overrides_the_configs(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load("live")
    store.update(mode="dry-run")
    assert StateStore(tmp_path).load("live").mode == "dry-run"


def test_pause_until_a_time_and_until_resumed() -> None:
    assert not is_paused(RunState(mode="live").paused_until, 1e9)
    timed = RunState(mode="live", paused_until=1000.0, pause_reason="busy")
    assert is_paused(timed.paused_until, 999.9)
    assert not is_paused(timed.paused_until, 1000.0)
    assert not is_paused(timed.paused_until, 5000.0)
    endless = RunState(mode="live", paused_until=math.inf)
    assert is_paused(endless.paused_until, 0.0) and is_paused(endless.paused_until, 1e18)


def test_an_endless_pause_survives_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load("live")
    store.update(paused_until=math.inf, pause_reason="paused by a person")
    after = StateStore(tmp_path).load("live")
    assert after.paused_until == math.inf and is_paused(after.paused_until, 4e9)
    assert after.pause_reason == "paused by a person"


@pytest.mark.parametrize("content, problem", [
    ("", "not JSON"),
    ('{"version": 1, "mode": "live"', "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (None, "mode must be"),
    (None, "paused_until must be"),
    (None, "paused_until must be"),
    (None, "reference must be"),
    (None, "missing hold"),
    (None, "unknown pasued_until"),
    (None, "version"),
    (b"\xff\xfe", "cannot be read"),
], ids=["empty", "cut short", "array", "mode", "pause text", "pause NaN", "reference", "missing",
        "unknown key", "version", "not utf-8"])
def test_a_corrupt_state_file_is_an_error_naming_it(tmp_path: Path, content: str | bytes | None,
                                                     problem: str, request: pytest.FixtureRequest) -> None:
    good = json.loads(json.dumps({"version": 1, **FULL.to_json()}))
    broken = {
        "mode": {**good, "mode": "fast"},
        "pause text": {**good, "paused_until": "soon"},
        "reference": {**good, "reference": ["a", 2]},
        "missing": {k: v for k, v in good.items() if k != "hold"},
        "unknown key": {**good, "pasued_until": 5},
        "version": {**good, "version": 2},
    }
    case = request.node.callspec.id
    path = tmp_path / STATE_NAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    elif case == "pause NaN":
        path.write_text(json.dumps(good).replace('"paused_until": "inf"', '"paused_until": NaN'))
    else:
        path.write_text(json.dumps(broken[case]))
    with pytest.raises(StateError, match=problem) as caught:
        StateStore(tmp_path).load("live")
    assert isinstance(caught.value, ValueError)
    assert str(path) in str(caught.value)
    with pytest.raises(StateError):
        StateStore(tmp_path).update(hold=None)


def test_update_changes_only_what_it_names_and_saves(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(FULL)
    new = store.update(hold=None, last_position=[np.int64(119), -36])
    assert new == RunState(**{**FULL.__dict__, "hold": None, "last_position": (119, -36)})
    assert isinstance(new.last_position, tuple) and type(new.last_position[0]) is int
    assert store.update(reference=(2350.43, -1340.0)).reference == (2350, -1340), "whole motor units"
    new = store.update(reference=FULL.reference)
    assert StateStore(tmp_path).load("live") == new
    with pytest.raises(TypeError):
        store.update(colour="blue")
    with pytest.raises(ValueError, match="mode must be"):
        store.update(mode="turbo")
    assert store.load("live") == new, "a refused update leaves the file alone"


def test_until_a_mode_is_set_at_run_time_the_configs_applies(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load("dry-run")
    assert store.update(last_c1=0.5).mode == "dry-run"
    assert strict_loads((tmp_path / STATE_NAME).read_text())["mode"] is None
    after = StateStore(tmp_path).load("live")
    assert after.mode == "live" and after.last_c1 == 0.5, "the config switched to live is obeyed"
    store.update(mode="live")
    store.update(hold="2 rollbacks")
    assert StateStore(tmp_path).load("dry-run").mode == "live", "a mode set at run time is kept"


def test_update_before_any_load_keeps_the_pause_and_leaves_the_mode_to_the_config(tmp_path: Path) -> None:
    returned = StateStore(tmp_path).update(paused_until=math.inf, pause_reason="exposure")
    assert returned.mode == "dry-run", "with no mode known, the one that never moves"
    for mode in ("live", "dry-run"):
        state = StateStore(tmp_path).load(mode)
        assert state.mode == mode and is_paused(state.paused_until, 1e12) and state.pause_reason == "exposure"


@pytest.mark.parametrize("field, value", [
    ("paused_until", math.nan), ("paused_until", -math.inf), ("paused_until", True), ("last_c1", math.inf),
    ("reference", (1, 2, 3)), ("reference", (True, 2)), ("reference", (math.nan, 2)), ("hold", 3),
    ("mode", None),
])
def test_a_state_that_could_not_be_read_back_is_never_made(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        RunState(**{"mode": "live", field: value})


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load("live")

    def bump(field: str) -> None:
        for _ in range(10):
            other = StateStore(tmp_path)
            other.load("live")
            current = getattr(other.load("live"), field) or (0, 0)
            other.update(**{field: (current[0] + 1, 0)})

    threads = [threading.Thread(target=bump, args=(name,)) for name in ("reference", "last_position")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = store.load("live")
    assert final.reference == (10, 0) and final.last_position == (10, 0)
