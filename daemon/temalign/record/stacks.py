"""The stack store: every full wobble the daemon measures, kept on disk, bounded (issue 14).

One stack is one file, `<dir>/<id>.npz`, written once and never rewritten; the id sorts by time
(`20261208T013000Z-000123`: UTC wall time, then a sequence number). Its arrays:

- `frames`: the 7 frames as captured, (7, H, W); uint16 when every value is a whole number in
  0..65535 (camera counts: exact), else float32 (the float32 the wobble delivered: exact too);
- `c1_values`, `times`: float64, C1 as commanded and the clock time of each frame;
- `meta`: a 0-d unicode array holding JSON (record.stack_labels.stack_meta says what).

What the cycle's end tells about a stack (its outcome and its labels) is a sidecar `<id>.json`,
written atomically after the cycle, so the .npz never changes once it is there.

Bounded: before a stack is written the oldest go (each with its sidecar) until the store plus the
new one fits `max_bytes`; and no stack is written that would leave the file system under
`min_free_bytes` free: the store then stops, says why (`status()`), and resumes by itself once
there is room. A kill loses at most the stack being written: every file is written to a temporary
of the store's own naming (`.<id>.npz.<random>.tmp`) and renamed (temalign.durable.atomic_write),
and the next open removes such leftovers, and only those.

Never fatal: the store is not a safety record (the journal is), so nothing here raises into a
cycle; a failure is a reason in `status()` and a log line.

Readers (`temalign learn`, notebooks) use `list_stacks` and `read_stack`: numpy only, no pickle."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from temalign.durable import atomic_write, fsync_dir
from temalign.frames import WobbleStack
from temalign.values import JsonObject, jsonable

log = structlog.get_logger("temalign")

STACK_FORMAT = 1
"""The version in every stack's meta; a reader refuses another."""
STACK_SUFFIX = ".npz"
SIDECAR_SUFFIX = ".json"
ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-\d{6,}$")
_TEMPORARY = re.compile(r"^\.(\d{8}T\d{6}Z-\d{6,})\.(npz|json)\.[A-Za-z0-9_]+\.tmp$")
"""What atomic_write names this store's temporaries (`.<id>.npz.<random>.tmp`): the only files an
open removes."""
UINT16_MAX = 65535
FILE_MODE = 0o640


class StackFormatError(ValueError):
    """A file that is not a stack this temalign wrote (or reads): its path and what is wrong."""


@dataclass(frozen=True)
class StoredStack:
    """One stored wobble as a reader gets it: frames (7, H, W) as captured (uint16 or float32),
    C1 as commanded per frame, each frame's clock time, the meta written with it, and what the
    cycle's end added (`outcome`, None until then; `labels`, empty without one)."""

    id: str
    frames: np.ndarray
    c1_values: np.ndarray
    times: np.ndarray
    meta: JsonObject
    labels: JsonObject = field(default_factory=dict)
    outcome: str | None = None


