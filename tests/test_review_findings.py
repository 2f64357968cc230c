"""The adversarial review's findings (issue 11), each reproduced as the review found it, against a
twin over TCP and, where the finding was about the machine, a real one: a regular file where the
socket goes, a second daemon, idle TCP connections, a full tmpfs, a read-only mount. Each test
failed on the code before its fix."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchkit.disk import fill
from test_daemon import config, start_daemon

from temalign.config.schema import Settings
from temalign.service.control import ControlError, ControlServer, is_running, request
from temalign.service.daemon import Daemon

CLI = [sys.executable, "-m", "temalign.cli"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of `size` at `where` (a full or read-only disk, as the review made one)."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or made.returncode}): the full-disk "
                    "and read-only tests need root (CI runs as root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def offset(served: Any, dx: int, dy: int) -> None:
    aligned = served.truth()["aligned"]
    served.twin.move_aperture(round(aligned[0] + dx), round(aligned[1] + dy))


# ---- 1, 2: the control socket --------------------------------------------------------------------


def test_a_daemon_that_cannot_take_its_socket_path_leaves_the_file_there(make_twin: Any, connect: Any,
                                                                         short_dir: Path) -> None:
    served = make_twin()
    settings = Settings.model_validate(config(served, short_dir))
    precious = short_dir / "c.sock"  # appears after the config was checked (config check refuses it)
    precious.write_text("a system file, mistyped as control.socket\n")
    daemon = Daemon(settings, connect(served), clock=served.clock)
    with pytest.raises(ControlError, match="is not a socket") as caught:
        daemon.start(schedule=False)
    assert caught.value.exit_status == 2
    daemon.stop()
    assert precious.read_text() == "a system file, mistyped as control.socket\n"


def test_temalign_run_on_a_file_exits_2_and_keeps_it(make_twin: Any, short_dir: Path) -> None:
    served = make_twin()
    precious = short_dir / "c.sock"
    precious.write_text("keep me\n")
    path = short_dir / "temalign.yaml"
    path.write_text(yaml.safe_dump(config(served, short_dir)))
    run = run_cli("run", "--config", str(path))
    assert run.returncode == 2 and "is not a socket" in run.stderr and "Traceback" not in run.stderr, run
    assert precious.read_text() == "keep me\n"
    check = run_cli("config", "check", str(path))
    assert check.returncode == 2 and "control.socket" in check.stderr and "not a socket" in check.stderr


def test_a_second_daemon_leaves_the_live_one_reachable(make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    live = start_daemon(served, connect, short_dir)
    try:
        other = dict(config(served, short_dir / "other"), control={"socket": str(short_dir / "c.sock")})
        second = Daemon(Settings.model_validate(other), connect(served), clock=served.clock)
        with pytest.raises(ControlError, match="another temalign daemon"):
            second.start(schedule=False)
        second.stop()
        assert is_running(live.settings.control.socket)
        assert request(live.settings.control.socket, "status")["state"] == "dry_run"
    finally:
        live.stop()


def test_a_stale_socket_is_replaced_and_removed_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # a daemon killed with SIGKILL leaves its socket file
    server = ControlServer(path, lambda verb, args, uid: {"verb": verb})
    server.start()
    assert request(path, "status") == {"verb": "status"}
    server.close()
    assert not path.exists()


# ---- 3: every listener bounded, and a dead one stops the watchdog ---------------------------------


def _idle_connections(address: tuple[str, int] | str, n: int, first: bytes) -> list[socket.socket]:
    """`n` connections that each send half a request and then nothing; those the server's backlog
    turns away at once (a flood) are not kept."""
    held = []
    for _ in range(n):
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(address)
            s.sendall(first)  # half a request, never finished
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def _threads() -> int:
    return threading.active_count()


def test_idle_connections_to_the_metrics_port_are_bounded_and_time_out() -> None:
    from temalign.record.metrics import Metrics

    metrics = Metrics()
    metrics.serve("127.0.0.1", 0, max_connections=4, request_timeout_s=1.0)
    try:
        before = _threads()
        held = _idle_connections(metrics.address, 60, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        assert _threads() - before <= 4 + 1
        time.sleep(1.5)  # past the request timeout: each idle connection was closed
        closed = 0
        for s in held:
            with contextlib.suppress(OSError):
                if s.recv(1024) == b"":
                    closed += 1
            s.close()
        assert closed == len(held)
        host, port = metrics.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
            assert b"temalign_cycles_total" in reply.read()
        assert metrics.alive()
    finally:
        metrics.shutdown()
    assert not metrics.alive()


def test_idle_connections_to_the_control_socket_are_bounded_and_time_out(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "c.sock", lambda verb, args, uid: {"verb": verb}, max_connections=4,
                           request_timeout_s=1.0)
    server.start()
    try:
        before = _threads()
        held = _idle_connections(str(server.path), 40, b'{"verb": "sta')
        time.sleep(0.3)
        assert _threads() - before <= 4 + 1
        time.sleep(1.5)
        for s in held:
            s.close()
        assert request(server.path, "status") == {"verb": "status"}
        assert server.alive()
    finally:
        server.close()


def test_a_listener_that_dies_stops_the_watchdog(make_twin: Any, connect: Any, short_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from temalign.service import notify

    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    pings: list[float] = []
    monkeypatch.setattr(notify, "watchdog_interval_s", lambda: 0.2)
    monkeypatch.setattr(notify, "watchdog_ping", lambda: pings.append(time.monotonic()) or True)
    runner = threading.Thread(target=daemon.watch, daemon=True)
    try:
        assert daemon.healthy() is None
        runner.start()
        time.sleep(0.6)
        assert pings, "a healthy daemon pings the watchdog"
        assert daemon._control is not None and daemon._control._serving is not None
        daemon._control._serving.server.shutdown()  # its thread ends, as it did under a task limit
        assert "control socket" in (daemon.healthy() or "")
        time.sleep(0.3)
        stopped_at = len(pings)
        time.sleep(0.8)
        assert len(pings) == stopped_at, "a daemon whose control socket is dead went on pinging"
    finally:
        daemon._stop.set()
        runner.join(timeout=10)
        daemon.stop()


def test_a_thread_the_system_refuses_costs_one_connection_not_the_listener(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import temalign.listeners as listeners

    refusals = [1]

    class Scarce(threading.Thread):
        def start(self) -> None:
            if refusals:
                refusals.pop()
                raise RuntimeError("can't start new thread")
            super().start()

    server = ControlServer(tmp_path / "c.sock", lambda verb, args, uid: {"verb": verb})
    server.start()
    try:
        monkeypatch.setattr(listeners.threading, "Thread", Scarce)
        with pytest.raises(ControlError, match="went away"):
            request(server.path, "status")
        assert request(server.path, "status") == {"verb": "status"}
        assert server.alive()
    finally:
        monkeypatch.undo()
        server.close()


def test_the_unit_limits_its_tasks() -> None:
    unit = (Path(__file__).resolve().parents[1] / "systemd" / "temalign.service").read_text()
    assert "\nTasksMax=" in unit


# ---- 4: a timed pause blocks `once` --------------------------------------------------------------


def test_once_does_not_wobble_during_a_timed_pause_unless_forced(make_twin: Any, connect: Any,
                                                                 short_dir: Path) -> None:
    served = make_twin()
    busy = short_dir / "exposing"
    daemon = start_daemon(served, connect, short_dir, safety={"busy_file": str(busy)})
    sock = daemon.settings.control.socket
    try:
        request(sock, "pause", {"for_s": 600, "reason": "hologram series"})
        c1 = served.lens_reads()
        before = served.truth()["c1"]
        result = request(sock, "once")
        assert (result["outcome"], result["reason"]) == ("skipped", "paused")
        assert served.truth()["c1"] == before and served.lens_reads() == c1, "the lens was touched"
        forced = request(sock, "once", {"force": True})
        assert forced["outcome"] == "dry_run"
        busy.write_text("")
        refused = request(sock, "once", {"force": True})
        assert (refused["outcome"], refused["reason"]) == ("skipped", "busy")
        request(sock, "resume")
        busy.unlink()
        request(sock, "pause", {})
        assert request(sock, "once")["reason"] == "paused", "an open-ended pause blocks once too"
        assert request(sock, "once", {"force": True})["outcome"] == "dry_run"
    finally:
        daemon.stop()


class Interlocked:
    """The parts' microscope, forwarding every call; `trigger(kind, count)` runs once, when the
    count-th call of kind ("set_c1", "acquire", "move") is about to go out: a person pausing, or
    the acquisition software creating its busy file, in the middle of a cycle."""

    def __init__(self, inner: Any, kind: str, count: int, trigger: Any) -> None:
        self.inner, self.kind, self.count, self.trigger = inner, kind, count, trigger
        self.calls: list[tuple[str, Any]] = []
        self.fired_at: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _call(self, kind: str, value: Any) -> None:
        self.calls.append((kind, value))
        if self.fired_at is None and sum(1 for k, _ in self.calls if k == self.kind) == self.count:
            self.fired_at = len(self.calls) - 1
            self.trigger()

    def set_c1(self, value: float) -> float:
        self._call("set_c1", value)
        return float(self.inner.set_c1(value))

    def acquire(self, exposure_s: float | None = None) -> Any:
        self._call("acquire", None)
        return self.inner.acquire(exposure_s)

    def move_aperture(self, target: Any) -> Any:
        self._call("move", (target.x, target.y))
        return self.inner.move_aperture(target)

    def after_the_trigger(self) -> list[tuple[str, Any]]:
        assert self.fired_at is not None, "the trigger never fired"
        return self.calls[self.fired_at + 1:]


def interlocked_parts(served: Any, connect: Any, tmp_path: Path, kind: str, count: int, how: str) -> Any:
    from test_cycle import make_parts

    from temalign.record.state import StateStore
    from temalign.wobble.sources import CameraSource

    busy = tmp_path / "exposing"
    parts = make_parts(served, connect, tmp_path, safety={"busy_file": str(busy)})
    other = StateStore(parts.settings.paths.state_dir)  # the control thread's view of the same state

    def trigger() -> None:
        if how == "pause":
            other.update(paused_until=time.time() + 600, pause_reason="hologram exposure")
        else:
            busy.write_text("")

    watched = Interlocked(parts.microscope, kind, count, trigger)
    parts.microscope = watched
    parts.source = CameraSource(watched, 0.1, served.clock)
    return parts, watched


@pytest.mark.parametrize("how", ["pause", "busy"])
def test_a_pause_or_busy_mid_wobble_stops_it_within_one_frame(make_twin: Any, connect: Any,
                                                              tmp_path: Path, how: str) -> None:
    from test_cycle import offset

    from temalign.service.cycle import run_cycle

    served = make_twin()
    offset(served, 120, -80)
    parts, watched = interlocked_parts(served, connect, tmp_path, "set_c1", 3, how)
    c1 = served.lens_reads()
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("skipped", "paused" if how == "pause" else "busy"), result
    later = watched.after_the_trigger()
    assert [k for k, _ in later if k != "set_c1"] == [], f"frames or moves after the {how}: {later}"
    assert [v for _, v in later] == [pytest.approx(c1, rel=1e-9)], "only C1's restore may follow"
    assert served.lens_reads() == pytest.approx(c1, rel=1e-9)
    assert "C1 restored" in result.detail


def test_a_busy_file_after_the_wobble_stops_the_correction(make_twin: Any, connect: Any,
                                                           tmp_path: Path) -> None:
    from test_cycle import offset

    from temalign.service.cycle import run_cycle

    served = make_twin()
    offset(served, 120, -80)
    parts, watched = interlocked_parts(served, connect, tmp_path, "acquire", 7, "busy")
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("skipped", "busy"), result
    assert "was not made" in result.detail
    assert not [c for c in watched.calls if c[0] == "move"] and served.truth()["aperture"] == before


def test_a_pause_during_the_verification_keeps_the_correction_without_moving_again(
        make_twin: Any, connect: Any, tmp_path: Path) -> None:
    from test_cycle import offset

    from temalign.service.cycle import run_cycle

    served = make_twin()
    offset(served, 120, -80)
    parts, watched = interlocked_parts(served, connect, tmp_path, "move", 1, "pause")
    c1 = served.lens_reads()
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("skipped", "paused"), result
    assert "kept unverified" in result.detail
    moves = [v for k, v in watched.calls if k == "move"]
    assert len(moves) == 1, f"a rollback during the pause: {moves}"
    assert math.dist(served.truth()["aperture"], moves[0]) < 3 * math.sqrt(2), "the move was undone"
    assert served.lens_reads() == pytest.approx(c1, rel=1e-9)
    assert not [k for k, _ in watched.after_the_trigger() if k == "acquire"], "the verification wobbled"
    assert parts.state.load("live").last_position == result.position_after, "a person would be blamed"


def test_no_move_back_after_a_motor_fault_once_the_busy_file_is_there(make_twin: Any, connect: Any,
                                                                       tmp_path: Path) -> None:
    """Found by the fault campaign (seed 3000120): the move back after an overshoot went out while
    the busy file, created as the correction left, said an exposure was running."""
    from test_cycle import offset

    from temalign.service.cycle import run_cycle

    served = make_twin()
    offset(served, 120, -80)
    served.call("twin.fault", kind="overshoot", count=1, units=[30.0, 30.0])
    parts, watched = interlocked_parts(served, connect, tmp_path, "move", 1, "busy")
    result = run_cycle(parts)
    assert result.reason == "motor_fault" and "not moved back" in result.detail, result
    assert len([c for c in watched.calls if c[0] == "move"]) == 1
    assert parts.state.load("live").last_position == result.position_after


# ---- 5: the rate limit keeps room for the rollback -----------------------------------------------


def test_a_correction_leaves_room_in_the_hour_for_its_rollback() -> None:
    from temalign.config.schema import SafetySettings
    from temalign.decide.envelope import decide

    safety = SafetySettings(rate_limit_units_per_hour=1000.0, max_step_units=250.0, on_limit="scale")
    decision = decide(position=(0, 0), estimate=(210.0, 0.0), reference=None, session_start=(0, 0),
                      moved_last_hour=789.8, settings=safety)
    assert decision.action == "move" and decision.reason == "scaled_rate_limit"
    assert 2 * math.hypot(*decision.step) <= 1000.0 - 789.8 + 1e-9
    refusing = safety.model_copy(update={"on_limit": "refuse"})
    refused = decide(position=(0, 0), estimate=(150.0, 0.0), reference=None, session_start=(0, 0),
                     moved_last_hour=789.8, settings=refusing)
    assert (refused.action, refused.reason) == ("refuse", "refused_rate_limit")
    assert "rollback" in refused.detail


# ---- 6, 7: a full disk, a read-only state dir ----------------------------------------------------


class Filling:
    """An image source that fills the state dir's disk at its first frame: after the C1 record is
    written, before anything else of the cycle is."""

    def __init__(self, inner: Any, directory: Path) -> None:
        self.inner, self.directory, self.filler = inner, directory, None
        self.kind, self.name = inner.kind, inner.name

    def grab(self) -> Any:
        if self.filler is None:
            self.filler = fill(self.directory)
        return self.inner.grab()


def test_a_full_disk_mid_cycle_is_the_daemons_own_doing(make_twin: Any, connect: Any,
                                                        short_dir: Path) -> None:
    from temalign.estimate.calibration import nominal_calibration, save_calibration
    from temalign.wobble.sources import CameraSource

    served = make_twin()
    offset(served, 160, -120)
    with mounted_tmpfs(short_dir / "state", "512k") as state_dir:
        save_calibration(state_dir, nominal_calibration())
        live = {"interval_s": 3600, "jitter_s": 0, "mode": "live"}
        # one estimator, and the lens settled (the twin's 1.5 s, 1.5 ms at its scale) before each
        # frame: a frame taken part way makes the walk no line, and either would end the cycle
        # before the move this test is about
        settings = Settings.model_validate(config(served, short_dir, wobble={"settle_s": 2.0},
                                                  schedule=live, estimator={"use": "classical"}))
        microscope = connect(served)
        source = Filling(CameraSource(microscope, 0.1, served.clock), state_dir)
        daemon = Daemon(settings, microscope, clock=served.clock, source=source)
        daemon.start(schedule=False)
        sock = settings.control.socket
        try:
            c0 = served.lens_reads()
            result = request(sock, "once")
            assert served.lens_reads() == pytest.approx(c0, rel=1e-12), "C1 did not come back"
            assert result["outcome"] == "hold" and result["reason"] == "state_unwritable", result
            assert "No space left on device" in result["detail"]
            status = request(sock, "status")
            assert status["state"] == "hold" and "No space left" in status["hold"]
            moved_to = tuple(served.truth()["aperture"])
            assert source.filler is not None
            source.filler.unlink()  # a person makes room, then clears the hold
            request(sock, "hold-clear")
            after = request(sock, "once")
            assert after["reason"] != "aperture_moved", "the daemon's own move was blamed on a person"
            saved = json.loads((state_dir / "state.json").read_text())
            # not 200 units back; the second cycle may correct the first's residual (~15 units)
            assert tuple(saved["last_position"]) == pytest.approx(moved_to, abs=30)
        finally:
            daemon.stop()


def test_temalign_run_on_a_read_only_state_dir_is_a_clear_error(make_twin: Any, short_dir: Path) -> None:
    served = make_twin()
    with mounted_tmpfs(short_dir / "state", "64k", read_only=True):
        path = short_dir / "temalign.yaml"
        path.write_text(yaml.safe_dump(config(served, short_dir)))
        run = run_cli("run", "--config", str(path))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "paths.state_dir" in run.stderr and "Read-only file system" in run.stderr


def test_a_state_lock_that_cannot_be_opened_keeps_the_state_in_memory(tmp_path: Path) -> None:
    """Found by the fault campaign: a directory that refuses the state lock (read-only) raised a
    raw OSError out of the cycle instead of StateWriteError."""
    from temalign.record.state import LOCK_NAME, StateStore, StateWriteError

    store = StateStore(tmp_path)
    store.update(last_position=(1, 2))
    (tmp_path / LOCK_NAME).unlink()
    (tmp_path / LOCK_NAME).mkdir()  # os.open(O_RDWR) on it: EISDIR, as EROFS or EPERM would be
    with pytest.raises(StateWriteError, match="cannot be written"):
        store.update(last_position=(3, 4))
    assert store.unsaved and store.load("live").last_position == (3, 4)
    (tmp_path / LOCK_NAME).rmdir()
    assert store.load("live").last_position == (3, 4) and not store.unsaved, "written once it can be"


def test_a_c1_record_that_cannot_be_removed_holds_and_is_replaced_once_stale(short_dir: Path) -> None:
    """Found by the fault campaign: a read-only directory refused the record's removal after C1
    came back, and the raw OSError escaped the cycle; the stale record then blocked every wobble."""
    from temalign.wobble.c1_memory import C1Memory
    from temalign.wobble.errors import C1RecordUnwritable, PendingRecord

    if subprocess.run(["chattr", "--help"], capture_output=True).returncode not in (0, 1):
        pytest.skip("chattr is not installed")
    with mounted_tmpfs(short_dir / "state", "256k") as state_dir:
        memory = C1Memory(state_dir)
        memory.begin(1.2, [1.18, 1.22])
        subprocess.run(["chattr", "+i", str(state_dir)], check=True)
        try:
            with pytest.raises(C1RecordUnwritable, match="C1 is back"):
                memory.clear()
        finally:
            subprocess.run(["chattr", "-i", str(state_dir)], check=True)
        with pytest.raises(PendingRecord):
            memory.begin(1.19, [1.17, 1.21])  # C1 is not where the record says: it must go back first
        memory.begin(1.2, [1.18, 1.22])  # C1 is back at the record's value: the record is stale
        assert memory.load() is not None and memory.load().values == (1.18, 1.22)


def test_a_cycle_record_the_disk_refuses_puts_the_daemon_in_hold(make_twin: Any, connect: Any,
                                                                 tmp_path: Path) -> None:
    """Found by the fault campaign: when only the cycle's own record failed (everything before
    it fit in the journal's last page), the daemon went on as if nothing had happened."""
    from test_cycle import make_parts

    from temalign.record.journal import JournalError
    from temalign.service.cycle import run_cycle

    served = make_twin()
    parts = make_parts(served, connect, tmp_path)
    write = parts.journal._append

    def refuse_cycle_records(kind: str, head: Any, body: Any) -> Any:
        if kind == "cycle":
            raise JournalError("the journal cannot be written: [Errno 28] No space left on device")
        return write(kind, head, body)

    parts.journal._append = refuse_cycle_records  # type: ignore[method-assign]
    result = run_cycle(parts)
    assert result.outcome == "within_deadband", result
    hold = parts.state.load("live").hold
    assert hold is not None and "state directory could not be written" in hold
    assert parts.journal.backlog >= 1, "the cycle record was lost instead of kept"


