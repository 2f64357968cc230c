"""The daemon campaign: seeded scenarios against a real `temalign run` process, each checked from
the outside, as an operator, a second daemon or a hostile local user would meet the daemon.

The unit tests of the review findings (tests/test_review_findings.py) drive a Daemon object in the
test's own process; this campaign drives the real process that systemd runs (`faults.DaemonRig`: a
twin in this process on a 1000x clock, over real TCP) and judges only what is visible outside it:
exit statuses and their one-line errors, files left as they were, the control socket and the
metrics endpoint answering, the process's thread count, its log, and every lens, camera and motor
call the twin receives. A misbehaving daemon is a violation in the result, never an exception; only
a rig that cannot work (no twin, no temp dir) raises.

    from benchkit.daemon_faults import daemon_campaign
    daemon_campaign(seed=7, rounds=3, progress=print)"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from temalign.listeners import DEFAULT_MAX_CONNECTIONS
from temalign.record.metrics import MAX_SCRAPERS
from temalign.service.control import ControlError, is_running, request
from temalign.wobble.c1_memory import same_c1

from .faults import KILL_SCALE, DaemonRig
from .harness import REPO
from .net import free_port

KINDS = ("socket-regular-file", "socket-system-dir", "second-daemon", "stop-start", "listener-flood",
         "hostile-bytes", "pause-during-once", "read-only-state-dir")
THREAD_LIMIT = 64
"""systemd/temalign.service's TasksMax: more threads than this and the unit's daemon gets no more."""
QUICK_EXIT_S = 15.0
"""A refusal at start is quick: the daemon checks the config before it opens anything slow (on two
shared cores an interpreter start and the model's load take a few seconds)."""
STOP_TIMEOUT_S = 20.0
ANSWER_TIMEOUT_S = 5.0
"""How long the daemon may take to answer (or refuse) a request once nothing holds it up."""
SLOW_ACQUIRE_S = 200.0
"""Twin seconds each of the first frames of a wobble takes under the slow fault: 0.2 s of wall time
on the 1000x clock, so a pause has time to strike in the middle of the wobble."""
HOSTILE_PER_ROUND = 200
FLOOD_METRICS = (100, 300)
FLOOD_CONTROL = (30, 100)
FLOOD_HOLD_S = (2.0, 3.0)
SOCKET_SLACK = MAX_SCRAPERS + DEFAULT_MAX_CONNECTIONS + 2
"""The sockets a flood may add to the daemon's: a connection each listener serves (8 + 16), and one
each accepted past the limit, on its way to being closed."""


# ---- the tally of a campaign ------------------------------------------------------------------------


@dataclass
class Tally:
    """What a campaign found: each violation with the seed and round that show it again, notes that
    are no violation (what the design does under a flood, a pause that came after the cycle)."""

    seed: int
    round: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    scenarios: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    kind_seconds: Counter[str] = field(default_factory=Counter)
    bad_inputs: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    interlocks: Counter[str] = field(default_factory=Counter)
    ready_s: list[float] = field(default_factory=list)
    exit_s: dict[str, float] = field(default_factory=dict)
    flood: dict[str, Any] = field(default_factory=lambda: {
        "max_threads": 0, "during": Counter(), "connections": Counter(), "max_sockets_over_idle": 0})
    tracebacks: set[str] = field(default_factory=set)

    def bad(self, kind: str, what: str) -> None:
        self.violations.append({"seed": self.seed, "round": self.round, "kind": kind, "what": what})

    def note(self, kind: str, what: str) -> None:
        self.notes.append({"seed": self.seed, "round": self.round, "kind": kind, "what": what})

    def traceback(self, kind: str, found: str | None, when: str) -> None:
        """A traceback in the daemon's log, once however many checks read the same line."""
        if found is not None and found not in self.tracebacks:
            self.tracebacks.add(found)
            self.bad(kind, f"a traceback in the daemon's log {when}: {found}")

    def exited(self, what: str, seconds: float) -> None:
        self.exit_s[what] = round(max(self.exit_s.get(what, 0.0), seconds), 2)


# ---- the rig: DaemonRig, quiet between scenarios, every twin call recorded -----------------------------


class Calls:
    """Every lens.set, camera.acquire and aperture.move the twin receives, stamped with
    time.monotonic() as it arrives: the wrappers sit on the twin instance, which the TCP server's
    handlers look up at each call, so what the daemon commands is seen whatever it says it did."""

    def __init__(self, twin: Any) -> None:
        self._lock = threading.Lock()
        self.log: list[tuple[float, str, Any]] = []
        for name, op in (("set_c1", "set_c1"), ("acquire", "acquire"), ("move_aperture", "move")):
            setattr(twin, name, self._recorded(op, getattr(twin, name)))

    def _recorded(self, op: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.log.append((time.monotonic(), op, args if op == "move" else (args[0] if args else None)))
            return inner(*args, **kwargs)

        return call

    def since(self, t: float) -> list[tuple[float, str, Any]]:
        with self._lock:
            return [c for c in self.log if c[0] > t]

    def last_at(self) -> float:
        with self._lock:
            return self.log[-1][0] if self.log else 0.0

    def wait_for(self, op: str, after: float, timeout_s: float, *, nth: int = 1,
                 after_a_move: bool = False) -> bool:
        """Poll until the `nth` `op` call arrives after `after` (and after an aperture.move, if asked)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            calls = self.since(after)
            if after_a_move:
                moved = [i for i, c in enumerate(calls) if c[1] == "move"]
                calls = calls[moved[0] + 1:] if moved else []
            if sum(1 for c in calls if c[1] == op) >= nth:
                return True
            time.sleep(0.002)
        return False


class CampaignRig(DaemonRig):
    """DaemonRig with a busy file configured and a schedule that stays out of the way: one cycle
    a second after each start (the scheduler's first), then none for an hour, so every lens.set a
    scenario sees is from the cycle it asked for."""

    def __init__(self, root: Path, seed: int) -> None:
        super().__init__(root, seed)
        self.busy_file = root / "exposing"
        self.cfg: dict[str, Any] = yaml.safe_load(self.config.read_text())
        self.cfg["safety"] = {"busy_file": str(self.busy_file)}
        self.cfg["schedule"] = {"interval_s": 3600, "jitter_s": 0, "mode": "live", "adaptive": False}
        self.config.write_text(yaml.safe_dump(self.cfg))
        self.calls = Calls(self.twin)

    @property
    def socket_path(self) -> Path:
        return Path(self.cfg["control"]["socket"])

    @property
    def metrics_port(self) -> int:
        return int(self.cfg["metrics"]["port"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def threads(self) -> int | None:
        """The daemon process's thread count (/proc/PID/status), None once it is gone."""
        assert self.proc is not None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def sockets(self) -> int | None:
        """How many sockets the daemon process holds open (its listeners, its microscope
        connection, each connection a listener accepted and has not closed), None once it is gone.
        A client's socket says less: one the kernel's accept queue dropped looks open to it."""
        assert self.proc is not None
        try:
            fds = list(Path(f"/proc/{self.proc.pid}/fd").iterdir())
        except OSError:
            return None
        count = 0
        for fd in fds:
            with contextlib.suppress(OSError):
                count += os.readlink(fd).startswith("socket:")
        return count

    def ask(self, verb: str, args: dict[str, Any] | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
        """A control request with a deadline (DaemonRig.request waits up to 15 minutes)."""
        return request(self.socket_path, verb, args or {}, timeout_s=timeout_s)

    def boot(self, tally: Tally) -> float:
        """Start the daemon and let its first scheduled cycle end, so the next scenario starts on a
        quiet column; the seconds to READY go into the tally."""
        ready = self.start()
        tally.ready_s.append(ready)
        self.settle()
        return ready

    def settle(self, timeout_s: float = 20.0) -> None:
        """Until the daemon has finished a cycle since its start and the twin heard nothing for 0.3 s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ControlError):
                done = bool(self.ask("status", timeout_s=ANSWER_TIMEOUT_S)["last_cycles"])
                if done and time.monotonic() - self.calls.last_at() > 0.3:
                    return
            time.sleep(0.05)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and the exit status; None if it did not exit in time (then it is killed)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            status: int | None = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            status = None
        self.log.close()
        return status

    def other_config(self, name: str, **changes: Any) -> Path:
        """A second config beside the rig's: its own state dir, metrics port and socket unless
        `changes` (state_dir, socket) say otherwise."""
        cfg = json.loads(json.dumps(self.cfg))
        cfg["paths"] = {"state_dir": str(changes.get("state_dir", self.root / name / "state"))}
        cfg["control"] = {"socket": str(changes.get("socket", self.root / name / "c.sock"))}
        cfg["metrics"] = {"host": "127.0.0.1", "port": free_port()}
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def log_size(self) -> int:
        path = self.root / "daemon.log"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.root / "daemon.log", "rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "daemon"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def cli(*args: str, timeout_s: float = 2 * QUICK_EXIT_S) -> tuple[int | None, str, float]:
    """Run `temalign ARGS`: (exit status or None on a timeout, stdout and stderr together, seconds)."""
    t0 = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "temalign.cli", *args], env=_env(), timeout=timeout_s,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as error:
        out = error.output.decode() if isinstance(error.output, bytes) else (error.output or "")
        return None, out, time.monotonic() - t0
    return done.returncode, done.stdout, time.monotonic() - t0


def traceback_in(log: str) -> str | None:
    """The first log line with a traceback: Python's own text, or the JSON log's "exception" field
    (logging.format json renders a traceback as a list of frames, without the word)."""
    for line in log.splitlines():
        if "Traceback" in line:
            return line[:300]
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("exception"):
                    first = entry["exception"][0] if isinstance(entry["exception"], list) else {}
                    error = f"{first.get('exc_type')}: {str(first.get('exc_value'))[:120]}" \
                        if isinstance(first, dict) else str(entry["exception"])[:120]
                    return f"{entry.get('event')!r} ({error})"
    return None


def expect_refusal(tally: Tally, kind: str, what: str, outcome: tuple[int | None, str, float], *,
                   names: list[str], alone: bool = True) -> None:
    """A start-up refusal as operations.md promises it: exit status 2, quickly, one
    `temalign: error:` line naming `names` (and, `alone`, nothing else), no traceback."""
    status, out, seconds = outcome
    tally.exited(what, seconds)
    if status is None:
        tally.bad(kind, f"{what} did not exit within its timeout; output: {out[-300:]!r}")
        return
    if status != 2:
        tally.bad(kind, f"{what} exited {status}, not 2; output: {out[-300:]!r}")
    if seconds > QUICK_EXIT_S:
        tally.bad(kind, f"{what} took {seconds:.1f} s to refuse (more than {QUICK_EXIT_S:g} s)")
    if "Traceback" in out:
        tally.bad(kind, f"{what} printed a traceback: {out[-500:]!r}")
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("temalign: error:")]
    if len(errors) != 1 or (alone and len(lines) != 1):
        tally.bad(kind, f"{what}: expected one `temalign: error:` line, got {len(lines)} lines: "
                        f"{out[-400:]!r}")
    elif missing := [n for n in names if n not in errors[0]]:
        tally.bad(kind, f"{what}: the error does not name {missing}: {errors[0]!r}")


def status_answers(rig: CampaignRig, tally: Tally, kind: str, when: str,
                   within_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any] | None:
    """`status` answers within `within_s` (retried: a listener just freed may need a moment)."""
    deadline = time.monotonic() + within_s
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return rig.ask("status", timeout_s=max(0.1, deadline - time.monotonic()))
        except ControlError as failed:
            error = failed
            time.sleep(0.05)
    tally.bad(kind, f"status does not answer {when} within {within_s:g} s: {error}")
    return None


# ---- 1, 2, 3: the control socket's path ------------------------------------------------------------------


def socket_regular_file(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """control.socket names an existing regular file: `run` and `config check` refuse (exit 2) and
    the file keeps its bytes (the daemon never deletes what it did not create)."""
    kind = "socket-regular-file"
    where = rig.root / f"precious-{int(rng.integers(1 << 30))}.sock"
    content = rng.bytes(int(rng.integers(0, 4096)))
    where.write_bytes(content)
    config = rig.other_config(f"regular-{tally.round}", socket=where)
    expect_refusal(tally, kind, "temalign run", cli("run", "--config", str(config)), names=[str(where)])
    status, out, seconds = cli("config", "check", str(config))
    tally.exited("temalign config check", seconds)
    if status != 2 or "control.socket" not in out or "Traceback" in out:
        tally.bad(kind, f"config check on a regular-file socket: exit {status}, output {out[-300:]!r}")
    if not where.is_file() or where.is_symlink() or where.read_bytes() != content:
        tally.bad(kind, f"{where} was changed: the daemon touched a file it did not create")
    if Path(f"{where}.lock").exists():
        tally.bad(kind, f"{where}.lock was created beside a file the config check should have refused")
    return None


def socket_system_dir(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """control.socket in /etc: refused at the config (exit 2 from `config check` and `run`), and
    nothing appears in /etc."""
    kind = "socket-system-dir"
    where = Path(f"/etc/temalign-campaign-{int(rng.integers(1 << 40)):010x}.sock")
    if where.exists():
        return f"{where} exists already: not a path this campaign may use"
    config = rig.other_config(f"system-{tally.round}", socket=where)
    status, out, seconds = cli("config", "check", str(config))
    tally.exited("temalign config check", seconds)
    if status != 2 or "control.socket" not in out or "/etc" not in out or "Traceback" in out:
        tally.bad(kind, f"config check on {where}: exit {status}, output {out[-300:]!r}")
    expect_refusal(tally, kind, "temalign run", cli("run", "--config", str(config)), names=[str(where)])
    for made in (where, Path(f"{where}.lock")):
        if made.exists() or made.is_symlink():
            tally.bad(kind, f"{made} was created in a system directory")
            made.unlink()  # this campaign's own name: removing it restores /etc
    return None


def second_daemon(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """Another daemon on the live one's socket (its own state dir and metrics port): it exits 2,
    and the live daemon's socket stays, the same file, answering."""
    kind = "second-daemon"
    before = os.lstat(rig.socket_path)
    config = rig.other_config(f"second-{tally.round}", socket=rig.socket_path)
    expect_refusal(tally, kind, "a second temalign run", cli("run", "--config", str(config)),
                   names=["another temalign daemon"], alone=False)
    try:
        after = os.lstat(rig.socket_path)
    except FileNotFoundError:
        tally.bad(kind, "the live daemon's socket is gone after the second daemon's refusal")
        return None
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        tally.bad(kind, "the live daemon's socket was replaced by another file")
    if not is_running(rig.socket_path):
        tally.bad(kind, "is_running() is false for the live daemon after the second daemon's refusal")
    status_answers(rig, tally, kind, "after the second daemon's refusal")
    if not rig.alive():
        tally.bad(kind, f"the live daemon exited ({rig.proc.returncode if rig.proc else None})")
    return None


# ---- 4: stop and start ------------------------------------------------------------------------------------


def stop_start(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """SIGTERM: exit 0, the socket gone; a start: READY and status. SIGKILL: the stale socket
    stays; a start takes it over: READY and status. In a random order."""
    kind = "stop-start"
    for how in rng.permutation(["term", "kill"]):
        if how == "term":
            status = rig.terminate()
            if status != 0:
                tally.bad(kind, f"SIGTERM: exit status {status} (0 expected; None: no exit within "
                                f"{STOP_TIMEOUT_S:g} s)")
            if rig.socket_path.exists():
                tally.bad(kind, "the socket is still there after a clean stop")
        else:
            rig.kill()
            if not rig.socket_path.exists():
                tally.note(kind, "SIGKILL left no socket behind (nothing stale to take over)")
        try:
            rig.boot(tally)
        except RuntimeError as error:
            tally.bad(kind, f"start after {how}: {error}")
            return None
        status_answers(rig, tally, kind, f"after a restart after {how}")
    return None


# ---- 5: a flood of half-sent connections -------------------------------------------------------------------


def _half_sent(address: tuple[str, int] | str, n: int, first: bytes,
               within_s: float = 1.0) -> tuple[list[socket.socket], int]:
    """`n` connections opened at once, as a flood comes, each sending half a request and then
    nothing. Returns those that got in within `within_s` and how many the kernel or the listener
    turned away. At once, not one after the other: the metrics listener's accept queue is 5 deep,
    and each connect whose SYN a full queue dropped would wait a second for its retry."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    pending, held, away = [], [], 0
    for _ in range(n):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(address) in (0, errno.EINPROGRESS):
            pending.append(s)
        else:  # EAGAIN: a Unix socket's backlog is full
            s.close()
            away += 1
    with selectors.DefaultSelector() as selector:
        for s in pending:
            selector.register(s, selectors.EVENT_WRITE)
        deadline = time.monotonic() + within_s
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                s = key.fileobj  # type: ignore[assignment]
                selector.unregister(s)
                try:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise OSError("connect failed")
                    s.send(first)
                    held.append(s)
                except OSError:
                    s.close()
                    away += 1
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
            away += 1
    return held, away


def get_metrics(port: int, timeout_s: float = ANSWER_TIMEOUT_S) -> str:
    """GET /metrics: "200", another status code, "closed" (no reply), "reset" or "timeout"."""
    try:
        data = exchange(("127.0.0.1", port), b"GET /metrics HTTP/1.0\r\nHost: campaign\r\n\r\n", timeout_s)
    except TimeoutError:
        return "timeout"
    except OSError:
        return "reset"
    if not data:
        return "closed"
    parts = data.split(b"\r\n", 1)[0].split()
    return parts[1].decode("ascii", "replace") if len(parts) > 1 else "garbled"


def _status_now(rig: CampaignRig) -> tuple[str, str]:
    """One status request: ("answered" | "timeout" | how it was refused at once, what the CLI
    would print)."""
    try:
        rig.ask("status", timeout_s=ANSWER_TIMEOUT_S)
    except ControlError as error:
        text = str(error)
        for words, seen in (("did not answer", "timeout"), ("went away", "refused: closed"),
                            ("Broken pipe", "refused: closed"),
                            ("Resource temporarily unavailable", "refused: backlog full (EAGAIN)"),
                            ("reset", "refused: reset")):
            if words in text:
                return seen, text
        return "refused: other", text
    return "answered", ""


def _hold(rig: CampaignRig, until: float) -> tuple[int, int]:
    """Sample the daemon's threads and sockets until `until`; the peaks."""
    threads = sockets = 0
    while time.monotonic() < until:
        threads, sockets = max(threads, rig.threads() or 0), max(sockets, rig.sockets() or 0)
        time.sleep(0.05)
    return threads, sockets


def _flood_answers(rig: CampaignRig, tally: Tally, kind: str) -> None:
    """Once the flood's connections closed: status and GET /metrics answer within 5 s."""
    status_answers(rig, tally, kind, "once the flood's connections closed")
    deadline, last = time.monotonic() + ANSWER_TIMEOUT_S, "not tried"
    while time.monotonic() < deadline and (last := get_metrics(rig.metrics_port)) != "200":
        time.sleep(0.05)
    if last != "200":
        tally.bad(kind, f"GET /metrics gives {last} once the flood's connections closed")


def listener_flood(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """N half-sent HTTP requests and M half-sent control requests, held a few seconds: the threads
    stay under TasksMax, no more connections stay open than each listener serves plus its backlog,
    and a request beyond the limits is answered or refused at once (listeners.py: a full listener
    closes a new connection; it never hangs); once they go, status and /metrics answer within 5 s.
    That an idle connection is closed after its timeout (10 s, 30 s) is the unit tests' to show."""
    kind = "listener-flood"
    n, m = int(rng.integers(*FLOOD_METRICS, endpoint=True)), int(rng.integers(*FLOOD_CONTROL, endpoint=True))
    baseline = rig.sockets() or 0
    until = time.monotonic() + float(rng.uniform(*FLOOD_HOLD_S))
    metrics, away_m = _half_sent(("127.0.0.1", rig.metrics_port), n, b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
                                 within_s=1.5)
    control, away_c = _half_sent(str(rig.socket_path), m, b'{"verb": "sta', within_s=0.5)
    tally.bad_inputs += n + m
    try:
        refused, said = _status_now(rig)
        during = {"status": refused, "metrics": get_metrics(rig.metrics_port)}
        peak, sockets = _hold(rig, until)
    finally:
        for s in metrics + control:
            s.close()
    tally.flood["max_threads"] = max(tally.flood["max_threads"], peak)
    tally.flood["during"].update(f"{k}: {v}" for k, v in during.items())
    tally.flood["connections"].update({"metrics": n, "metrics not connected": away_m, "control": m,
                                       "control not connected": away_c})
    tally.flood["max_sockets_over_idle"] = max(tally.flood["max_sockets_over_idle"], sockets - baseline)
    if peak > THREAD_LIMIT:
        tally.bad(kind, f"{peak} threads during a flood of {n} HTTP and {m} control connections (TasksMax "
                        f"{THREAD_LIMIT})")
    if sockets - baseline > SOCKET_SLACK:
        tally.bad(kind, f"the daemon held {sockets - baseline} more sockets during the flood than idle, more "
                        f"than its listeners serve at once ({SOCKET_SLACK - 2}, and 2 being closed)")
    if refused.startswith("refused"):
        tally.note(kind, f"status during the flood ({len(control)} control connections in): {refused}; "
                         f"the CLI says {said!r}")
    for what, seen in during.items():
        if seen == "timeout":
            tally.bad(kind, f"{what} during the flood neither answered nor was refused within "
                            f"{ANSWER_TIMEOUT_S:g} s")
    _flood_answers(rig, tally, kind)
    if not rig.alive():
        tally.bad(kind, "the daemon exited during the flood")
    return None


# ---- 6: hostile bytes ------------------------------------------------------------------------------------


BAD_VALUES = ('"ten"', "[]", "{}", "null", "true", "false", "-5", "0", "NaN", "Infinity", "-Infinity",
              "1e400", "1e12", '"60"', "[60]", '{"x": 1}', '"\\u0000"')
"""Values no verb takes (no step size in calibrate's range, no pause length within a year)."""
WRONG_TYPED = (("pause", "for_s", BAD_VALUES[:3] + BAD_VALUES[4:]),
               ("pause", "reason", ("[]", "{}", "5", "true")),
               ("once", "force", ('"true"', "1", "0", "null", "[]", "{}")),
               ("dry-run", "on", ('"yes"', "1", "0", "null", "[]", "{}")),
               ("calibrate", "step_units", tuple(v for v in BAD_VALUES if v != '"60"')))
"""(verb, argument, values): requests that must be refused, naming the argument. Not among them:
`pause` with for_s null (a valid open-ended pause) and calibrate's step_units "60" (calibrate takes
float() of it: a real calibration)."""


WRONG_SHAPES = ('{"verb": 5}', '{"verb": null}', '{"verb": ["status"]}', "[1, 2]", '"status"', "42", "null",
                '{"verb": "status", "args": [1]}', '{"verb": "status", "args": 3}', '{"args": {}}', "{}",
                '{"verb": "status", "args": {"x": NaN}}')
"""JSON that is no request, or a request whose args are no object."""


def _valid_line(rng: np.random.Generator) -> bytes:
    verb = str(rng.choice(["status", "pause", "once", "resume", "calibrate"]))
    return json.dumps({"verb": verb, "args": {"for_s": 600, "force": True}}).encode()


def _nested(rng: np.random.Generator) -> bytes:
    """Nesting from shallow enough for json to parse to far past any recursion limit, bare or as
    a status request's argument."""
    depth = int(rng.choice([int(rng.integers(100, 1000)), int(rng.integers(1000, 60000))]))
    opener, closer = (b"[", b"]") if rng.random() < 0.5 else (b'{"a":', b"}")
    inner = opener * depth + b"1" + closer * depth
    if rng.random() < 0.5:
        return b'{"verb": "status", "args": {"deep": ' + inner + b"}}\n"
    return inner + b"\n"


def hostile_control(rng: np.random.Generator) -> bytes:
    """One hostile request for the control socket."""
    pick = int(rng.integers(8))
    if pick == 0:
        return rng.bytes(int(rng.integers(0, 2048))) + (b"\n" if rng.random() < 0.5 else b"")
    if pick == 1:
        line = _valid_line(rng)
        return line[:int(rng.integers(0, len(line)))] + (b"\n" if rng.random() < 0.5 else b"")
    if pick == 2:
        size = int(rng.integers(64 * 1024 - 16, 200 * 1024))
        return b'{"verb": "status", "args": {"x": "' + b"a" * size + b'"}}\n'
    if pick == 3:
        return _nested(rng)
    if pick == 4:
        bad = bytes(int(b) for b in rng.integers(0x80, 0x100, int(rng.integers(1, 64))))
        return b'{"verb": "' + bad + b'"}\n'
    if pick == 5:
        return str(rng.choice(WRONG_SHAPES)).encode() + b"\n"
    if pick == 6:
        verb, arg, values = WRONG_TYPED[int(rng.integers(len(WRONG_TYPED)))]
        return f'{{"verb": "{verb}", "args": {{"{arg}": {rng.choice(values)}}}}}\n'.encode()
    name = "".join(chr(int(c)) for c in rng.integers(0x21, 0x2FF, int(rng.integers(1, 40))))
    return (json.dumps({"verb": name, "args": {}}) + "\n").encode()


HTTP_METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PRI", "G\x00T", "")
HTTP_PATHS = ("/metrics", "/", "/metrics?name[]=temalign_state", "*", "/../../etc/passwd", "/%ff%fe",
              "/metrics#x", "http://x/metrics", "/" + "a" * 9000)
HTTP_VERSIONS = ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/9.9", "HTTP/1", "FTP/1.0", "", "HTTP/1.1 extra")


def hostile_http(rng: np.random.Generator) -> bytes:
    """One hostile request for the metrics endpoint."""
    pick = int(rng.integers(5))
    if pick == 0:
        return rng.bytes(int(rng.integers(0, 4096)))
    method, path = str(rng.choice(HTTP_METHODS)), str(rng.choice(HTTP_PATHS))
    line = f"{method} {path} {rng.choice(HTTP_VERSIONS)}".encode("latin-1") + b"\r\n"
    headers = [b"Host: campaign"]
    if pick == 1:
        headers += [b"Content-Length: " + str(rng.choice(["99999999999", "-1", "x", "0"])).encode()]
    elif pick == 2:
        headers += [b"X-" + rng.bytes(8).hex().encode() + b": " + b"v" * int(rng.integers(1, 70000))]
    elif pick == 3:
        headers += [bytes(int(b) for b in rng.integers(0, 256, int(rng.integers(1, 200))))]
        headers += [b"Accept: */*"] * int(rng.integers(0, 200))
    request_ = line + b"\r\n".join(headers) + b"\r\n\r\n" + rng.bytes(int(rng.integers(0, 512)))
    if rng.random() < 0.3:  # cut anywhere: the server must not wait for the rest once the peer is done
        request_ = request_[:int(rng.integers(0, len(request_)))]
    return request_


def exchange(address: tuple[str, int] | str, data: bytes, timeout_s: float) -> bytes:
    """Send `data` on a fresh connection, say we are done (SHUT_WR), read the reply until the peer
    closes. TimeoutError when it neither replies nor closes in `timeout_s`; OSError on a reset."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(address)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # a server that refused early closes while we still send
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout_s
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
            if time.monotonic() > deadline:
                raise TimeoutError("the reply does not end")
        return reply


def _judge_control_reply(tally: Tally, kind: str, sent: bytes, reply: bytes) -> None:
    """A reply is one JSON line; an "internal error" is a request the daemon did not expect
    (control.py turns unexpected exceptions into it, with a traceback in the log)."""
    if not reply:
        return
    try:
        answer = json.loads(reply)
    except ValueError:
        tally.bad(kind, f"an unreadable reply {reply[:100]!r} to {sent[:100]!r}")
        return
    if not answer.get("ok") and "internal error" in str(answer.get("error")):
        tally.bad(kind, f"{sent[:120]!r} (of {len(sent)} bytes) got {answer['error'][:160]!r}")


def hostile_bytes(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """HOSTILE_PER_ROUND hostile requests to each listener, one a connection: each gets a reply or
    a close; afterwards status answers, the daemon's state is as before, the log has no traceback."""
    kind = "hostile-bytes"
    offset = rig.log_size()
    before = status_answers(rig, tally, kind, "before the hostile bytes") or {}
    targets = ((str(rig.socket_path), hostile_control), (("127.0.0.1", rig.metrics_port), hostile_http))
    for target, make in targets:
        for _ in range(HOSTILE_PER_ROUND):
            sent = make(rng)
            tally.bad_inputs += 1
            try:
                reply = exchange(target, sent, ANSWER_TIMEOUT_S)
            except TimeoutError:
                tally.bad(kind, f"no reply and no close within {ANSWER_TIMEOUT_S:g} s for {sent[:100]!r}")
                continue
            except OSError:
                tally.replies["reset"] += 1
                continue
            tally.replies["reply" if reply else "closed"] += 1
            if isinstance(target, str):
                _judge_control_reply(tally, kind, sent, reply)
    after = status_answers(rig, tally, kind, "after the hostile bytes") or {}
    keys = ("state", "mode", "paused", "hold", "reference")
    if before and after and any(before.get(k) != after.get(k) for k in keys):
        tally.bad(kind, f"the hostile bytes changed the daemon's state: {[before.get(k) for k in keys]} -> "
                        f"{[after.get(k) for k in keys]}")
    time.sleep(0.2)  # the log lines of the last connections
    tally.traceback(kind, traceback_in(rig.log_since(offset)), "after the hostile bytes")
    return None


# ---- 7: a pause or the busy file during `once` ------------------------------------------------------------


def _once_in_thread(rig: CampaignRig, args: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["reply"] = rig.ask("once", args, timeout_s=60)
        except ControlError as error:
            box["error"] = str(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, box


def _interlock_on(rig: CampaignRig, how: str) -> float:
    """Pause (for 600 s) or create the busy file; the monotonic time once it is in force."""
    if how == "pause":
        rig.ask("pause", {"for_s": 600, "reason": "campaign exposure"}, timeout_s=ANSWER_TIMEOUT_S)
    else:
        rig.busy_file.write_text("")
    return time.monotonic()


def _interlock_off(rig: CampaignRig) -> None:
    with contextlib.suppress(FileNotFoundError):
        rig.busy_file.unlink()
    rig.ask("resume", timeout_s=ANSWER_TIMEOUT_S)


def _judge_after(tally: Tally, kind: str, what: str, calls: list[tuple[float, str, Any]],
                 c1_before: float) -> None:
    """After the interlock: at most one frame (the one in flight), no move, and no lens.set but the
    restore to C1's value before the wobble (one other may have been on its way)."""
    others = [v for _, op, v in calls if op == "set_c1" and not same_c1(float(v), c1_before)]
    frames = [c for c in calls if c[1] == "acquire"]
    moves = [v for _, op, v in calls if op == "move"]
    if len(others) > 1:
        tally.bad(kind, f"{what}: {len(others)} lens.set other than C1's restore after the interlock: "
                        f"{others}")
    if len(frames) > 1:
        tally.bad(kind, f"{what}: {len(frames)} frames after the interlock (one may be in flight)")
    if moves:
        tally.bad(kind, f"{what}: aperture.move {moves} after the interlock")


def interlock_mid_once(rig: CampaignRig, tally: Tally, rng: np.random.Generator, how: str) -> None:
    """`once`, slowed so its wobble lasts; when a lens.set arrives (the first, or the first after
    the correction's move), a pause or the busy file: the cycle stops within one frame, puts C1
    back, moves nothing, and says skipped/paused or skipped/busy."""
    kind = "pause-during-once"
    jumped = rng.random() < 0.5
    if jumped:  # a misalignment to correct, so a pause may meet the verification wobble
        units = rng.choice([-1, 1], 2) * rng.uniform(60, 150, 2)
        rig.twin.inject("jump", units=[round(float(v), 1) for v in units])
    after_a_move = jumped and rng.random() < 0.5
    nth = 1 if after_a_move else int(rng.integers(1, 5))
    c1_before = float(rig.twin.truth()["c1_setpoint"])
    rig.twin.inject("slow", methods=["camera.acquire"], count=3, seconds=SLOW_ACQUIRE_S)
    what = f"{how} during once ({'after its move' if after_a_move else f'at lens.set {nth} of its wobble'})"
    mark = time.monotonic()
    worker, box = _once_in_thread(rig, {})
    struck = rig.calls.wait_for("set_c1", mark, 10.0, nth=nth, after_a_move=after_a_move)
    at = None
    if struck:
        time.sleep(float(rng.uniform(0.0, 0.1)))
        at = _interlock_on(rig, how)
    worker.join(timeout=60)
    rig.twin.clear_faults()
    try:
        if worker.is_alive() or "error" in box:
            tally.bad(kind, f"{what}: once gave no reply: {box.get('error', 'still running after 60 s')}")
            return
        reply = box["reply"]
        outcome = f"{reply.get('outcome')}/{reply.get('reason')}"
        if at is None:
            tally.note(kind, f"{what}: no such lens.set came (the cycle ended {outcome}); nothing to strike")
            return
        later = rig.calls.since(at)
        _judge_after(tally, kind, what, later, c1_before)
        if outcome == f"skipped/{'paused' if how == 'pause' else 'busy'}":
            tally.interlocks[f"{what}: {outcome}"] += 1
        elif not later:
            tally.note(kind, f"{what}: late, the cycle had ended ({outcome}) before the {how} was in force")
        else:
            tally.bad(kind, f"{what}: once replied {outcome} ({reply.get('detail')}), not skipped by the "
                            f"{how}")
        c1_now = float(rig.twin.truth()["c1_setpoint"])
        if not same_c1(c1_now, c1_before):
            tally.bad(kind, f"{what}: C1 is {c1_now:.8g} after the cycle, {c1_before:.8g} before it")
    finally:
        _interlock_off(rig)


def _once_refused(rig: CampaignRig, tally: Tally, args: dict[str, Any], reason: str, what: str) -> None:
    mark = time.monotonic()
    try:
        reply = rig.ask("once", args, timeout_s=30)
    except ControlError as error:
        tally.bad("pause-during-once", f"{what}: {error}")
        return
    outcome = f"{reply.get('outcome')}/{reply.get('reason')}"
    if outcome != f"skipped/{reason}":
        tally.bad("pause-during-once", f"{what}: once replied {outcome}, expected skipped/{reason}")
    touched = [(op, v) for _, op, v in rig.calls.since(mark)]
    if touched:
        tally.bad("pause-during-once", f"{what}: the column was touched: {touched[:5]}")


def pause_during_once(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """Both interlocks mid-`once` (in a random order), then `once` while paused and `once --force`
    while the busy file exists: skipped, the lens untouched."""
    for how in rng.permutation(["pause", "busy"]):
        interlock_mid_once(rig, tally, rng, str(how))
    try:
        _interlock_on(rig, "pause")
        _once_refused(rig, tally, {}, "paused", "once while paused")
        _interlock_on(rig, "busy")
        _once_refused(rig, tally, {"force": True}, "busy", "once --force while the busy file exists")
    finally:
        _interlock_off(rig)
    return None


# ---- 8: a read-only state dir ------------------------------------------------------------------------------


def read_only_state_dir(rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> str | None:
    """paths.state_dir on a tmpfs mounted read-only: exit 2, one line naming the directory."""
    kind = "read-only-state-dir"
    if os.geteuid() != 0:
        return "needs root to mount a read-only tmpfs"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    where = rig.root / f"ro-{tally.round}" / "state"
    where.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot mount a tmpfs here: {made.stderr.strip() or made.returncode}"
    try:
        config = rig.other_config(f"ro-{tally.round}", state_dir=where)
        expect_refusal(tally, kind, "temalign run on a read-only state dir",
                       cli("run", "--config", str(config)), names=[str(where), "paths.state_dir"])
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
    return None


# ---- the campaign ----------------------------------------------------------------------------------------


SCENARIOS: dict[str, Callable[[CampaignRig, Tally, np.random.Generator], str | None]] = {
    "socket-regular-file": socket_regular_file,
    "socket-system-dir": socket_system_dir,
    "second-daemon": second_daemon,
    "stop-start": stop_start,
    "listener-flood": listener_flood,
    "hostile-bytes": hostile_bytes,
    "pause-during-once": pause_during_once,
    "read-only-state-dir": read_only_state_dir,
}


def run_scenario(kind: str, rig: CampaignRig, tally: Tally, rng: np.random.Generator) -> None:
    """One scenario on a live daemon (restarted first if an earlier one left it down); a daemon
    that fails a request mid-scenario is a violation, not the campaign's end."""
    t0 = time.perf_counter()
    if not rig.alive():
        exit_ = rig.proc.returncode if rig.proc is not None else None
        tally.bad(kind, f"the daemon was not running before the scenario (exit status {exit_})")
        try:
            rig.boot(tally)
        except RuntimeError as error:
            tally.bad(kind, f"it does not start again: {error}")
            return
    try:
        skipped = SCENARIOS[kind](rig, tally, rng)
    except (ControlError, OSError, RuntimeError, subprocess.SubprocessError) as error:
        tally.bad(kind, f"the scenario stopped: {type(error).__name__}: {error}")
        skipped = None
    if skipped is not None:
        tally.skipped[kind] = skipped
    else:
        tally.scenarios[kind] += 1
    tally.kind_seconds[kind] += time.perf_counter() - t0


def daemon_campaign(seed: int, rounds: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`rounds` rounds of every scenario kind, in an order and with parameters drawn from `seed`,
    against one real `temalign run` (restarted by the scenarios that stop it). JSON-able."""
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="ta-dfaults-"))
    tally = Tally(seed)
    rig = CampaignRig(root, seed)
    try:
        rig.boot(tally)
        for n in range(rounds):
            tally.round = n
            for kind in np.random.default_rng([seed, n]).permutation(KINDS):
                bad = len(tally.violations)
                # each scenario draws from its own stream: its parameters do not hang on how long
                # the scenarios before it waited
                rng = np.random.default_rng([seed, n, KINDS.index(str(kind))])
                run_scenario(str(kind), rig, tally, rng)
                if progress is not None:
                    found = len(tally.violations) - bad
                    state = f"skipped ({tally.skipped[kind]})" if kind in tally.skipped else \
                        (f"{found} violations" if found else "ok")
                    progress(f"round {n + 1}/{rounds} {kind}: {state}, {time.perf_counter() - t0:.1f} s")
        tally.round = rounds
        status_answers(rig, tally, "end", "at the end of the campaign")
        tally.traceback("end", traceback_in(rig.log_since(0)), "at the end")
    finally:
        rig.close()
        shutil.rmtree(root, ignore_errors=True)
    return summary(tally, rounds, time.perf_counter() - t0)


def summary(tally: Tally, rounds: int, seconds: float) -> dict[str, Any]:
    ready = tally.ready_s or [float("nan")]
    return {
        "seed": tally.seed, "rounds": rounds, "time_scale": KILL_SCALE,
        "scenarios": {k: tally.scenarios[k] for k in KINDS if tally.scenarios[k]},
        "skipped": tally.skipped,
        "violations": tally.violations,
        "notes": tally.notes,
        "bad_inputs": tally.bad_inputs,
        "replies": dict(tally.replies.most_common()),
        "interlocks": dict(sorted(tally.interlocks.items())),
        "flood": {"max_threads": tally.flood["max_threads"], "thread_limit": THREAD_LIMIT,
                  "during": dict(tally.flood["during"]), "connections": dict(tally.flood["connections"]),
                  "max_sockets_over_idle": tally.flood["max_sockets_over_idle"],
                  "socket_limit": SOCKET_SLACK},
        "exit_s": tally.exit_s,
        "ready_s": {"median": round(float(np.median(ready)), 3), "max": round(max(ready), 3),
                    "starts": len(tally.ready_s)},
        "kind_seconds": {k: round(v, 2) for k, v in tally.kind_seconds.items()},
        "seconds": round(seconds, 2),
    }

