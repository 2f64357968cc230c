"""After a move (docs/safety.md invariant 4, "Worse", "Failures"): did the motor get there, did the
alignment get worse (then the move is rolled back), and how many failures in a row put the daemon
in hold. Pure rules over numbers; act/correct.py moves and measures, and asks these."""

from __future__ import annotations

from temalign.config.schema import SafetySettings
from temalign.values import finite

MOTOR_FAULT = "motor_fault"
ROLLED_BACK = "rolled_back"
FAILURE_KINDS = ("rollback", "motor", "lens", "protocol")
"""What counts toward hold: a rollback, a motor that did not reach its target, a lens that did not
take its value, a protocol error during a move. Refusals (low confidence, the deadband) do not."""


def is_worse(before: float, after: float, settings: SafetySettings) -> bool:
    """True when |m| after a move exceeds |m| before by more than `rollback_margin` (noise).

    A non-finite value is worse: nothing shows the move helped, and the previous position is
    the one known state."""
    if not finite(before, after):
        return True
    return abs(after) - abs(before) > settings.rollback_margin_units


def motor_fault(target: tuple[int, int], read_back: tuple[int, int], settings: SafetySettings) -> bool:
    """True when the read-back misses the target by more than the motor noise on either axis."""
    if not finite(*target, *read_back):
        return True
    tolerance = settings.motor_tolerance_units
    return abs(read_back[0] - target[0]) > tolerance or abs(read_back[1] - target[1]) > tolerance


class FailureCounter:
    """Failures in a row (rollback, motor fault, lens, protocol error during a move) toward hold.

    Only real failures are counted: refusals for low confidence or the deadband are not
    failures and must not be passed here (docs/safety.md); a success resets the run."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
        self.limit = limit
        self.count = 0
        self.kinds: list[str] = []

    def failure(self, kind: str) -> bool:
        """Count one failure of `kind`; True when the run has reached the limit (go to hold)."""
        self.count += 1
        self.kinds.append(kind)
        return self.count >= self.limit

    def success(self) -> None:
        """A verified correction: the run of failures is over."""
        self.count = 0
        self.kinds = []