# ---- 8: the smaller faults -----------------------------------------------------------------------


def test_deeply_nested_json_gets_a_reply_and_no_traceback(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    server = ControlServer(tmp_path / "c.sock", lambda verb, args, uid: {"verb": verb})
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(server.path))
            s.sendall(b"[" * 30000 + b"\n")
            reply = json.loads(s.makefile().readline())
        assert reply["ok"] is False and "bad request" in reply["error"]
        assert "Traceback" not in caplog.text
        assert request(server.path, "status") == {"verb": "status"}
    finally:
        server.close()


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_arguments_json_parses_but_nested_too_deep_are_refused_before_any_verb_sees_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, opener: bytes, closer: bytes) -> None:
    """Found by the full fault campaign: 700 levels parse, but any recursive walk of them later
    (here a copy, in the daemon a comparison) overflowed into an 'internal error' and a traceback."""
    import copy

    server = ControlServer(tmp_path / "c.sock", lambda verb, args, uid: copy.deepcopy(args))
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(server.path))
            s.sendall(b'{"verb": "status", "args": {"deep": ' + opener * 700 + b"1" + closer * 700 + b"}}\n")
            reply = json.loads(s.makefile().readline())
        assert reply == {"ok": False, "error": "bad request: nested deeper than 32 levels"}
        assert "Traceback" not in caplog.text
        shallow = {"deep": [[["fine"]]]}
        assert request(server.path, "status", shallow) == shallow
    finally:
        server.close()


