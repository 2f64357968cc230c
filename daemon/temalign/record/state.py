"""What survives a restart (docs/safety.md, "What survives a restart"): pause (with its end), dry-run,
hold, the reference, and where the daemon last left the column (for the hands-on-the-column
check), kept in `state.json` in the state directory.

A mode set at run time (`temalign dry-run on|off`, i.e. `mode` among `update`'s changes, or
`save`) is kept and overrides the config's mode at every later start; until one is set the file
says "mode": null and the config's mode applies, so an administrator who switches the config from
dry-run to live is obeyed. A state file that cannot be read is an error, never a fallback to
defaults: a guess could un-pause a paused daemon or take it out of hold. `paused_until` is
wall-clock epoch seconds, math.inf for "until resumed" (written as the string "inf", so the file
stays strict JSON)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypedDict, Unpack

from temalign.durable import atomic_write
from temalign.errors import TemalignError
from temalign.values import JsonObject, finite

STATE_NAME = "state.json"
LOCK_NAME = "state.lock"
STATE_VERSION = 1
FILE_MODE = 0o640
Mode = Literal["live", "dry-run"]
MODES: tuple[Mode, ...] = ("live", "dry-run")
FIRST_CORRECTION = "first verified correction"
"""`reference_set_by` of a reference the daemon set itself (no person's had been set): it labels no
stored stack (record.stack_labels)."""
_FIELDS = ("mode", "paused_until", "pause_reason", "hold", "reference", "reference_set_by",
           "last_position", "last_c1")


class StateError(TemalignError, ValueError):
    """The state file cannot be used; the daemon refuses to start rather than guess."""


def _optional_text(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be text or null, got {value!r}")
    return value


def _optional_pair(name: str, value: object) -> tuple[int, int] | None:
    """Motor positions are whole units: a position read as a float (a twin's truth) is rounded."""
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not finite(*value)):
        raise ValueError(f"{name} must be two numbers (motor units) or null, got {value!r}")
    return round(value[0]), round(value[1])


@dataclass(frozen=True)
class RunState:
    """The run-time settings a person made and what the daemon must remember across a restart.
    Validated on construction, so no state that cannot be read back is ever written."""

    mode: Mode
    paused_until: float | None = None
    pause_reason: str | None = None
    hold: str | None = None
    reference: tuple[int, int] | None = None
    reference_set_by: str | None = None
    last_position: tuple[int, int] | None = None
    last_c1: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        until = self.paused_until
        if until is not None:
            if not (finite(until) or until == math.inf):
                raise ValueError(f"paused_until must be epoch seconds, inf or null, got {until!r}")
            object.__setattr__(self, "paused_until", float(until))
        c1 = self.last_c1
        if c1 is not None:
            if not finite(c1):
                raise ValueError(f"last_c1 must be a finite number or null, got {c1!r}")
            object.__setattr__(self, "last_c1", float(c1))
        for name in ("pause_reason", "hold", "reference_set_by"):
            _optional_text(name, getattr(self, name))
        for name in ("reference", "last_position"):
            object.__setattr__(self, name, _optional_pair(name, getattr(self, name)))

    def to_json(self) -> JsonObject:
        """Strict JSON: an endless pause is the string "inf"."""
        data: JsonObject = {name: getattr(self, name) for name in _FIELDS}
        if data["paused_until"] == math.inf:
            data["paused_until"] = "inf"
        for name in ("reference", "last_position"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: object, default_mode: str | None = None) -> RunState:
        """The state `to_json` wrote (a null mode is `default_mode`, the config's); ValueError
        saying what is wrong with anything else."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version is {data.get('version')!r}; this temalign reads {STATE_VERSION}")
        missing = [name for name in _FIELDS if name not in data]
        unknown = sorted(set(data) - set(_FIELDS) - {"version", "saved"})
        if missing or unknown:
            raise ValueError("; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
        fields = {name: data[name] for name in _FIELDS}
        if fields["paused_until"] == "inf":
            fields["paused_until"] = math.inf
        if fields["mode"] is None:
            fields["mode"] = default_mode
        return cls(**fields)


class StateChanges(TypedDict, total=False):
    """The fields of a RunState that `StateStore.update` may change, any of them."""

    mode: Mode
    paused_until: float | None
    pause_reason: str | None
    hold: str | None
    reference: tuple[int, int] | None
    reference_set_by: str | None
    last_position: tuple[int, int] | None
    last_c1: float | None


class StateWriteError(StateError):
    """The state could not be written (a full disk): the new state is kept in memory, every later
    load and update of this store sees it, and it is written with the first write that succeeds."""


class StateStore:
    """`state.json` in `state_dir`: atomic, fsynced writes; `update` is a locked
    load-modify-save, safe between threads and processes.

    A write that fails (a full or failing disk) raises StateWriteError and keeps the new state in
    memory: this process goes on from what it did (the daemon's own last move is not lost, so the
    next cycle does not take it for a person's), and the state reaches the disk at the next write
    that succeeds, tried at every load and update."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_NAME
        self._default_mode: Mode | None = None
        self._lock = threading.Lock()
        self._unsaved: tuple[RunState, bool] | None = None

    @property
    def unsaved(self) -> bool:
        """Whether the state in memory has not reached the disk yet."""
        return self._unsaved is not None

    def load(self, default_mode: Mode) -> RunState:
        """The saved state; with no file, the first start's: `default_mode` (the config's), not
        paused, no hold, no reference. StateError (a ValueError) naming the file if it is corrupt."""
        if default_mode not in MODES:
            raise ValueError(f"default mode must be one of {', '.join(MODES)}, got {default_mode!r}")
        self._default_mode = default_mode
        if self._unsaved is not None:
            with self._lock, contextlib.suppress(StateWriteError):
                self._flush()
            if self._unsaved is not None:
                return self._unsaved[0]
        found = self._read(default_mode)
        return RunState(mode=default_mode) if found is None else found[0]

    def _flush(self) -> None:
        """Write the state kept in memory, if any (under the lock); StateWriteError if it fails."""
        if self._unsaved is not None:
            state, mode_set = self._unsaved
            self._write(state, mode_set=mode_set)

    def _read(self, default_mode: Mode) -> tuple[RunState, bool] | None:
        """The saved state and whether its mode was set at run time; None if there is no file."""
        try:
            text = self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise self._corrupt(f"cannot be read ({error})") from error
        try:
            data = json.loads(text)
        except ValueError as error:
            raise self._corrupt(f"is not JSON ({error})") from error
        try:
            state = RunState.from_json(data, default_mode)
            return state, data["mode"] is not None
        except (ValueError, TypeError) as error:
            raise self._corrupt(f"is not a valid temalign state: {error}") from error

    def _corrupt(self, what: str) -> StateError:
        return StateError(
            f"the state file {self.path} {what}. temalign will not guess its state (a guess could "
            "un-pause a paused daemon or clear a hold): fix the file, or remove it to start from the "
            "config's mode, not paused, with no hold and no reference")

    def save(self, state: RunState) -> None:
        """Write `state`, its mode as set at run time, atomically and durably (a kill leaves the old
        file or the new one)."""
        with self._lock:
            self._write(state, mode_set=True)

    def _write(self, state: RunState, *, mode_set: bool) -> None:
        """Save under the file lock; a failure keeps `state` in memory (StateWriteError)."""
        try:
            with self._file_lock():
                self._save(state, mode_set=mode_set)
        except OSError as error:
            self._unsaved = (state, mode_set)
            raise self._write_error(error) from error
        self._unsaved = None

    def _write_error(self, error: OSError) -> StateWriteError:
        why = error.strerror or str(error)
        return StateWriteError(f"the state file {self.path} cannot be written ({why}); the daemon goes "
                               "on from the state in memory and writes it as soon as it can")

    def _save(self, state: RunState, *, mode_set: bool) -> None:
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        data = {"version": STATE_VERSION, **state.to_json(),
                "saved": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        if not mode_set:
            data["mode"] = None
        encoded = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode()
        atomic_write(self.path, lambda handle: handle.write(encoded), mode=FILE_MODE)

    def update(self, **changes: Unpack[StateChanges]) -> RunState:
        """Change some fields under a lock (between threads and processes) and save; returns the new
        state. The mode is recorded as set only if `mode` is among the changes (or was before); the
        state returned fills an unset mode with the last `load`'s default, or "dry-run" (the mode
        that never moves) if this store was never loaded."""
        default: Mode = self._default_mode or "dry-run"
        with self._lock:
            found = self._unsaved
            try:
                with self._file_lock():  # held from the read to the write: no update lost between processes
                    if found is None:
                        found = self._read(default)
                    new, now_set, write = _changed(found, changes, default)
                    if write or self._unsaved is not None:
                        self._save(new, mode_set=now_set)
                        self._unsaved = None
                    return new
            except OSError as error:  # the lock or the write refused (a full or read-only directory)
                if found is None:
                    found = self._read(default)
                new, now_set, _ = _changed(found, changes, default)
                self._unsaved = (new, now_set)
                raise self._write_error(error) from error

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _changed(found: tuple[RunState, bool] | None, changes: StateChanges, default: Mode
             ) -> tuple[RunState, bool, bool]:
    """The state after `changes`, whether its mode is now set, and whether it needs writing."""
    current, mode_set = found if found is not None else (RunState(mode=default), False)
    new = dataclasses.replace(current, **changes)
    now_set = mode_set or "mode" in changes
    return new, now_set, found is None or new != current or now_set != mode_set
