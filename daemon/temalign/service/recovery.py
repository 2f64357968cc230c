"""What an earlier process left, settled before the first cycle (docs/safety.md invariants 2 and 6): a
wobble in flight (C1 put back if it still holds a value the daemon set), a move in flight (the
position read and recorded), the last hour's moves (so a restart does not reset the rate limit),
and a move whose cycle a kill cut short (so the next cycle does not blame a person for it)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import structlog

from temalign.act.correct import read_position
from temalign.clock import Clock
from temalign.config.schema import Settings
from temalign.decide.envelope import RateLedger
from temalign.microscope import Microscope
from temalign.protocol.errors import ProtocolError
from temalign.record.journal import Journal
from temalign.record.state import StateStore
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.errors import C1RestoreFailed

log = structlog.get_logger("temalign")
MOVE_KINDS = ("move", "rollback")


def recover(*, microscope: Microscope, memory: C1Memory, journal: Journal, store: StateStore,
            settings: Settings) -> list[str]:
    """Settle what an earlier process left; returns sentences, each journaled and logged."""
    notes = []
    try:
        if memory.exists():
            notes.append(memory.recover(microscope))
    except C1RestoreFailed as error:
        store.update(hold=f"C1 could not be restored at start: {error}")
        notes.append(str(error))
    except ProtocolError as error:
        notes.append(f"C1 record pending; the microscope cannot be reached yet ({error}); retried "
                     "before the first wobble")
    for entry in journal.pending():
        if entry.get("kind") in MOVE_KINDS:
            where = read_position(microscope)
            position: tuple[int, int] | str = (where if where is not None
                                                else "unknown (the microscope does not answer)")
            journal.outcome(entry["op"], entry["kind"], ok=False, recovered=True, read_back=position)
            notes.append(f"a {entry['kind']} to {entry.get('target')} was in flight when the daemon "
                         f"stopped; the aperture now reads {position}")
            if where is not None:
                store.update(last_position=where)
        elif entry.get("kind") == "wobble":
            journal.outcome(entry["op"], "wobble", ok=False, recovered=True)
    note = settle_last_position(journal=journal, store=store, microscope=microscope, settings=settings)
    if note:
        notes.append(note)
    for note in notes:
        journal.append("recovery", note=note)
        log.warning("recovery", note=note)
    return notes


def rebuild_ledger(journal: Journal, ledger: RateLedger, clock: Clock, wall_now: float,
                   entries: int = 5000) -> None:
    """The last hour's moves from the journal into `ledger` (on `clock`'s time), so a restart does
    not reset the rate limit."""
    now_clock = clock.now()
    clock_per_wall_s = 1.0 / clock.wall_seconds(1.0)
    origins: dict[int, Any] = {}  # each move intent's `origin`, as the journal holds it (JSON)
    for e in journal.tail(entries):
        if e.get("kind") not in MOVE_KINDS:
            continue
        if e.get("phase") == "intent":
            origins[e["seq"]] = e.get("origin")
        elif e.get("phase") == "done" and e.get("ok") and e.get("op") in origins:
            origin = origins[e["op"]]
            try:
                when = datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00")).timestamp()
                length = math.dist(origin, e["read_back"])
            except (TypeError, ValueError, KeyError):
                continue
            age = wall_now - when
            if 0 <= age < 3600.0:
                ledger.add(now_clock - age * clock_per_wall_s, length)


def settle_last_position(*, journal: Journal, store: StateStore, microscope: Microscope,
                         settings: Settings) -> str | None:
    """A process killed after a move but before its cycle ended left `last_position` at the old
    place: take the journal's last completed move when the aperture is still there, so the next
    cycle does not take the daemon's own move for a person's."""
    last = None
    for e in journal.tail(500):
        if e.get("kind") in MOVE_KINDS and e.get("phase") == "done" and e.get("ok"):
            last = e
    if last is None or not isinstance(last.get("read_back"), list | tuple):
        return None
    moved = (int(last["read_back"][0]), int(last["read_back"][1]))
    state = store.load(settings.schedule.mode)
    where = read_position(microscope)
    if state.last_position == moved or where is None:
        return None
    if math.dist(where, moved) > settings.safety.motor_tolerance_units:
        return None  # moved since: the hands-on check will see it
    store.update(last_position=moved)
    return (f"the last move (to {moved}) finished before the daemon stopped but its cycle did not; "
            "the aperture is still there: taken as where the daemon left it")
