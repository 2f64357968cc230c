"""The write-ahead journal (docs/safety.md, invariant 6): every measurement, decision and move, one JSON
object per line, fsynced before `append` returns, so a crash at any point leaves a record of what
the hardware may be doing.

Files in the state directory:

- `journal.jsonl`, the one being written;
- `journal.<first seq, 12 digits>.jsonl`, older ones: at `max_bytes` the active file is renamed
  after the seq of its first entry (names sort by age) and the newest `keep_files` are kept;
- `journal.torn`, the bytes of any torn last line a kill left, cut off at the next start;
- `journal.lock`, flocked by the one writer (it holds the writer's pid).

A line is written whole and fsynced, so a kill leaves at most one torn last line, which the next
open moves to `journal.torn` and records as a `journal.repaired` entry. Any other unreadable line
is damage from outside temalign and raises JournalCorrupt naming the file and line.

Seq numbers grow by one per entry across restarts and rotations. An `intent`'s op id is its own
seq; `pending()` lists intents with no outcome yet. Every rotated-to file starts with a
`journal.rotated` entry that carries the pending intents, so the open reads only the active file
(and, after a crash in the middle of a rotation, the newest older ones) however long the history;
that entry does not count toward `max_bytes`, so many pending intents cannot make every append
rotate.

Values become JSON by the one rule of temalign/values.py (`jsonable`: a float that is not finite
is the string "NaN", "Infinity" or "-Infinity"), so every line is strict JSON; a value without a
JSON form raises TypeError before a byte is written. Reason codes that journals before 0.2 wrote in
kebab-case are read back in today's snake_case."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from temalign.clock import Clock
from temalign.durable import fsync_dir
from temalign.errors import TemalignError
from temalign.values import JsonObject, jsonable

ACTIVE_NAME = "journal.jsonl"
LOCK_NAME = "journal.lock"
TORN_NAME = "journal.torn"
FILE_MODE = 0o640
ROTATED_KIND = "journal.rotated"
REPAIRED_KIND = "journal.repaired"
DROPPED_KIND = "journal.dropped"
BACKLOG_MAX = 1000
"""Entries kept in memory while the disk refuses them; beyond, the oldest go (and a
journal.dropped entry says how many)."""
RESERVED = frozenset({"seq", "time", "t", "kind", "phase", "op"})
_ROTATED = re.compile(r"^journal\.(\d+)\.jsonl$")


class JournalError(TemalignError):
    """The journal cannot record: nothing that must be on record may go ahead."""


class JournalLocked(JournalError):
    """Another process writes this journal: two daemons would move the same aperture."""


class JournalCorrupt(JournalError, ValueError):
    """A line other than a torn last one is unreadable: damage from outside temalign."""


def rotated_name(first_seq: int) -> str:
    """The name an active file takes at rotation: the seq of its first entry, so names sort by age."""
    return f"journal.{first_seq:012d}.jsonl"


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


LEGACY_REASONS = {code.replace("_", "-"): code for code in (
    "c1_changed", "aperture_moved", "c1_restore_failed", "lens_did_not_take", "model_only", "classical_only",
    "no_calibration", "doubtful_stack", "model_failed", "classical_failed", "scaled_max_step",
    "scaled_rate_limit", "within_deadband", "below_resolution", "refused_not_finite", "refused_invalid_input",
    "refused_max_step", "refused_rate_limit", "refused_window", "refused_hardware_limits",
    "refused_excursion", "move_failed", "motor_fault", "rolled_back", "rollback_failed")}
"""Reason codes as journals before 0.2 wrote them (kebab-case), and their name now: a reader sees
today's codes in any journal (record/result.py: one convention for outcomes and reasons)."""


_LEGACY_CODE = re.compile(rb'"reason": ?"(?:' + b"|".join(re.escape(code.encode()) for code in LEGACY_REASONS)
                          + rb')"')
"""A line that holds a legacy code at all (most do not: they are rewritten only then, so that
reading a 16 MB journal at start stays a parse, not a walk of every entry)."""


