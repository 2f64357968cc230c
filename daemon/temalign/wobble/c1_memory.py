"""The durable record that makes "C1 always comes back" survive a kill (docs/safety.md, invariant 2).

Before the first change of C1 a wobble writes, atomically and durably, the value C1 had and the
values it is about to set; a successful restore removes the record. A record found at start
therefore means a wobble died or failed to restore, and `recover` decides what to do: restore C1
only while it still holds a value that wobble set (the daemon's own doing), leave it alone when
it holds anything else (a person changed the optics since: docs/safety.md, "after a crash
mid-wobble"), and just clear the record when C1 is already back."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from temalign.decide.column import C1_TOLERANCE, same_c1
from temalign.durable import atomic_write, fsync_dir
from temalign.microscope import Microscope
from temalign.protocol.errors import ProtocolError
from temalign.values import finite_float
from temalign.wobble.errors import C1RecordUnwritable, C1RestoreFailed, PendingRecord

RECORD_NAME = "c1-wobble.json"
RECORD_VERSION = 1
@dataclass(frozen=True)
class C1Record:
    """What a wobble left on disk: C1 before it, and every value it sets."""

    c1_before: float
    values: tuple[float, ...]
    started: float
    pid: int

    def to_json(self) -> dict[str, object]:
        return {"version": RECORD_VERSION, "c1_before": self.c1_before, "values": list(self.values),
                "started": self.started, "pid": self.pid}

    @classmethod
    def from_json(cls, data: object) -> C1Record:
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise ValueError(f"not a version-{RECORD_VERSION} C1 record")
        before = finite_float(data.get("c1_before"))
        if before is None:
            raise ValueError(f"c1_before is not a finite number: {data.get('c1_before')!r}")
        values = data.get("values")
        numbers = [finite_float(v) for v in values] if isinstance(values, list) else [None]
        kept = [v for v in numbers if v is not None]
        if len(kept) != len(numbers):
            raise ValueError("values is not a list of finite numbers")
        started = finite_float(data.get("started", 0.0))
        pid = data.get("pid", 0)
        return cls(before, tuple(kept), 0.0 if started is None else started,
                   pid if isinstance(pid, int) else 0)


class CorruptRecord(ValueError):
    """The record exists but cannot be read: its C1 values are unknown."""


class C1Memory:
    """The record in `state_dir`: `begin` before the first change, `clear` after a verified restore,
    `recover` at start."""

    def __init__(self, state_dir: str | os.PathLike[str], tolerance: float = C1_TOLERANCE) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / RECORD_NAME
        self.tolerance = tolerance

    # ---- the wobble's side ----------------------------------------------------------------------

    def begin(self, c1_before: float, values: list[float] | tuple[float, ...]) -> C1Record:
        """Write the record durably; refuses (PendingRecord) while an earlier one is still there,
        since overwriting it would lose the value C1 must return to. An earlier record whose value
        C1 already holds is stale (C1 came back but the record could not be removed: a read-only
        directory) and is replaced: nothing is lost."""
        if self.path.exists() and not self._stale(c1_before):
            raise PendingRecord(
                f"an earlier wobble left C1 unrestored (record {self.path}); nothing was changed. "
                "The recovery at start (temalign wobble, or the daemon) puts C1 back first")
        record = C1Record(float(c1_before), tuple(float(v) for v in values), time.time(), os.getpid())
        try:
            self._write(record)
        except OSError as error:
            raise C1RecordUnwritable(f"cannot write the C1 record {self.path}: {error.strerror or error}; "
                                     "C1 was not changed") from error
        return record

    def _stale(self, c1_now: float) -> bool:
        try:
            record = self.load()
        except (CorruptRecord, OSError):
            return False
        return record is not None and same_c1(record.c1_before, c1_now, self.tolerance)

    def clear(self) -> None:
        """Remove the record (C1 verified back) and make the removal durable. A directory that
        refuses the removal is C1RecordUnwritable: C1 is back, the record stays (stale, replaced
        by the next wobble or cleared at start) and the cycle goes to hold for the directory."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            raise C1RecordUnwritable(f"C1 is back, but its record {self.path} could not be removed: "
                                     f"{error.strerror or error}") from error
        fsync_dir(self.state_dir)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> C1Record | None:
        """The record, None if there is none; CorruptRecord if it cannot be read."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise CorruptRecord(f"cannot read {self.path}: {error}") from error
        try:
            return C1Record.from_json(json.loads(text))
        except ValueError as error:
            raise CorruptRecord(f"{self.path} is not a valid C1 record: {error}") from error

    def _write(self, record: C1Record) -> None:
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        data = (json.dumps(record.to_json(), indent=1) + "\n").encode("utf-8")
        atomic_write(self.path, lambda handle: handle.write(data), mode=0o640)

    # ---- at start -------------------------------------------------------------------------------

    def recover(self, microscope: Microscope) -> str:
        """Settle what a record left by an earlier wobble means; returns a sentence for the log.

        Raises C1RestoreFailed (the record stays) if C1 must be restored and cannot be, and lets a
        ProtocolError of the first read through (the record stays: nothing is known yet)."""
        try:
            record = self.load()
        except CorruptRecord as error:
            return self._set_aside(error, microscope)
        if record is None:
            return "no unfinished wobble on record"
        now = microscope.c1()
        if same_c1(now, record.c1_before, self.tolerance):
            self.clear()
            return (f"an earlier wobble's record was found with C1 already back at {record.c1_before:.6g}; "
                    "record cleared")
        if not any(same_c1(now, v, self.tolerance) for v in record.values):
            self.clear()
            return (f"an earlier wobble did not finish, but C1 now reads {now:.6g}, neither its value "
                    f"before ({record.c1_before:.6g}) nor one the wobble set: someone changed C1 since, "
                    "so it is left alone; record cleared")
        try:
            microscope.set_c1(record.c1_before)
            back = microscope.c1()
        except ProtocolError as error:
            raise C1RestoreFailed(
                f"an earlier wobble left C1 at {now:.6g}; putting it back to {record.c1_before:.6g} "
                f"failed ({error}). C1 may be off; the record stays for the next start") from error
        if not same_c1(back, record.c1_before, self.tolerance):
            raise C1RestoreFailed(
                f"an earlier wobble left C1 at {now:.6g}; after setting {record.c1_before:.6g} it reads "
                f"{back:.6g}. C1 may be off; the record stays for the next start")
        self.clear()
        return (f"an earlier wobble did not finish and left C1 at {now:.6g}, a value it set: "
                f"restored to {record.c1_before:.6g}")

    def _set_aside(self, error: CorruptRecord, microscope: Microscope) -> str:
        """Keep a corrupt record for a person to read, out of the way of the next wobble."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(self.path, aside)
            fsync_dir(self.state_dir)
            moved = f"moved to {aside}"
        except OSError as move_error:
            moved = f"and could not be moved aside ({move_error.strerror or move_error})"
        try:
            reading = f"C1 now reads {microscope.c1():.6g}"
        except ProtocolError as read_error:
            reading = f"C1 could not be read ({read_error})"
        return (f"the record of an earlier wobble is corrupt ({error}); {moved}. Its C1 values are "
                f"unknown, so C1 is left alone: {reading}. Check C1 by hand")

