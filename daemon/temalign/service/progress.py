"""The steps of a cycle as they happen, for the person who asked for it (`temalign once`).

A cycle journals every step before and after it (docs/safety.md invariant 6): the wobble about to
start, its estimate, the decision, the move and its read-back. `ObservedJournal` is the daemon's
journal that also hands each entry written by one thread to that thread's observer, and
`describe_step` words it; so the progress lines come from the record itself, and the cycle's code
knows nothing about who watches."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from temalign.clock import Clock
from temalign.record.journal import Journal
from temalign.record.summary import pair
from temalign.values import JsonObject

Observer = Callable[[JsonObject], None]


class ObservedJournal(Journal):
    """A Journal that tells the observer registered by the writing thread what it wrote (other
    threads' entries, a concurrent `status` audited, are not that caller's business)."""

    def __init__(self, state_dir: Path, *, max_bytes: int = 16 << 20, keep_files: int = 20,
                 clock: Clock | None = None) -> None:
        self._observers: dict[int, Observer] = {}
        super().__init__(state_dir, max_bytes=max_bytes, keep_files=keep_files, clock=clock)

    @contextlib.contextmanager
    def observed(self, observer: Observer) -> Iterator[None]:
        """Hand this thread's entries to `observer` inside the block."""
        me = threading.get_ident()
        self._observers[me] = observer
        try:
            yield
        finally:
            self._observers.pop(me, None)

    def _tell(self, entry: JsonObject) -> None:
        observer = self._observers.get(threading.get_ident())
        if observer is not None:
            with contextlib.suppress(Exception):  # a watcher's trouble never stops the record
                observer(entry)

    def append(self, kind: str, **fields: object) -> JsonObject:
        entry = super().append(kind, **fields)
        self._tell(entry)
        return entry

    def intent(self, kind: str, **fields: object) -> int:
        op = super().intent(kind, **fields)
        self._tell({"kind": kind, "phase": "intent", "op": op, **fields})
        return op

    def outcome(self, op: int, kind: str, **fields: object) -> JsonObject:
        entry = super().outcome(op, kind, **fields)
        self._tell(entry)
        return entry


def _size(delta: object) -> str:
    if pair(delta) is None or not isinstance(delta, list | tuple):
        return "no estimate"
    return f"|m| {math.hypot(float(delta[0]), float(delta[1])):.1f}"


ACTIONS = {"none": "no move", "move": "move", "refuse": "refused", "hold": "hold"}


def describe_step(entry: Mapping[str, object]) -> str | None:
    """One journal entry of a cycle as a progress line; None for entries that are no step."""
    kind, phase = entry.get("kind"), entry.get("phase")
    if kind == "wobble" and phase == "intent":
        label = entry.get("label")
        fraction = entry.get("fraction")
        w = f"{float(fraction) * 100:g} %" if isinstance(fraction, int | float) else "the wobble"
        if label == "check":
            return f"two-frame check: C1 as it is, then {w} up"
        what = "verification wobble" if label == "verify" else "wobble"
        return f"{what}: C1 through 7 values, ±{w}, a settle each"
    if kind == "wobble" and phase == "done":
        if not entry.get("ok"):
            return f"wobble failed: {entry.get('error')} (C1 put back)"
        if "trusted" not in entry:
            return f"check: {_size(entry.get('delta'))} ({entry.get('reason')})"
        model, classical = pair(entry.get("model"), signed=True), pair(entry.get("classical"), signed=True)
        figures = ", ".join(f"{n} {v}" for n, v in (("model", model), ("classical", classical)) if v)
        trust = "trusted" if entry.get("trusted") else f"not trusted: {entry.get('reason')}"
        return f"estimate: {_size(entry.get('delta'))}" + (f" ({figures})" if figures else "") + f", {trust}"
    if kind == "decision":
        target = pair(entry.get("target"))
        action = ACTIONS.get(str(entry.get("action")), str(entry.get("action")))
        to = f" to {target}" if target and entry.get("action") == "move" else ""
        live = "" if entry.get("live") else " (dry-run: not made)"
        return f"decision: {action}{to} ({entry.get('reason')}){live}"
    if kind in ("move", "rollback") and phase == "intent":
        verb = "moving" if kind == "move" else "rolling back: moving"
        return f"{verb} the aperture from {pair(entry.get('origin'))} to {pair(entry.get('target'))}"
    if kind in ("move", "rollback") and phase == "done":
        if not entry.get("ok"):
            return f"{kind} failed: {entry.get('error')}"
        return f"the aperture reads {pair(entry.get('read_back'))}"
    if kind == "hands.aperture":
        return (f"the aperture is at {pair(entry.get('position'))}, not where the daemon left it: "
                "someone moved it")
    if kind == "hands.c1":
        return "C1 is not where the daemon left it: someone changed the optics"
    if kind == "hold":
        return f"hold: {entry.get('reason')}"
    if kind == "reference":
        return f"reference set to {pair(entry.get('position'))}"
    return None


def progress_observer(say: Callable[[str], None]) -> Observer:
    """An observer that says each step of a cycle with `say`."""
    def observe(entry: JsonObject) -> None:
        text = describe_step(entry)
        if text is not None:
            say(text)
    return observe
