"""The stack store (issue 14): every full wobble kept on disk, bounded, never half-written, never
fatal to a cycle; its labels (a verified correction's, a person's reference); and where a person
sees it (status, metrics, history)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_cycle import make_parts, offset
from test_daemon import start_daemon

import temalign.cli
from temalign.frames import WobbleStack
from temalign.record import stacks as stacks_module
from temalign.record.journal import read_journal
from temalign.record.label import verified_label
from temalign.record.metrics import Metrics
from temalign.record.stack_labels import reference_label
from temalign.record.stacks import (
    SIDECAR_SUFFIX,
    StackFormatError,
    StackStore,
    list_stacks,
    read_stack,
    stored_frames,
)
from temalign.record.state import FIRST_CORRECTION
from temalign.service.control import request
from temalign.service.cycle import run_cycle
from temalign.service.describe import describe_status

REPO = Path(__file__).resolve().parents[1]
META = {"wobble": "before"}


def noise_stack(seed: int, size: int = 64, dtype: Any = np.float32) -> WobbleStack:
    """Camera counts that do not compress: a stack of a known size on disk."""
    images = np.random.default_rng(seed).integers(0, 65536, (7, size, size)).astype(dtype)
    return WobbleStack(images, tuple(1.0 + 0.01 * k for k in range(7)), tuple(float(k) for k in range(7)),
                       1.0, 0.03, "test")


def on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


# ---- the format ---------------------------------------------------------------------------------

def test_camera_counts_are_stored_as_uint16_and_read_back_exactly(tmp_path: Path) -> None:
    store = StackStore(tmp_path, max_bytes=1 << 30, min_free_bytes=0)
    stack = noise_stack(1)
    sid = store.put(stack, META)
    assert sid is not None
    back = read_stack(sid, tmp_path)
    assert back.frames.dtype == np.uint16 and np.array_equal(back.frames, stack.images)
    assert back.c1_values.tolist() == list(stack.c1_values) and back.times.tolist() == list(stack.times)
    assert back.meta["format"] == 1 and back.meta["id"] == sid and back.meta["wobble"] == "before"
    assert back.labels == {} and back.outcome is None
    # the file is a plain .npz: nothing in it needs pickle
    with np.load(tmp_path / f"{sid}.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["c1_values", "frames", "meta", "times"]


@pytest.mark.parametrize("values", [[0.5, 1.0], [-1.0, 3.0], [70000.0, 1.0], [np.nan, 1.0]])
def test_frames_that_are_not_counts_are_kept_as_float32(tmp_path: Path, values: list[float]) -> None:
    images = np.full((7, 8, 8), values[1], dtype=np.float32)
    images[3, 4, 4] = values[0]
    assert stored_frames(images).dtype == np.float32
    store = StackStore(tmp_path, max_bytes=1 << 30, min_free_bytes=0)
    sid = store.put(WobbleStack(images, (1.0,) * 7, (0.0,) * 7, 1.0, 0.03, "test", "display"), META)
    assert sid is not None
    back = read_stack(tmp_path / f"{sid}.npz")
    assert back.frames.dtype == np.float32 and np.array_equal(back.frames, images, equal_nan=True)


def test_ids_sort_by_time_and_survive_a_reopen(tmp_path: Path) -> None:
    clock = iter([1_800_000_000.0, 1_800_000_000.0, 1_800_000_001.0, 1_800_000_002.0])
    store = StackStore(tmp_path, max_bytes=1 << 30, min_free_bytes=0, wall=lambda: next(clock))
    ids = [store.put(noise_stack(k, 8), META) for k in range(3)]
    assert ids[0] == "20270115T080000Z-000000" and ids == sorted(ids) and len(set(ids)) == 3
    again = StackStore(tmp_path, max_bytes=1 << 30, min_free_bytes=0, wall=lambda: next(clock))
    newest = again.put(noise_stack(9, 8), META)
    assert newest == "20270115T080002Z-000003"
    assert [p.stem for p in list_stacks(tmp_path)] == [*ids, newest]


def test_a_file_that_is_not_a_stack_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(StackFormatError, match=r"x\.npz: not a stored stack"):
        read_stack(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", frames=np.zeros((7, 2, 2)))
    with pytest.raises(StackFormatError, match=r"y\.npz: not a stored stack"):
        read_stack(tmp_path / "y.npz")


# ---- the bound ----------------------------------------------------------------------------------

def test_the_oldest_go_first_with_their_labels_and_the_store_stays_under_its_bound(tmp_path: Path) -> None:
    meta = {"format": 1, "id": "20270115T080000Z-000000", **META}
    one = len(stacks_module.encode_stack(noise_stack(0), meta))
    limit = int(3.5 * one)
    store = StackStore(tmp_path, max_bytes=limit, min_free_bytes=0)
    ids = []
    for k in range(10):
        sid = store.put(noise_stack(k), META)
        assert sid is not None
        assert store.label(sid, "corrected", {"verified": {"delta": [k, -k]}})
        ids.append(sid)
        assert on_disk(tmp_path) <= limit
        assert store.status()["bytes"] == on_disk(tmp_path)
    kept = [p.stem for p in list_stacks(tmp_path)]
    assert kept == ids[-3:]
    # every label went with its stack: no sidecar without its .npz
    assert sorted(p.stem for p in tmp_path.glob(f"*{SIDECAR_SUFFIX}")) == kept
    newest = read_stack(ids[-1], tmp_path)
    assert newest.outcome == "corrected" and newest.labels == {"verified": {"delta": [9, -9]}}
    assert np.array_equal(newest.frames, noise_stack(9).images)
    assert store.status()["stacks"] == 3 and store.status()["stopped"] is None


def test_a_stack_larger_than_the_bound_is_not_kept_and_evicts_nothing(tmp_path: Path) -> None:
    store = StackStore(tmp_path, max_bytes=100_000, min_free_bytes=0)
    small = store.put(noise_stack(1, 16), META)
    assert small is not None
    assert store.put(noise_stack(2, 256), META) is None
    assert "larger than store.max_bytes" in str(store.status()["stopped"])
    assert [p.stem for p in list_stacks(tmp_path)] == [small]


def test_low_disk_space_stops_the_store_and_it_resumes_when_there_is_room(tmp_path: Path) -> None:
    metrics = Metrics()
    store = StackStore(tmp_path, max_bytes=1 << 30, min_free_bytes=0)
    metrics.watch_stack_store(store.status)
    first = store.put(noise_stack(1), META)
    assert first is not None and metrics_value(metrics, "temalign_stack_store_stopped") == 0.0
    store.min_free_bytes = stacks_module.free_bytes(tmp_path) + (1 << 40)
    assert store.put(noise_stack(2), META) is None
    stopped = store.status()["stopped"]
    assert stopped is not None and stopped.startswith("low disk space")
    assert metrics_value(metrics, "temalign_stack_store_stopped") == 1.0
    assert metrics_value(metrics, "temalign_stack_store_stacks") == 1.0
    assert [p.stem for p in list_stacks(tmp_path)] == [first]  # nothing evicted for a write not made
    store.min_free_bytes = 0
    assert store.put(noise_stack(3), META) is not None
    assert store.status()["stopped"] is None and metrics_value(metrics, "temalign_stack_store_stopped") == 0.0
    assert metrics_value(metrics, "temalign_stack_store_bytes") == on_disk(tmp_path)


def metrics_value(metrics: Metrics, name: str) -> float:
    for line in metrics.exposition().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


# ---- a kill while a stack is written ------------------------------------------------------------

WRITER = textwrap.dedent("""
    import io, os, sys, time
    from pathlib import Path
    import numpy as np
    from temalign.frames import WobbleStack
    from temalign.record import stacks

    directory, whole, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    real = stacks.atomic_write
    written = []

    def hooked(path, write, mode=0o644):
        if path.suffix == ".npz" and len(written) == whole:
            def half(handle):  # the stack after `whole` ones: half of it reaches the disk, then the kill
                buffer = io.BytesIO()
                write(buffer)
                data = buffer.getvalue()
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                print("HALF", path.stem, flush=True)
                time.sleep(600)
            return real(path, half, mode=mode)
        real(path, write, mode=mode)
        if path.suffix == ".npz":
            written.append(path.stem)

    if whole >= 0:
        stacks.atomic_write = hooked
    store = stacks.StackStore(directory, max_bytes=1 << 40, min_free_bytes=0)
    for k in range(1000):
        images = np.random.default_rng(k).integers(0, 65536, (7, size, size)).astype(np.float32)
        sid = store.put(WobbleStack(images, (1.0,) * 7, (0.0,) * 7, 1.0, 0.03, "test"), {"seed": k})
        store.label(sid, "corrected", {"seed": k})
        print("STORED", sid, flush=True)