@pytest.mark.parametrize("args", [{"for_s": {}}, {"for_s": "ten"}, {"for_s": -5}, {"for_s": math.inf},
                                  {"for_s": True}, {"reason": ["x"]}])
def test_a_bad_pause_is_refused_naming_what_is_wrong(make_twin: Any, connect: Any, short_dir: Path,
                                                     args: dict[str, Any]) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    try:
        with pytest.raises(ControlError) as caught:
            request(daemon.settings.control.socket, "pause", args)
        assert "internal error" not in str(caught.value)
        assert next(iter(args)) in str(caught.value)
        assert request(daemon.settings.control.socket, "status")["paused"] is False
    finally:
        daemon.stop()


@pytest.mark.parametrize("step", [[], {}, "sixty", None, True, math.nan, 5000])
def test_a_bad_calibration_step_is_refused_before_anything_moves(make_twin: Any, connect: Any,
                                                                 short_dir: Path, step: Any) -> None:
    """Found by the daemon campaign (hostile-bytes, seed 7): a list as step_units was an internal
    error (TypeError); now it is refused by name, before the journal's intent and any move."""
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    try:
        c1, where = served.lens_reads(), served.truth()["aperture"]
        with pytest.raises(ControlError) as caught:
            request(daemon.settings.control.socket, "calibrate", {"step_units": step})
        assert "internal error" not in str(caught.value) and "step_units" in str(caught.value)
        assert served.lens_reads() == c1 and served.truth()["aperture"] == where
        assert not [e for e in daemon.journal.entries() if e["kind"].startswith("calibration")]
    finally:
        daemon.stop()