def stack_id(wall: float, seq: int) -> str:
    """The id of a stack taken at `wall` (epoch seconds) with sequence number `seq`: sorts by time."""
    stamp = datetime.fromtimestamp(wall, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{seq:06d}"


def stored_frames(images: np.ndarray) -> np.ndarray:
    """The frames as they will be stored: uint16 when that is exact (camera counts), else float32."""
    a = np.asarray(images)
    if a.dtype == np.uint16:
        return a
    if a.size and np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= UINT16_MAX \
            and np.array_equal(a, np.round(a)):
        return a.astype(np.uint16)
    return a.astype(np.float32)


def encode_stack(stack: WobbleStack, meta: Mapping[str, Any]) -> bytes:
    """The .npz bytes of one stack (compressed; no object arrays, so no pickle on reading)."""
    text = json.dumps(jsonable(dict(meta), "stack meta"), allow_nan=False)
    out = io.BytesIO()
    np.savez_compressed(out, frames=stored_frames(stack.images),
                        c1_values=np.asarray(stack.c1_values, dtype=np.float64),
                        times=np.asarray(stack.times, dtype=np.float64), meta=np.array(text))
    return out.getvalue()


def list_stacks(directory: str | os.PathLike[str]) -> list[Path]:
    """The stacks in `directory`, oldest first (by id); [] for a directory that does not exist."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    ids = sorted(n[:-len(STACK_SUFFIX)] for n in names
                 if n.endswith(STACK_SUFFIX) and ID_PATTERN.match(n[:-len(STACK_SUFFIX)]))
    return [Path(directory) / f"{i}{STACK_SUFFIX}" for i in ids]


def read_stack(path_or_id: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None
               ) -> StoredStack:
    """One stack and its sidecar, if any: a path to its .npz, or its id within `directory`.
    StackFormatError names the file and what is wrong; OSError when it cannot be read."""
    text = os.fspath(path_or_id)
    if directory is not None and ID_PATTERN.match(text):
        path = Path(directory) / f"{text}{STACK_SUFFIX}"
    else:
        path = Path(text)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("frames", "c1_values", "times", "meta")}
    except KeyError as error:
        raise StackFormatError(f"{path}: not a stored stack (no array {error})") from None
    except (ValueError, EOFError) as error:  # not an .npz, a truncated one, an object array
        raise StackFormatError(f"{path}: not a stored stack ({error})") from None
    meta = _json_object(str(arrays["meta"]), path)
    if meta.get("format") != STACK_FORMAT:
        raise StackFormatError(f"{path}: stack format {meta.get('format')!r}; this temalign reads "
                               f"{STACK_FORMAT}")
    frames = arrays["frames"]
    if frames.ndim != 3 or len(arrays["c1_values"]) != frames.shape[0] \
            or len(arrays["times"]) != frames.shape[0]:
        raise StackFormatError(f"{path}: frames {frames.shape} do not match {len(arrays['c1_values'])} C1 "
                               f"values and {len(arrays['times'])} times")
    sidecar: JsonObject = {}
    with contextlib.suppress(FileNotFoundError):
        sidecar = _json_object(path.with_suffix(SIDECAR_SUFFIX).read_text(encoding="utf-8"),
                               path.with_suffix(SIDECAR_SUFFIX))
    labels = sidecar.get("labels")
    outcome = sidecar.get("outcome")
    return StoredStack(path.name[:-len(STACK_SUFFIX)], frames, arrays["c1_values"], arrays["times"], meta,
                       labels if isinstance(labels, dict) else {},
                       outcome if isinstance(outcome, str) else None)


def _json_object(text: str, path: Path) -> JsonObject:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise StackFormatError(f"{path}: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise StackFormatError(f"{path}: expected a JSON object")
    return value


def _sizes(directory: Path, ids: list[str]) -> dict[str, int]:
    """Bytes of each stack with its sidecar (a file gone meanwhile counts 0)."""
    out: dict[str, int] = {}
    for i in ids:
        total = 0
        for suffix in (STACK_SUFFIX, SIDECAR_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                total += (directory / f"{i}{suffix}").stat().st_size
        out[i] = total
    return out


class StackStore:
    """The store in `directory`: `put` a stack, `label` it after the cycle, `status()` for
    status and metrics. Thread-safe (a status request reads while a cycle writes)."""

    def __init__(self, directory: Path, *, max_bytes: int, min_free_bytes: int,
                 wall: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.wall = wall
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        """Every stack's bytes (with its sidecar), oldest first."""
        self._bytes = 0
        self._seq = 0
        self._opened = False
        self.stopped: str | None = None
        """Why the store does not store now (None: it does)."""
        self.stored = 0
        """Stacks stored since open."""
        try:
            self._open()
        except OSError as error:
            self._stop(f"cannot open {self.directory}: {error.strerror or error}")

    # ---- opening ----------------------------------------------------------------------------------

    def _open(self) -> None:
        """Create the directory, remove this store's leftover temporaries (a kill mid-write), and
        count what is there."""
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        removed = 0
        for name in os.listdir(self.directory):
            if _TEMPORARY.match(name):
                (self.directory / name).unlink(missing_ok=True)
                removed += 1
        if removed:
            fsync_dir(self.directory)
            log.info("stack store: removed leftovers of an interrupted write", files=removed,
                     dir=str(self.directory))
        ids = [p.name[:-len(STACK_SUFFIX)] for p in list_stacks(self.directory)]
        self._sizes = _sizes(self.directory, ids)
        self._bytes = sum(self._sizes.values())
        if ids:
            self._seq = max(int(i.rsplit("-", 1)[1]) for i in ids) + 1
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        self._opened = True

    # ---- writing ----------------------------------------------------------------------------------

    def put(self, stack: WobbleStack, meta: Mapping[str, Any]) -> str | None:
        """Store one stack; its id, or None when it was not stored (`stopped` says why). Never
        raises for what the disk does."""
        with self._lock:
            try:
                if not self._opened:
                    self._open()
                wall = float(self.wall())
                sid = stack_id(wall, self._seq)
                data = encode_stack(stack, {"format": STACK_FORMAT, "id": sid, **meta})
                why = self._make_room(len(data), keep=None)
                if why is not None:
                    self._stop(why)
                    return None
                path = self.directory / f"{sid}{STACK_SUFFIX}"
                atomic_write(path, lambda handle: handle.write(data), mode=FILE_MODE)
            except OSError as error:
                self._stop(f"cannot write to {self.directory}: {error.strerror or error}")
                return None
            except (TypeError, ValueError) as error:  # a meta without a JSON form: this stack only
                log.error("stack store: a stack could not be encoded", error=str(error))
                return None
            self._seq += 1
            self._sizes[sid] = len(data)
            self._bytes += len(data)
            self.stored += 1
            self._resume()
            return sid

    def label(self, sid: str, outcome: str, labels: Mapping[str, Any]) -> bool:
        """Write what the cycle's end says of stack `sid` (its sidecar, atomically); False when it
        could not be (the stack is gone, the disk refused). Never raises for what the disk does."""
        with self._lock:
            if sid not in self._sizes:
                return False
            said = jsonable({"id": sid, "outcome": outcome, "labels": dict(labels)}, "stack labels")
            body = json.dumps(said, allow_nan=False, indent=1).encode()
            try:
                why = self._make_room(len(body), keep=sid)
                if why is not None:
                    self._stop(why)
                    return False
                atomic_write(self.directory / f"{sid}{SIDECAR_SUFFIX}", lambda handle: handle.write(body),
                             mode=FILE_MODE)
            except OSError as error:
                self._stop(f"cannot write to {self.directory}: {error.strerror or error}")
                return False
            size = _sizes(self.directory, [sid])[sid]
            self._bytes += size - self._sizes[sid]
            self._sizes[sid] = size
            return True

    def _make_room(self, size: int, keep: str | None) -> str | None:
        """Remove the oldest stacks (never `keep`) until the store plus `size` bytes fits max_bytes;
        a reason, and nothing removed, when it cannot or when the write would leave the file
        system under min_free_bytes (counting what the removals free)."""
        if size > self.max_bytes:
            return f"one stack ({size} bytes) is larger than store.max_bytes ({self.max_bytes})"
        going: list[str] = []
        total = self._bytes
        for old in self._sizes:
            if total + size <= self.max_bytes:
                break
            if old != keep:
                going.append(old)
                total -= self._sizes[old]
        if total + size > self.max_bytes:
            return f"store.max_bytes ({self.max_bytes}) is too small for the stack being kept"
        free_now = free_bytes(self.directory)
        if free_now + (self._bytes - total) - size < self.min_free_bytes:
            return (f"low disk space: {free_now} bytes free on the store's file system, "
                    f"store.min_free_bytes is {self.min_free_bytes}")
        for old in going:
            for suffix in (SIDECAR_SUFFIX, STACK_SUFFIX):
                (self.directory / f"{old}{suffix}").unlink(missing_ok=True)
            self._bytes -= self._sizes.pop(old)
        if going:
            fsync_dir(self.directory)
        return None

    # ---- what it says -----------------------------------------------------------------------------

    def _stop(self, why: str) -> None:
        if why != self.stopped:
            log.warning("stack store stopped: stacks are not kept", why=why, dir=str(self.directory))
        self.stopped = why

    def _resume(self) -> None:
        if self.stopped is not None:
            log.info("stack store resumed: stacks are kept again", was=self.stopped, dir=str(self.directory))
        self.stopped = None

    def status(self) -> JsonObject:
        """What status and the metrics show: where, how many stacks, how many bytes of how many,
        and why it does not store now (null while it does)."""
        with self._lock:
            return {"dir": str(self.directory), "stacks": len(self._sizes), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "stored_since_start": self.stored, "stopped": self.stopped}


def free_bytes(directory: Path) -> int:
    """Bytes free to this user on the file system of `directory`."""
    st = os.statvfs(directory)
    return int(st.f_bavail * st.f_frsize)