def _current_codes(value: Any) -> Any:
    """`value` with every legacy reason code (a "reason" field, at any depth) in today's form."""
    if isinstance(value, dict):
        return {key: (LEGACY_REASONS.get(item, item) if key == "reason" and isinstance(item, str)
                      else _current_codes(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [_current_codes(item) for item in value]
    return value


def _encode(entry: JsonObject) -> bytes:
    return (json.dumps(entry, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n").encode()


def _decode(line: bytes) -> tuple[JsonObject | None, str]:
    """The entry on `line`, or None and what is wrong with it."""
    try:
        entry = json.loads(line)
    except ValueError as error:
        return None, f"not JSON ({error})"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(entry.get("kind"), str):
        return None, "no integer seq or no kind"
    return (_current_codes(entry) if _LEGACY_CODE.search(line) else entry), ""


def _parse(data: bytes, path: Path, *, torn_tail: bool) -> tuple[list[JsonObject], int]:
    """The entries in a journal file's bytes and the length of the valid prefix. With `torn_tail` a
    bad last line (cut short, no newline) ends the prefix; any other bad line raises JournalCorrupt."""
    entries: list[JsonObject] = []
    pos, number = 0, 0
    while pos < len(data):
        number += 1
        end = data.find(b"\n", pos)
        stop = end if end >= 0 else len(data)
        entry, problem = _decode(data[pos:stop])
        if entry is not None and end < 0:
            entry, problem = None, "no newline at its end (cut short)"
        if entry is not None and entries and entry["seq"] <= entries[-1]["seq"]:
            problem = f"seq {entry['seq']} after seq {entries[-1]['seq']}"
            entry = None
        if entry is None:
            if torn_tail and (end < 0 or end + 1 == len(data)):
                return entries, pos
            raise JournalCorrupt(
                f"{path}, line {number}: {problem}. temalign writes every line whole and fsyncs it, so "
                "this is damage from outside (disk, an edit); move the file aside to go on")
        entries.append(entry)
        pos = stop + 1
    return entries, len(data)


def _rotated_files(directory: Path) -> list[tuple[int, Path]]:
    """Older journal files, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            match = _ROTATED.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def _read_limited(handle: BinaryIO, limit: int | None) -> bytes:
    handle.seek(0)
    return handle.read() if limit is None else handle.read(limit)


def _read_last_lines(handle: BinaryIO, limit: int | None, n: int) -> tuple[bytes, bool]:
    """At least the last `n` whole lines of the file's first `limit` bytes, read backwards in
    blocks (a start-up wants the last hour, not a 16 MB parse); True when that is the whole file."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell() if limit is None else min(limit, handle.tell())
    pos, data = size, b""
    while pos > 0:
        step = min(1 << 16, pos)
        pos -= step
        handle.seek(pos)
        data = handle.read(step) + data
        if data.count(b"\n") > n:
            break
    if pos == 0:
        return data, True
    return data[data.find(b"\n") + 1:], False


def _open_mode(path: Path, flags: int) -> tuple[int, bool]:
    """An fd on `path` (created with FILE_MODE whatever the umask); True if it was created."""
    for _ in range(3):
        try:
            return os.open(path, flags | os.O_CLOEXEC), False
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        os.fchmod(fd, FILE_MODE)
        return fd, True
    raise JournalError(f"cannot open {path}: it keeps appearing and disappearing")


class Journal:
    """The one writer of the journal in `state_dir` (an exclusive flock; a second raises
    JournalLocked). Thread-safe: appends from the cycle and the control socket interleave whole."""

    def __init__(self, state_dir: Path, *, max_bytes: int = 16 << 20, keep_files: int = 20,
                 clock: Clock | None = None) -> None:
        if max_bytes < 1 or keep_files < 1:
            raise ValueError(f"journal needs max_bytes and keep_files >= 1, got {max_bytes}, {keep_files}")
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / ACTIVE_NAME
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self._clock = clock
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._broken: str | None = None
        self._seq = 0
        self._size = 0
        self._first_seq: int | None = None
        self._header = 0
        self._pending: dict[int, JsonObject] = {}
        self._backlog: list[tuple[str, JsonObject, JsonObject]] = []
        self._dropped = 0
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._lock_fd: int | None = self._take_lock()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # ---- opening ----------------------------------------------------------------------------------

    def _take_lock(self) -> int:
        path = self.state_dir / LOCK_NAME
        fd, _ = _open_mode(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise JournalLocked(f"another temalign daemon holds {self.state_dir}{who}: "
                                f"its journal lock {path} is taken") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open(self) -> None:
        """Cut a torn last line, find the last seq and the pending intents, finish a rotation that a
        crash interrupted, apply the retention."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        active, good = _parse(data, self.path, torn_tail=True)
        torn = data[good:]
        self._fd, created = _open_mode(self.path, os.O_WRONLY | os.O_APPEND)
        if created:
            fsync_dir(self.state_dir)
        if torn:
            self._keep_torn(torn, active[-1]["seq"] if active else None)
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
        self._size = good
        self._first_seq = active[0]["seq"] if active else None
        if active and active[0]["kind"] == ROTATED_KIND:
            self._header = data.find(b"\n") + 1
        chain = [active]
        rotated = _rotated_files(self.state_dir)
        if not (active and active[0]["kind"] == ROTATED_KIND):
            for _, path in reversed(rotated):
                older, _ = _parse(path.read_bytes(), path, torn_tail=False)
                chain.insert(0, older)
                if older and older[0]["kind"] == ROTATED_KIND:
                    break
        for entries in chain:
            for entry in entries:
                self._seq = entry["seq"]
                self._track(entry)
        if not active and rotated:
            self._emit(ROTATED_KIND, {}, {"from": rotated[-1][1].name, "pending": self.pending()})
        if torn:
            self._emit(REPAIRED_KIND, {}, {"file": ACTIVE_NAME, "bytes": len(torn), "kept_in": TORN_NAME,
                                           "after_seq": active[-1]["seq"] if active else None})
        self._prune()

    def _track(self, entry: JsonObject) -> None:
        if entry["kind"] == ROTATED_KIND and isinstance(entry.get("pending"), list):
            self._pending = {e["op"]: e for e in entry["pending"] if isinstance(e, dict) and "op" in e}
        elif entry.get("phase") == "intent":
            self._pending[entry["op"]] = entry
        elif entry.get("phase") == "done" and "op" in entry:
            self._pending.pop(entry["op"], None)

    def _keep_torn(self, torn: bytes, after: int | None) -> None:
        fd, created = _open_mode(self.state_dir / TORN_NAME, os.O_WRONLY | os.O_APPEND)
        try:
            head = f"# {_utc_now()}: {len(torn)} bytes cut from the end of {ACTIVE_NAME} after seq {after}\n"
            self._write_all(fd, head.encode() + torn + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.state_dir)

    # ---- writing ----------------------------------------------------------------------------------

    def append(self, kind: str, **fields: object) -> JsonObject:
        """Record `kind` with `fields`, durably (fsynced) before returning the entry as written."""
        return self._write(kind, {}, fields)

    def intent(self, kind: str, **fields: object) -> int:
        """Record, before acting, what is about to happen; returns the op id for `outcome`."""
        return int(self._write(kind, {"phase": "intent", "op": None}, fields)["op"])

    def outcome(self, op: int, kind: str, **fields: object) -> JsonObject:
        """Record how the operation `op` (an intent's id, perhaps from before a restart) ended."""
        if not isinstance(op, int) or isinstance(op, bool) or op < 1:
            raise ValueError(f"op must be an intent's id (a positive int), got {op!r}")
        return self._write(kind, {"phase": "done", "op": op}, fields)

    def _write(self, kind: str, head: JsonObject, fields: dict[str, object]) -> JsonObject:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"journal kind must be a non-empty string, got {kind!r}")
        clash = RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"journal fields {sorted(clash)} are reserved")
        body = {key: jsonable(value, f"journal field {key}") for key, value in fields.items()}
        with self._lock:
            self._usable()
            try:
                self._flush_backlog()
                return self._append(kind, head, body)
            except JournalError:
                if head.get("phase") != "intent":
                    self._keep(kind, head, body)
                raise

    def _append(self, kind: str, head: JsonObject, body: JsonObject) -> JsonObject:
        entry = self._entry(self._seq + 1, kind, head, body)
        line = _encode(entry)
        if self._size > self._header and self._size + len(line) > self.max_bytes + self._header:
            self._rotate()
            entry = self._entry(self._seq + 1, kind, head, body)
            line = _encode(entry)
        return self._commit(entry, line)

    def _keep(self, kind: str, head: JsonObject, body: JsonObject) -> None:
        """An entry that could not be written (a full disk): kept in memory, in order, and written
        before anything else once the disk takes it again, with the time it happened. An intent is
        never kept: what it announces is not done."""
        if len(self._backlog) >= BACKLOG_MAX:
            self._backlog.pop(0)
            self._dropped += 1
        self._backlog.append((kind, head, {**body, "delayed_from": _utc_now()}))

    def _flush_backlog(self) -> None:
        while self._backlog:
            kind, head, body = self._backlog[0]
            self._append(kind, head, body)
            self._backlog.pop(0)
        if self._dropped:
            self._append(DROPPED_KIND, {}, {"entries": self._dropped,
                                            "why": "the disk refused them and the backlog was full"})
            self._dropped = 0

    @property
    def backlog(self) -> int:
        """Entries kept in memory because the disk refused them (written at the next append)."""
        with self._lock:
            return len(self._backlog)

    def _entry(self, seq: int, kind: str, head: JsonObject, body: JsonObject) -> JsonObject:
        entry: JsonObject = {"seq": seq, "time": _utc_now()}
        if self._clock is not None:
            entry["t"] = jsonable(float(self._clock.now()))
        entry["kind"] = kind
        entry.update(head)
        if "op" in head and head["op"] is None:
            entry["op"] = seq
        entry.update(body)
        return entry

    def _emit(self, kind: str, head: JsonObject, body: JsonObject) -> JsonObject:
        entry = self._entry(self._seq + 1, kind, head, body)
        return self._commit(entry, _encode(entry))

    def _commit(self, entry: JsonObject, line: bytes) -> JsonObject:
        """Write one entry whole and fsync it; a failed write is cut back so the file stays valid."""
        assert self._fd is not None
        try:
            self._write_all(self._fd, line)
        except OSError as error:
            self._cut_back(error)
            raise JournalError(f"cannot write the journal {self.path}: {error.strerror or error}; "
                               "nothing was recorded") from error
        try:
            os.fsync(self._fd)
        except OSError as error:
            self._broken = f"fsync of {self.path} failed ({error.strerror or error})"
            raise JournalError(f"the journal {self.path} may not be on disk: {self._broken}") from error
        self._seq = entry["seq"]
        if self._size == 0:
            self._first_seq = self._seq
            self._header = len(line) if entry["kind"] == ROTATED_KIND else 0
        self._size += len(line)
        self._track(entry)
        return entry

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _cut_back(self, error: OSError) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        except OSError as cut:
            self._broken = (f"a write failed ({error.strerror or error}) and its part could not be cut "
                            f"back ({cut.strerror or cut}); restart to repair {self.path}")

    def _usable(self) -> None:
        if self._broken:
            raise JournalError(f"the journal cannot record: {self._broken}")
        if self._fd is None:
            raise JournalError(f"the journal in {self.state_dir} is closed")

    def _rotate(self) -> None:
        """Rename the active file after its first seq, start a new one that carries the pending
        intents, delete beyond `keep_files`. A kill at any step leaves files the next open reads."""
        assert self._fd is not None and self._first_seq is not None
        target = self.state_dir / rotated_name(self._first_seq)
        if target.exists():
            raise JournalError(f"cannot rotate the journal: {target} exists already")
        old = self.path.name
        try:
            os.rename(self.path, target)
            fsync_dir(self.state_dir)
        except OSError as error:
            raise JournalError(f"cannot rotate the journal {self.path}: {error.strerror or error}") from error
        os.close(self._fd)
        self._fd = None
        try:
            self._fd, _ = _open_mode(self.path, os.O_WRONLY | os.O_APPEND)
            fsync_dir(self.state_dir)
        except OSError as error:
            self._broken = f"cannot start a new {self.path} after rotation ({error.strerror or error})"
            raise JournalError(self._broken) from error
        self._size, self._first_seq, self._header = 0, None, 0
        self._emit(ROTATED_KIND, {}, {"from": target.name, "previous": old, "pending": self.pending()})
        self._prune()

    def _prune(self) -> None:
        rotated = _rotated_files(self.state_dir)
        doomed = rotated[:max(len(rotated) - self.keep_files, 0)]
        for _, path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            fsync_dir(self.state_dir)

    # ---- reading ----------------------------------------------------------------------------------

    def pending(self) -> list[JsonObject]:
        """Intents with no outcome, oldest first: what a crash left in flight."""
        with self._lock:
            return [dict(self._pending[op]) for op in sorted(self._pending)]

    def _snapshot(self) -> list[tuple[Path, BinaryIO, int | None]]:
        """Open handles on every file, the active one up to its last whole entry: a consistent view
        that a later rotation or prune cannot change under a reader."""
        with self._lock:
            self._usable_for_reading()
            files: list[tuple[Path, BinaryIO, int | None]] = []
            try:
                for _, path in _rotated_files(self.state_dir):
                    with contextlib.suppress(FileNotFoundError):
                        files.append((path, open(path, "rb"), None))  # noqa: SIM115
                files.append((self.path, open(self.path, "rb"), self._size))  # noqa: SIM115
            except BaseException:
                for _, handle, _ in files:
                    handle.close()
                raise
            return files

    def _usable_for_reading(self) -> None:
        if self._fd is None:
            raise JournalError(f"the journal in {self.state_dir} is closed")

    def entries(self) -> Iterator[JsonObject]:
        """Every entry, oldest first, across the rotated files."""
        files = self._snapshot()
        try:
            for path, handle, limit in files:
                yield from _parse(_read_limited(handle, limit), path, torn_tail=False)[0]
        finally:
            for _, handle, _ in files:
                handle.close()

    def tail(self, n: int) -> list[JsonObject]:
        """The last `n` entries, oldest first, reading back only as many files as needed."""
        if n <= 0:
            return []
        files = self._snapshot()
        found: list[JsonObject] = []
        try:
            for path, handle, limit in reversed(files):
                data, _whole = _read_last_lines(handle, limit, n - len(found))
                found[:0] = _parse(data, path, torn_tail=False)[0]
                if len(found) >= n:
                    break
        finally:
            for _, handle, _ in files:
                handle.close()
        return found[-n:]

    @property
    def last_seq(self) -> int:
        """The seq of the newest entry (0 for a new journal)."""
        with self._lock:
            return self._seq

    def close(self) -> None:
        """Close the file and release the lock; idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path_or_dir: str | os.PathLike[str]) -> list[JsonObject]:
    """All entries of a journal directory (oldest first, across rotated files) or of one file, for
    readers beside a running daemon (`temalign history`): takes no lock, and skips a torn or
    half-written last line of the active file instead of failing. FileNotFoundError if there is no
    journal there."""
    path = Path(path_or_dir)
    if not path.is_dir():
        data = path.read_bytes()
        return _parse(data, path, torn_tail=path.name == ACTIVE_NAME)[0]
    for _ in range(5):
        names = [p for _, p in _rotated_files(path)] + [path / ACTIVE_NAME]
        handles: list[tuple[Path, BinaryIO]] = []
        try:
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    handles.append((name, open(name, "rb")))  # noqa: SIM115
            again = [p for _, p in _rotated_files(path)] + [path / ACTIVE_NAME]
            if again[-2:] != names[-2:]:
                continue
            if not handles:
                raise FileNotFoundError(f"no journal in {path}")
            out: list[JsonObject] = []
            for name, handle in handles:
                out.extend(_parse(handle.read(), name, torn_tail=name.name == ACTIVE_NAME)[0])
            return out
        finally:
            for _, handle in handles:
                handle.close()
    raise JournalError(f"the journal in {path} kept rotating while it was read; try again")