def test_output_piped_to_head_is_no_traceback(make_twin: Any, short_dir: Path) -> None:
    served = make_twin()
    path = short_dir / "temalign.yaml"
    path.write_text(yaml.safe_dump(config(served, short_dir)))
    shown = subprocess.run(f"{sys.executable} -m temalign.cli config show {path} | head -1", shell=True,
                           capture_output=True, text=True, timeout=60)
    assert shown.stdout.startswith("# effective settings") and "Traceback" not in shown.stderr, shown.stderr
    assert "BrokenPipe" not in shown.stderr


def test_a_daemon_that_goes_away_mid_request_is_said_so(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def vanish() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.close()  # killed before it answered

    threading.Thread(target=vanish, daemon=True).start()
    try:
        with pytest.raises(ControlError, match="went away"):
            request(path, "once")
    finally:
        listener.close()


def test_a_protocol_fault_in_a_wobble_says_c1_was_restored(make_twin: Any, connect: Any,
                                                           short_dir: Path) -> None:
    served = make_twin()
    daemon = start_daemon(served, connect, short_dir)
    try:
        served.fault("error", methods=["camera.acquire"], count=1, code=1003)
        result = request(daemon.settings.control.socket, "once")
        assert result["outcome"] == "error" and "C1 restored" in result["detail"], result
    finally:
        daemon.stop()


def test_a_lens_reading_outside_the_announced_limits_is_malformed() -> None:
    from temalign.protocol.errors import MalformedReply
    from temalign.protocol.server import ProtocolServer
    from temalign.protocol.tcp_microscope import TcpMicroscope

    limits = {"aperture": {"x": [-1000, 1000], "y": [-1000, 1000]}, "lens": {"C1": [0.5, 2.0]}}
    methods = {"lens.get": lambda p: {"value": 1e30}, "aperture.get": lambda p: {"x": 0, "y": 0}}
    with ProtocolServer(methods, server_name="liar", limits=limits) as server:
        scope = TcpMicroscope(server.address[:2], client_name="t")
        try:
            with pytest.raises(MalformedReply, match="outside"):
                scope.c1()
        finally:
            scope.close()


def test_a_refused_reload_does_not_copy_the_file_into_the_journal(make_twin: Any, connect: Any,
                                                                  short_dir: Path) -> None:
    from temalign.config.loader import load_config
    from temalign.record.journal import read_journal

    served = make_twin()
    secret = short_dir / "secret.txt"
    secret.write_text("root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    daemon = start_daemon(served, connect, short_dir)
    path = short_dir / "temalign.yaml"
    path.symlink_to(secret)  # the daemon may read it; it must not echo it
    try:
        daemon.apply_reload(lambda: load_config(path))
        refused = [e for e in read_journal(short_dir / "state") if e["kind"] == "reload"]
        assert refused and "refused" in refused[-1], refused
        assert str(path) in refused[-1]["refused"]
        assert "hashhash" not in json.dumps(refused) and "root:" not in json.dumps(refused)
    finally:
        daemon.stop()


def test_a_calibration_made_at_another_settle_time_is_not_used(make_twin: Any, connect: Any,
                                                               short_dir: Path) -> None:
    from temalign.estimate.calibration import load_calibration

    served = make_twin()
    offset(served, 120, 0)
    daemon = start_daemon(served, connect, short_dir, wobble={"settle_s": 2.0})
    sock = daemon.settings.control.socket
    try:
        request(sock, "calibrate")
        assert load_calibration(short_dir / "state").settle_s == 2.0  # type: ignore[union-attr]
        faster = Settings.model_validate(config(served, short_dir, wobble={"settle_s": 0.5}))
        notes = daemon.reload(faster)
        assert any("calibrate again" in n for n in notes)
        status = request(sock, "status")
        assert status["calibrated"] is False and "settle" in status["calibration_note"]
        assert request(sock, "once")["outcome"] == "dry_run"
    finally:
        daemon.stop()


def test_once_exits_1_when_its_cycle_ends_in_an_error(make_twin: Any, short_dir: Path) -> None:
    served = make_twin()
    path = short_dir / "temalign.yaml"
    path.write_text(yaml.safe_dump(config(served, short_dir)))
    proc = subprocess.Popen([*CLI, "run", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not is_running(short_dir / "c.sock") and time.monotonic() < deadline:
            time.sleep(0.1)
        served.fault("error", methods=["camera.acquire"], count=None, code=1003)
        once = run_cli("once", "--config", str(path))
        assert once.returncode == 1 and once.stdout.startswith("error"), once
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_config_check_refuses_a_socket_path_that_is_a_file_or_a_system_directory(tmp_path: Path) -> None:
    base = {"microscope": {"address": "127.0.0.1:7801"}, "paths": {"state_dir": str(tmp_path / "state")}}
    file = tmp_path / "c.sock"
    file.write_text("x")
    for where, words in ((file, "not a socket"), (Path("/etc/temalign.sock"), "/etc"),
                         (Path("/usr/lib/temalign.sock"), "/usr")):
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump({**base, "control": {"socket": str(where)}}))
        check = run_cli("config", "check", str(path))
        assert check.returncode == 2 and "control.socket" in check.stderr and words in check.stderr, check
    assert file.read_text() == "x"
