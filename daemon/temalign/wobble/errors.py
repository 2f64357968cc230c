"""What can go wrong in a wobble, said so that a person knows the state of C1 afterwards."""

from __future__ import annotations

from temalign.errors import TemalignError


def with_notes(error: BaseException) -> str:
    """The error's message and its notes (PEP 678): what was done about it, such as the wobble's
    "C1 restored to 1.2" on a protocol error it did not itself raise."""
    text = Exception.__str__(error) if isinstance(error, WobbleError) else str(error)
    return "; ".join([text, *(n for n in getattr(error, "__notes__", ()) if n not in text)])


class WobbleError(TemalignError):
    """The wobble did not complete; C1 is back at the value it had before (it was verified)."""

    def __str__(self) -> str:
        return with_notes(self)


class PendingRecord(WobbleError):
    """A record of an earlier wobble that did not restore C1 is still on disk: nothing was changed,
    because overwriting it would lose the value C1 must go back to. Run the recovery first."""


class C1RecordUnwritable(WobbleError):
    """The C1 record could not be written or removed (a full or read-only state directory): C1 was
    not changed, or is back (the message says which); no wobble runs until the directory takes
    writes again."""


class LensDidNotTake(WobbleError):
    """C1 read back something other than the value just set (a lens that ignores commands)."""


class CameraProtectionAbort(WobbleError):
    """A frame had too many saturated pixels: the wobble stopped at once to protect the camera."""


class WobbleInterrupted(WobbleError):
    """The interlock (a pause or the busy file) came on mid-wobble: the wobble stopped before its
    next C1 step and C1 went back, so an exposure that starts now sees the column as it was.
    `reason` is the interlock's code (decide.column: "paused", "busy")."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class C1RestoreFailed(TemalignError):
    """C1 could not be put back: it may be off. The durable record stays, so the next start
    (`C1Memory.recover`) puts it back if nobody has changed it meanwhile."""


class SourceError(TemalignError):
    """An image source cannot deliver frames (no display, a region off the screen, a bad frame)."""
