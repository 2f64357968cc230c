"""The motion envelope of docs/safety.md (invariant 1, with its rate limit) and the deadband, as pure
functions: what may be commanded. No I/O and no clock: the caller passes positions, times and the
trailing-hour path length, so every rule here can be tested exhaustively and replayed from the
journal.

`decide` turns an estimate into one `Decision`. Its guarantee, for any inputs: a "move" targets an
integer position inside the window, the excursion disc and the hardware limits, with a step at most
`max_step` per axis and, with room for the rollback that may follow, within the rate limit left
this hour, along the estimated direction (to within the rounding to whole motor units).
Everything else is "none", "refuse" or "hold", with a stable reason code for the journal and the
metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from temalign.config.schema import SafetySettings
from temalign.microscope import Limits
from temalign.values import finite, finite_float

Action = Literal["move", "none", "refuse", "hold"]

REASONS: dict[str, Action] = {
    "corrected": "move",
    "scaled_max_step": "move",
    "scaled_rate_limit": "move",
    "within_deadband": "none",
    "below_resolution": "none",
    "refused_not_finite": "refuse",
    "refused_invalid_input": "refuse",
    "refused_max_step": "refuse",
    "refused_rate_limit": "refuse",
    "refused_window": "refuse",
    "refused_hardware_limits": "refuse",
    "refused_excursion": "hold",
}
"""Every reason `decide` gives, with the one action it always comes with."""

MIN_RATE_REMAINING = 0.5
"""Rate budget (motor units) at or below which no move is scaled down to fit: it would be no move."""

_ZERO = (0.0, 0.0)
_EXACT_INT = 2**53


@dataclass(frozen=True)
class Decision:
    """What to do with one estimate, and why, in a form the journal records as it is."""

    action: Action
    reason: str
    detail: str
    target: tuple[int, int] | None
    step: tuple[float, float]
    requested: tuple[float, float]
    limits_hit: tuple[str, ...]


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= _EXACT_INT
    number = finite_float(value)
    return number is not None and number.is_integer() and abs(number) <= _EXACT_INT


def _is_point(point: object) -> bool:
    if not isinstance(point, Iterable):
        return False
    items = list(point)
    return len(items) == 2 and all(_is_int(v) for v in items)


def _is_vector(value: object) -> bool:
    if not isinstance(value, Iterable):
        return False
    items = list(value)
    return len(items) == 2 and finite(*items) and math.isfinite(math.hypot(*items))


def _fmt(v: tuple[float, float]) -> str:
    return f"({v[0]:.6g}, {v[1]:.6g})"


def _violations(
    target: tuple[float, float],
    centre: tuple[int, int],
    settings: SafetySettings,
    hardware: Limits | None,
) -> list[str]:
    """Which of window, max_excursion, hardware `target` breaks (exact, no tolerance)."""
    dx, dy = target[0] - centre[0], target[1] - centre[1]
    broken = []
    if abs(dx) > settings.window_units or abs(dy) > settings.window_units:
        broken.append("window")
    if math.hypot(dx, dy) > settings.max_excursion_units:
        broken.append("max_excursion")
    if hardware is not None:
        (xlo, xhi), (ylo, yhi) = hardware.aperture_x, hardware.aperture_y
        if not (xlo <= target[0] <= xhi and ylo <= target[1] <= yhi):
            broken.append("hardware")
    return broken


def _step_violations(step: tuple[float, float], settings: SafetySettings, remaining: float) -> list[str]:
    broken = []
    if max(abs(step[0]), abs(step[1])) > settings.max_step_units:
        broken.append("max_step")
    if math.hypot(*step) > remaining:
        broken.append("rate_limit")
    return broken


def step_budget(left: float, settings: SafetySettings) -> float:
    """How long a correction may be when `left` units of the hour's rate limit remain: the move
    and the rollback that may follow must both fit. The rollback goes from the read-back to the
    start, at most the motor tolerance (per axis) longer than the move; a read-back further off is
    a motor fault, whose move back is the return to a known position and is made regardless."""
    return (left - settings.motor_tolerance_units * math.sqrt(2.0)) / 2.0


def _nearest(value: float) -> int:
    return math.floor(value + 0.5)


def decide(
    *,
    position: tuple[int, int],
    estimate: tuple[float, float],
    reference: tuple[int, int] | None,
    session_start: tuple[int, int],
    moved_last_hour: float,
    settings: SafetySettings,
    hardware: Limits | None = None,
) -> Decision:
    """The correction to command for `estimate` (a* - a, motor units) at `position`, or why none.

    The window and the excursion are measured from `reference`; before a reference is set, the
    envelope is centred on `session_start`, where the aperture was when the daemon started, so
    an unattended daemon can never wander further than the envelope from where a person left it.

    Order: a non-finite input refuses; |estimate| below the deadband is no move; gain applies;
    max_step then the rate limit (a step and its rollback within the `rate_limit - moved_last_hour`
    left: `step_budget`) scale the whole vector or
    refuse, as `on_limit` says (nothing is scaled to a budget of `MIN_RATE_REMAINING` or less);
    the target is then checked, never clipped, against the window (refuse), the excursion (hold:
    drift that large is news a person must see) and the hardware limits (refuse). The target is
    rounded to whole units and every limit is checked again on the rounded target; when the
    nearest rounding breaks one, the other roundings within one unit of the exact target are
    tried, and if none fits the move is refused (or held, for the excursion). A correction that
    rounds to no move at all is "none"/"below_resolution". `step` is the integer move commanded
    (target - position); `requested` is (0, 0) when the estimate is not finite, so the record
    stays valid JSON."""

    gain = settings.gain
    points = {"position": position, "session_start": session_start}
    if reference is not None:
        points["reference"] = reference
    for name, point in points.items():
        if not _is_point(point):
            return Decision("refuse", "refused_invalid_input",
                            f"{name} {point!r} is not two whole motor units", None, _ZERO, _ZERO, ())
    position = (int(position[0]), int(position[1]))
    centre_name = "reference" if reference is not None else "session start"
    centre = (int(reference[0]), int(reference[1])) if reference is not None else (
        int(session_start[0]), int(session_start[1]))

    if not _is_vector(estimate):
        return Decision("refuse", "refused_not_finite", f"estimate {estimate!r} is not a finite 2-vector",
                        None, _ZERO, _ZERO, ())
    ex, ey = float(estimate[0]), float(estimate[1])
    requested = (gain * ex, gain * ey)
    if not finite(moved_last_hour):
        return Decision("refuse", "refused_not_finite", f"moved_last_hour {moved_last_hour!r} is not finite",
                        None, _ZERO, requested, ())
    if moved_last_hour < 0:
        return Decision("refuse", "refused_invalid_input",
                        f"moved_last_hour {moved_last_hour!r} is negative: the rate ledger is wrong",
                        None, _ZERO, requested, ())

    magnitude = math.hypot(ex, ey)
    if magnitude < settings.deadband_units:
        return Decision("none", "within_deadband",
                        f"|estimate| {magnitude:.3f} is below the deadband {settings.deadband_units:g}",
                        None, _ZERO, requested, ())

    scale_mode = settings.on_limit == "scale"
    limits_hit: list[str] = []
    reason = "corrected"
    notes: list[str] = []
    step = requested

    largest = max(abs(step[0]), abs(step[1]))
    if largest > settings.max_step_units:
        limits_hit.append("max_step")
        if not scale_mode:
            return Decision("refuse", "refused_max_step",
                            f"requested {_fmt(requested)} exceeds max_step "
                            f"{settings.max_step_units:g} per axis",
                            None, _ZERO, requested, tuple(limits_hit))
        factor = settings.max_step_units / largest
        step = (step[0] * factor, step[1] * factor)
        reason = "scaled_max_step"
        notes.append(f"scaled by {factor:.4g} to max_step {settings.max_step_units:g}")

    left = settings.rate_limit_units_per_hour - moved_last_hour
    remaining = step_budget(left, settings)
    length = math.hypot(*step)
    if length > remaining:
        limits_hit.append("rate_limit")
        if not scale_mode or remaining <= MIN_RATE_REMAINING:
            return Decision("refuse", "refused_rate_limit",
                            f"step {_fmt(step)} (length {length:.3f}) and the rollback that may follow "
                            f"do not fit in the {max(left, 0.0):.3f} units left of "
                            f"{settings.rate_limit_units_per_hour:g} per hour "
                            f"({moved_last_hour:.3f} moved in the last hour; a step may take "
                            f"{max(remaining, 0.0):.3f})",
                            None, _ZERO, requested, tuple(limits_hit))
        factor = remaining / length
        step = (step[0] * factor, step[1] * factor)
        reason = "scaled_rate_limit"
        notes.append(f"scaled by {factor:.4g} to {remaining:.3f}, which leaves room for its rollback in "
                     f"the {left:.3f} units left this hour")

    exact = (position[0] + step[0], position[1] + step[1])
    broken = _violations(exact, centre, settings, hardware)
    if broken:
        return _refusal(broken, limits_hit, exact, centre, centre_name, settings, hardware, requested, "")

    nearest = (_nearest(exact[0]), _nearest(exact[1]))
    if nearest == position:
        return Decision("none", "below_resolution",
                        f"step {_fmt(step)} rounds to no move at {position}", None, _ZERO, requested,
                        tuple(limits_hit))
    candidates = sorted(
        {(fx(exact[0]), fy(exact[1])) for fx in (math.floor, math.ceil) for fy in (math.floor, math.ceil)},
        key=lambda c: (math.hypot(c[0] - exact[0], c[1] - exact[1]), c),
    )
    candidates.remove(nearest)
    candidates.insert(0, nearest)
    first_broken: list[str] | None = None
    for target in candidates:
        if target == position or math.hypot(target[0] - exact[0], target[1] - exact[1]) > 1.0:
            continue
        moved = (float(target[0] - position[0]), float(target[1] - position[1]))
        broken = _violations(target, centre, settings, hardware)
        broken += _step_violations(moved, settings, remaining)
        if not broken:
            if target != nearest:
                notes.append(f"rounded to {target} instead of {nearest} to stay inside the limits")
            detail = (f"move {position} -> {target}, step {_fmt(moved)} for estimate {_fmt((ex, ey))} "
                      f"at gain {gain:g}")
            if notes:
                detail += "; " + "; ".join(notes)
            return Decision("move", reason, detail, target, moved, requested, tuple(limits_hit))
        if first_broken is None:
            first_broken = broken
    return _refusal(first_broken or ["rate_limit"], limits_hit, nearest, centre, centre_name, settings,
                    hardware, requested, "after rounding to whole motor units, ")


def _refusal(
    broken: list[str],
    limits_hit: list[str],
    target: tuple[float, float],
    centre: tuple[int, int],
    centre_name: str,
    settings: SafetySettings,
    hardware: Limits | None,
    requested: tuple[float, float],
    prefix: str,
) -> Decision:
    """The refusal (or hold) for a target that breaks `broken`; the excursion outranks the rest."""
    hit = tuple(limits_hit + [b for b in broken if b not in limits_hit])
    distance = math.hypot(target[0] - centre[0], target[1] - centre[1])
    where = f"target {_fmt(target)} is {distance:.3f} from the {centre_name} {centre}"
    if "max_excursion" in broken:
        return Decision("hold", "refused_excursion",
                        f"{prefix}{where}, past max_excursion {settings.max_excursion_units:g}: "
                        "drift that large needs a person", None, _ZERO, requested, hit)
    if "window" in broken:
        offset = (target[0] - centre[0], target[1] - centre[1])
        return Decision("refuse", "refused_window",
                        f"{prefix}{where}, offset {_fmt(offset)} outside the window of "
                        f"±{settings.window_units:g} per axis", None, _ZERO, requested, hit)
    if "hardware" in broken and hardware is not None:
        return Decision("refuse", "refused_hardware_limits",
                        f"{prefix}target {_fmt(target)} is outside the hardware limits "
                        f"x {hardware.aperture_x}, y {hardware.aperture_y}", None, _ZERO, requested, hit)
    if "max_step" in broken:
        return Decision("refuse", "refused_max_step",
                        f"{prefix}target {_fmt(target)} would exceed max_step {settings.max_step_units:g}",
                        None, _ZERO, requested, hit)
    return Decision("refuse", "refused_rate_limit",
                    f"{prefix}target {_fmt(target)} would exceed the rate limit left this hour",
                    None, _ZERO, requested, hit)


def check_aligned(delta: tuple[float, float] | None, deadband: float) -> str | None:
    """The two-frame check's gate: a sentence when the check saw the column inside the deadband
    (the cycle ends there, "checked"); None when it saw a misalignment or could not tell (the
    full wobble follows and decides). The check itself never moves anything."""
    if delta is None or not finite(*delta):
        return None
    seen = math.hypot(*delta)
    if seen >= deadband:
        return None
    return f"two-frame check: |m| about {seen:.1f} units, inside the deadband ({deadband:g})"


class RateLedger:
    """The path length moved in the trailing window (an hour), for the rate limit.

    Times are whatever clock the caller uses (wall time, so the ledger means the same after a
    restart). An entry stamped after `t_now` (the clock stepped back) still counts: the safe
    reading of a clock that went backwards is that the move was recent."""

    def __init__(self, window_s: float = 3600.0) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be positive and finite, got {window_s!r}")
        self.window_s = float(window_s)
        self._entries: list[tuple[float, float]] = []

    def add(self, t: float, length: float) -> None:
        """Record a move of `length` units finished at `t`; older entries fall out of the window."""
        if not finite(t, length) or length < 0:
            raise ValueError(f"a move needs a finite time and a finite length >= 0, got t={t!r}, {length!r}")
        cutoff = t - self.window_s
        self._entries = [e for e in self._entries if e[0] > cutoff]
        self._entries.append((float(t), float(length)))

    def moved_since(self, t_now: float) -> float:
        """The path length of the moves in the trailing window ending at `t_now`."""
        if not finite(t_now):
            raise ValueError(f"t_now must be finite, got {t_now!r}")
        cutoff = t_now - self.window_s
        return math.fsum(length for t, length in self._entries if t > cutoff)

    def to_json(self) -> list[list[float]]:
        """The entries as [[t, length], ...] for the state directory."""
        return [[t, length] for t, length in self._entries]

    @classmethod
    def from_json(cls, data: object, window_s: float = 3600.0) -> RateLedger:
        """A ledger from `to_json`'s output; ValueError on anything else (never a silently empty one)."""
        if not isinstance(data, list):
            raise ValueError(f"rate ledger: expected a list, got {type(data).__name__}")
        ledger = cls(window_s)
        for item in data:
            if (not isinstance(item, list | tuple) or len(item) != 2
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in item)):
                raise ValueError(f"rate ledger: expected [time, length], got {item!r}")
            t, length = item
            if not finite(t, length) or length < 0:
                raise ValueError(f"rate ledger: bad entry {item!r}")
            ledger._entries.append((float(t), float(length)))
        ledger._entries.sort()
        return ledger