""")


def writer(directory: Path, whole: int, size: int) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(REPO / "daemon"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(whole), str(size)],
                            stdout=subprocess.PIPE, text=True, env=env)


def check_whole(directory: Path) -> list[str]:
    """Every visible stack reads back whole: its frames those of its seed, its label its own."""
    ids = []
    for path in list_stacks(directory):
        back = read_stack(path)
        seed = back.meta["seed"]
        expected = np.random.default_rng(seed).integers(0, 65536, back.frames.shape).astype(np.float32)
        assert np.array_equal(back.frames, expected), path
        assert back.labels in ({}, {"seed": seed})
        ids.append(path.stem)
    return ids


def test_a_kill_while_a_stack_is_written_loses_that_stack_only(tmp_path: Path) -> None:
    foreign = [tmp_path / name for name in ("notes.txt", ".other.npz.abc.tmp", ".20270115T080000Z.npz.x.tmp")]
    for path in foreign:
        path.write_text("not the store's")
    process = writer(tmp_path, whole=3, size=256)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.split())
        if line.startswith("HALF"):
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stored = [words[1] for words in lines if words[0] == "STORED"]
    half = lines[-1]
    assert len(stored) == 3 and half[0] == "HALF", lines
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(f".{half[1]}.npz.")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the kill did land mid-write
    assert check_whole(tmp_path) == stored  # a reader never sees the half-written stack
    StackStore(tmp_path, max_bytes=1 << 40, min_free_bytes=0)
    assert not leftovers[0].exists()  # the next open removes the store's own leftover...
    assert all(path.exists() for path in foreign)  # ...and nothing it did not write
    assert check_whole(tmp_path) == stored


def test_kills_at_any_moment_of_many_writes_leave_only_whole_stacks(tmp_path: Path) -> None:
    seen = 0
    for _ in range(3):
        process = writer(tmp_path, whole=-1, size=384)
        assert process.stdout is not None
        before = process.stdout.readline()  # one stack stored this round; then kill in the next
        assert before.startswith("STORED"), before
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        ids = check_whole(tmp_path)
        assert len(ids) > seen
        seen = len(ids)
        StackStore(tmp_path, max_bytes=1 << 40, min_free_bytes=0)
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---- in a cycle ---------------------------------------------------------------------------------

def test_a_correction_keeps_its_wobbles_labels_the_one_acted_on_and_history_shows_it(
        make_twin: Any, connect: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = make_twin()
    offset(served, 120, -80)
    parts = make_parts(served, connect, tmp_path)
    store_dir = tmp_path / "stacks"
    parts.stacks = StackStore(store_dir, max_bytes=1 << 30, min_free_bytes=0)
    captured: list[np.ndarray] = []
    measure = parts.estimator.measure

    def measure_and_keep(stack: WobbleStack) -> Any:
        captured.append(stack.images.copy())
        return measure(stack)

    parts.estimator.measure = measure_and_keep  # type: ignore[method-assign]
    result = run_cycle(parts)
    assert result.outcome == "corrected", result
    assert result.after is not None and result.after.trusted and result.after.delta is not None
    assert result.applied is not None and result.position_before is not None
    assert len(result.stacks) == len(captured) == 2
    before, verify = (read_stack(sid, store_dir) for sid in result.stacks)
    assert [before.meta["wobble"], verify.meta["wobble"]] == ["before", "verify"]
    for back, images in zip((before, verify), captured, strict=True):
        assert np.array_equal(back.frames, images)  # the frames as captured
        assert back.outcome == "corrected" and back.meta["cycle_started"] == result.started
        assert back.meta["model"]["file"] == "wobble_physics.tflite" and back.meta["calibration"] is not None
    assert before.meta["position"] == list(result.position_before)
    assert verify.meta["position"] == [result.position_before[0] + result.applied[0],
                                       result.position_before[1] + result.applied[1]]
    assert before.meta["estimate"]["trusted"] and before.meta["estimate"]["delta"] is not None
    label = verified_label(result.applied, result.after.delta)
    assert before.labels["verified"]["delta"] == pytest.approx(list(label))
    assert before.labels["verified"]["applied"] == list(result.applied)
    assert "verified" not in verify.labels
    # the daemon's own first reference labels nothing
    assert parts.state.load("live").reference_set_by == FIRST_CORRECTION and "reference" not in verify.labels

    cycle = [e for e in read_journal(tmp_path / "state") if e["kind"] == "cycle"][-1]
    assert cycle["stacks"] == list(result.stacks)
    config = tmp_path / "temalign.yaml"
    config.write_text(yaml.safe_dump({"microscope": {"address": "127.0.0.1:1"},
                                      "paths": {"state_dir": str(tmp_path / "state")}}))
    assert temalign.cli.main(["history", "--config", str(config)]) == 0
    assert "  2 stacks   corrected:" in capsys.readouterr().out
    assert run_cycle(parts).outcome == "within_deadband"
    assert temalign.cli.main(["history", "--config", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [len(c["stacks"]) for c in shown] == [2, 1]


@pytest.mark.parametrize("break_it", ["no directory", "disk full"])
def test_a_store_that_cannot_write_never_stops_a_correction(make_twin: Any, connect: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            break_it: str) -> None:
    served = make_twin()
    offset(served, 120, -80)
    parts = make_parts(served, connect, tmp_path)
    if break_it == "no directory":
        (tmp_path / "a-file").write_text("")
        parts.stacks = StackStore(tmp_path / "a-file" / "stacks", max_bytes=1 << 30, min_free_bytes=0)
    else:
        parts.stacks = StackStore(tmp_path / "stacks", max_bytes=1 << 30, min_free_bytes=0)

        def full(*_: object, **__: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(stacks_module, "atomic_write", full)
    result = run_cycle(parts)
    assert result.outcome == "corrected", result
    assert result.stacks == ()
    stopped = parts.stacks.status()["stopped"]
    assert stopped is not None and ("Not a directory" in stopped or "No space left" in stopped), stopped
    assert parts.state.load("live").hold is None


# ---- the reference label ------------------------------------------------------------------------

def entry(kind: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "t": t, **fields}


def test_a_persons_reference_labels_stacks_in_its_window_only() -> None:
    person = entry("reference", 100.0, position=[10, 20], set_by="uid 1000 (alice)")
    label = reference_label([person, entry("cycle", 150.0)], taken=400.0, position=(4, 30), window_s=900)
    assert label is not None and label["delta"] == [6.0, -10.0] and label["age_s"] == 300.0
    assert reference_label([person], taken=1001.0, position=(4, 30), window_s=900) is None
    hands = entry("hands.aperture", 200.0, position=[4, 30])
    assert reference_label([person, hands], taken=400.0, position=(4, 30), window_s=900) is None
    c1 = entry("hands.c1", 200.0)
    assert reference_label([person, c1], taken=400.0, position=(4, 30), window_s=900) is None
    # a hand after the stack was taken does not undo what held when it was
    assert reference_label([person, entry("hands.c1", 500.0)], taken=400.0, position=(4, 30),
                           window_s=900) is not None
    # a stack taken before the reference is not labelled by it
    assert reference_label([person], taken=50.0, position=(4, 30), window_s=900) is None
    daemon = entry("reference", 100.0, position=[10, 20], set_by=FIRST_CORRECTION)
    assert reference_label([daemon], taken=400.0, position=(4, 30), window_s=900) is None


def test_reference_set_labels_the_next_stacks_until_a_hand_moves_the_aperture(
        make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    sock = daemon.settings.control.socket
    try:
        assert daemon.stacks is not None
        request(sock, "reference-set")
        reference = daemon.run_state().reference
        assert reference is not None
        first = request(sock, "once")
        assert first["outcome"] == "dry_run" and len(first["stacks"]) == 1
        labels = read_stack(first["stacks"][0], daemon.settings.store_dir).labels
        assert labels["reference"]["delta"] == [0.0, 0.0]
        assert labels["reference"]["reference"] == list(reference)
        request(sock, "pause")
        offset(served, 60, 0)  # a person moves the aperture while paused, then resumes
        request(sock, "resume")
        second = request(sock, "once")
        assert len(second["stacks"]) == 1
        assert read_stack(second["stacks"][0], daemon.settings.store_dir).labels == {}
        kinds = [e["kind"] for e in read_journal(short_dir / "state")]
        assert "hands.aperture" in kinds
    finally:
        daemon.stop()


def test_status_and_metrics_say_when_the_store_stops_and_when_it_resumes(
        make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir, store={"min_free_bytes": 1 << 44})
    sock = daemon.settings.control.socket
    try:
        assert request(sock, "once")["stacks"] == []
        status = request(sock, "status")
        assert status["stack_store"]["enabled"] and status["stack_store"]["stacks"] == 0
        assert status["stack_store"]["stopped"].startswith("low disk space")
        assert "stack store: 0 stacks" in describe_status(status) and "stopped: low disk space" in \
            describe_status(status)
        assert metrics_value(daemon.metrics, "temalign_stack_store_stopped") == 1.0
        assert daemon.stacks is not None
        daemon.stacks.min_free_bytes = 0
        assert len(request(sock, "once")["stacks"]) == 1
        status = request(sock, "status")
        assert status["stack_store"]["stopped"] is None and status["stack_store"]["stacks"] == 1
        assert "stopped" not in describe_status(status).split("stack store:")[1].splitlines()[0]
        assert metrics_value(daemon.metrics, "temalign_stack_store_stopped") == 0.0
        assert metrics_value(daemon.metrics, "temalign_stack_store_stacks") == 1.0
    finally:
        daemon.stop()


def test_a_disabled_store_keeps_nothing_and_says_so(make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir, store={"enabled": False})
    sock = daemon.settings.control.socket
    try:
        assert request(sock, "once")["stacks"] == []
        status = request(sock, "status")
        assert status["stack_store"] == {"enabled": False}
        assert "stack store: off" in describe_status(status)
        assert not (short_dir / "state" / "stacks").exists()
    finally:
        daemon.stop()
