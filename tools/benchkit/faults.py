"""The fault campaign's machinery: seeded scenario plans, a column whose microscope is watched, the
checks of every safety.md invariant after each cycle, and a real `temalign run` process killed with
SIGKILL and restarted.

A scenario is a pure function of its seed (`plan_scenario`), so any violation replays alone with
`tools/fault_campaign.py --replay SEED`. The checks judge what was commanded and what the twin holds
(the truth), not what the daemon says it did."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from temalign.clock import ScaledClock, SteppedClock
from temalign.decide.column import is_paused
from temalign.estimate.calibration import Calibration, nominal_calibration, save_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelEstimator
from temalign.microscope import Position
from temalign.optics import WOBBLE_STEPS as STEPS
from temalign.protocol.tcp_microscope import TcpMicroscope
from temalign.record.journal import Journal, read_journal
from temalign.record.result import CycleResult
from temalign.record.state import StateStore, StateWriteError
from temalign.service.cycle import Parts, run_cycle
from temalign.wobble.c1_memory import C1Memory, same_c1
from temalign.wobble.sources import CameraSource
from temalign_twin.faults import FAULTABLE_METHODS, KINDS
from temalign_twin.model import Twin
from temalign_twin.service import TwinServer
from temalign_twin.settings import NO_DRIFT, TwinSettings

from .disk import StateDisk, unavailable
from .harness import EXPOSURE_S, REPO, SHIPPED_MODEL, settings_for, sim_column
from .net import free_port

MAX_OFFSET = 240.0
CALL_TIMEOUT_S = 0.5
ACQUIRE_TIMEOUT_S = 1.0
FAILURE_REASONS = frozenset({"rolled_back", "motor_fault", "lens_did_not_take", "move_failed",
                             "rollback_failed"})
"""Cycle reasons that count toward hold (safety.md, "Failures")."""
HOLD_REASONS = frozenset({"c1_restore_failed", "refused_excursion", "state_unwritable"})
"""Reasons that put the daemon in hold at once, without a run of failures."""
INVARIANTS = {
    "envelope": "every commanded position inside hardware limits, window and excursion around the "
                "reference (or session start); each correction <= max_step per axis; the trailing "
                "hour's path (as the motor moved) plus the step <= rate limit",
    "c1": "after each cycle the lens holds C1's value before it, or the cycle ended in hold with the "
          "C1 record on disk; at the end (faults cleared, the record recovered as the daemon does) C1 "
          "is back at the scenario's start value and no record is left",
    "doubtful": "a correction only on a trusted measurement (clean stack, finite estimate at or above "
                "the deadband) and never on a wobble with a blanked frame; never in dry-run, paused or "
                "hold",
    "verify": "a kept correction is where it was commanded (truth); a rollback goes to the cycle's "
              "start position; failures counted, hold after N in a row, no hold without a cause, "
              "nothing moves in hold",
    "journal": "read_journal reads it all, seqs increase by one, no pending intent after a cycle, "
               "every command preceded by its intent with the same target",
    "alive": "run_cycle never raises; a final cycle with the faults cleared runs too",
    "interlock": "after a pause or the busy file comes on mid-cycle (unless a forced cycle meets a "
                 "pause): no frame and no move, and C1 only set back to its value before the cycle",
    "disk": "a full or read-only state dir at any step: the cycle ends (in hold, state_unwritable, "
            "when a write failed); once the disk is mended and a person clears the hold, state.json "
            "on disk says where the daemon left the aperture and C1 (its own move is its own), the "
            "journal reads whole with every command after its intent and no intent pending",
}
MIDCYCLE_OPS = ("start", "set_c1", "acquire", "move")
"""Where a mid-cycle event strikes: before the cycle, or as the count-th call of a kind goes out."""
DISK_SHARE, INTERLOCK_SHARE, RATE_SHARE = 0.25, 0.12, 0.1


# ---- plans ------------------------------------------------------------------------------------------


def _count(rng: np.random.Generator, choices: list[int | None], p: list[float]) -> int | None:
    value = choices[int(rng.choice(len(choices), p=p))]
    return None if value is None else int(value)


def _fault(rng: np.random.Generator, kind: str) -> dict[str, Any]:
    """One fault request with random parameters; costly ones (each use a timeout) kept countable."""
    params: dict[str, Any] = {}
    if kind in ("drop", "slow", "silence", "malformed", "error"):
        if rng.random() < 0.6:
            size = int(rng.integers(1, 3))
            params["methods"] = sorted(str(m) for m in rng.choice(FAULTABLE_METHODS, size, replace=False))
        params["count"] = _count(rng, [1, 2, 3, 5, None], [0.35, 0.25, 0.15, 0.15, 0.10])
        if kind == "slow":
            params["seconds"] = round(float(rng.uniform(0.01, 0.1 if params["count"] is None else 0.8)), 3)
        if kind == "error":
            params["code"] = int(rng.choice([1001, 1002, 1003, -32603, -32602, 4242]))
    elif kind == "blank":
        params["count"] = _count(rng, [1, 2, 3, 7, 14, None], [0.25, 0.15, 0.15, 0.15, 0.1, 0.2])
    elif kind == "stuck":
        params["count"] = _count(rng, [1, 2, None], [0.5, 0.25, 0.25])
    elif kind == "overshoot":
        params["count"] = _count(rng, [1, 2, None], [0.5, 0.25, 0.25])
        if rng.random() < 0.5:
            params["units"] = round(float(rng.uniform(1, 40)), 1)
        else:
            params["units"] = [round(float(v), 1) for v in rng.uniform(-40, 40, 2)]
    elif kind == "lens_ignore":
        params["count"] = _count(rng, [1, 2, 3, 6, None], [0.3, 0.2, 0.15, 0.15, 0.2])
    elif kind == "jump":
        params["units"] = [round(float(v), 1) for v in rng.uniform(-150, 150, 2)]
    return {k: v for k, v in params.items() if v is not None}


def plan_scenario(seed: int) -> dict[str, Any]:
    """Everything a scenario does, drawn from `seed` alone (JSON, so a report can show it)."""
    rng = np.random.default_rng(seed)
    radius, angle = MAX_OFFSET * math.sqrt(float(rng.random())), float(rng.uniform(0, 2 * math.pi))
    cycles = int(rng.integers(2, 5))
    safety: dict[str, Any] = {}
    if rng.random() < 0.5:
        window = float(rng.choice([400.0, 300.0, 200.0]))
        safety = {"window_units": window,
                  "max_excursion_units": round(min(window * math.sqrt(2), window * rng.uniform(0.6, 1.3)), 1),
                  "max_step_units": float(rng.choice([250.0, 150.0, 80.0])),
                  "on_limit": str(rng.choice(["scale", "refuse"])),
                  "rate_limit_units_per_hour": float(rng.choice([1000.0, 400.0, 150.0])),
                  "hold_after_failures": int(rng.integers(1, 4))}
    n_faults = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    faults = []
    for i in range(n_faults):
        kind = str(rng.choice(KINDS))
        at = 0 if (i == 0 and rng.random() < 0.6) else int(rng.integers(0, cycles))
        faults.append({"before_cycle": at, "kind": kind, "params": _fault(rng, kind)})
    operator = []
    if rng.random() < 0.12:
        operator.append({"before_cycle": int(rng.integers(0, cycles)),
                         "action": str(rng.choice(["pause", "dry-run"]))})
    advance = [round(float(rng.uniform(30, 900)), 1) for _ in range(cycles)]
    looks = [str(rng.choice(["full", "check"])) for _ in range(cycles)]
    plan = {"seed": seed, "twin_seed": int(seed % (2**31)),
            "offset": [round(radius * math.cos(angle), 1), round(radius * math.sin(angle), 1)],
            "cycles": cycles, "advance_s": advance, "looks": looks,
            "safety": safety, "faults": faults, "operator": operator, "asked": "schedule", "midcycle": []}
    _plan_midcycle(rng, plan)  # drawn after the rest, so the rest of a plan is as before
    return plan


def _strike(rng: np.random.Generator, cycles: int) -> dict[str, Any]:
    op = str(rng.choice(MIDCYCLE_OPS, p=[0.1, 0.35, 0.35, 0.2]))
    count = 0 if op == "start" else int(rng.integers(1, 3 if op == "move" else 11))
    return {"cycle": int(rng.integers(0, cycles)), "op": op, "count": count}


def _plan_midcycle(rng: np.random.Generator, plan: dict[str, Any]) -> None:
    """The events that strike inside a cycle: a disk that fills or turns read-only at any step, a
    pause or the busy file during a cycle (the schedule's, `once` or `once --force`), and a run of
    corrections at a tight rate limit, each undone by a jump of the axis during its verification
    (a rollback at the rate limit)."""
    cycles = plan["cycles"]
    if rng.random() < DISK_SHARE:
        plan["midcycle"].append({**_strike(rng, cycles), "action": str(rng.choice(["full", "read-only"])),
                                 "lasts": int(rng.choice([0, 0, 1]))})
    if rng.random() < INTERLOCK_SHARE:
        plan["midcycle"].append({**_strike(rng, cycles), "action": str(rng.choice(["pause", "busy"]))})
        plan["asked"] = str(rng.choice(["schedule", "once", "force"]))
    if rng.random() < RATE_SHARE:
        plan["safety"] = {"window_units": 400.0, "max_excursion_units": 560.0, "max_step_units": 250.0,
                          "on_limit": "scale", "hold_after_failures": 4,
                          "rate_limit_units_per_hour": float(rng.choice([80.0, 150.0, 300.0]))}
        plan["advance_s"] = [round(float(rng.uniform(20, 200)), 1) for _ in range(cycles)]
        plan["looks"] = ["full"] * cycles
        for k in range(cycles):
            plan["midcycle"].append({"cycle": k, "op": "move", "count": 1, "action": "jump",
                                     "units": [round(float(v), 1) for v in rng.uniform(-150, 150, 2)]})


def scenario_seed(campaign_seed: int, index: int) -> int:
    """Scenario `index` of the campaign `campaign_seed`: readable, and replays alone."""
    return campaign_seed * 1_000_000 + index


# ---- the watched column -------------------------------------------------------------------------------


@dataclass
class Trigger:
    """One mid-cycle event of a plan: `fire` runs as the `count`-th call of `op` goes out."""

    op: str
    count: int
    fire: Any
    action: str
    seen: int = 0
    fired_at: int | None = None
    """Index in Watched.events of the first event after the firing (None: not fired)."""


@dataclass
class Watched:
    """The microscope the daemon's parts use: forwards every call, and records each command with the
    truth around it (where the aperture really was, whether a blank fault hit a frame)."""

    inner: TcpMicroscope
    twin: Twin
    parts_ref: list[Parts] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _before(self, op: str) -> None:
        """A mid-cycle event whose moment has come (the count-th call of its kind this cycle) fires
        just before the call goes out; the events after it are the cycle's answer to it."""
        for trigger in self.triggers:
            if trigger.op == op and trigger.fired_at is None:
                trigger.seen += 1
                if trigger.seen == trigger.count:
                    trigger.fired_at = len(self.events)
                    trigger.fire()

    @property
    def limits(self) -> Any:
        return self.inner.limits

    def aperture(self) -> Position:
        return self.inner.aperture()

    def c1(self) -> float:
        return self.inner.c1()

    def _blank_left(self) -> tuple[bool, float]:
        found = [f for f in self.twin.truth()["faults"] if f["kind"] == "blank"]
        if any(f["remaining"] is None for f in found):
            return bool(found), math.inf
        return bool(found), float(sum(f["remaining"] for f in found))

    def acquire(self, exposure_s: float | None = None) -> np.ndarray:
        self._before("acquire")
        active, left = self._blank_left()
        event: dict[str, Any] = {"op": "acquire", "blank": False}
        self.events.append(event)
        frame = self.inner.acquire(exposure_s)
        if active:
            event["blank"] = left == math.inf or self._blank_left()[1] < left
        return frame

    def set_c1(self, value: float) -> float:
        self._before("set_c1")
        self.events.append({"op": "set_c1", "value": float(value)})
        return self.inner.set_c1(value)

    def move_aperture(self, target: Position) -> Position:
        self._before("move")
        parts = self.parts_ref[0]
        state = parts.state.load(parts.settings.schedule.mode)
        origin = tuple(self.twin.truth()["aperture"])
        event: dict[str, Any] = {
            "op": "move", "target": (int(target.x), int(target.y)), "origin_truth": origin,
            "reference": state.reference, "session_start": parts.session_start, "time": parts.clock.now(),
            "journal_seq": parts.journal.last_seq, "hold": state.hold, "mode": state.mode,
            "paused": is_paused(state.paused_until, parts.wall()), "error": None}
        self.events.append(event)
        try:
            return self.inner.move_aperture(target)
        except Exception as error:
            event["error"] = f"{type(error).__name__}: {error}"
            raise
        finally:
            event["after_truth"] = tuple(self.twin.truth()["aperture"])


@dataclass
class Column:
    """One scenario's twin (stepped clock, real TCP), its watched microscope and the daemon parts."""

    twin: Twin
    clock: SteppedClock
    watched: Watched
    parts: Parts
    state_dir: Path
    disk: StateDisk | None = None
    busy_file: Path | None = None


@dataclass(frozen=True)
class TwinChoice:
    """The twin a campaign's scenarios run on: settings overrides (--optics, --column, --scene)
    and the calibration the daemon has there (measured once per campaign on a traced column,
    None where that failed: the daemon then runs uncalibrated, as it would)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = field(default_factory=nominal_calibration)
    calibration_note: str = "nominal"

    @staticmethod
    def of(overrides: dict[str, Any]) -> TwinChoice:
        """The choice for `overrides`, its calibration measured by the daemon when traced."""
        if TwinSettings().updated(overrides).optics.model == "first-order":
            return TwinChoice(overrides)
        with sim_column(0, twin_overrides=overrides, measure_calibration=True) as col:
            return TwinChoice(overrides, col.parts.estimator.calibration, col.notes["calibration"])


@contextlib.contextmanager
def fault_column(plan: dict[str, Any], model: ModelEstimator, twin_choice: TwinChoice | None = None
                 ) -> Iterator[Column]:
    """A fresh column for `plan`: like harness.sim_column, but with short call deadlines (a silent
    reply costs half a second, not ten) and the model loaded once for the whole campaign."""
    choice = twin_choice or TwinChoice()
    clock = SteppedClock()
    twin = Twin(TwinSettings().updated(choice.overrides), clock, seed=plan["twin_seed"])
    server = TwinServer(twin, host="127.0.0.1", port=0).start()
    actions = {m["action"] for m in plan["midcycle"]}
    disk = StateDisk() if actions & {"full", "read-only"} else None
    scratch = Path(tempfile.mkdtemp(prefix="ta-faults-"))
    state_dir = disk.state_dir if disk is not None else scratch / "state"
    state_dir.mkdir(mode=0o750, exist_ok=True)
    busy_file = scratch / "exposing"
    inner = TcpMicroscope(server.address[:2], client_name="temalign-faults", call_timeout_s=CALL_TIMEOUT_S,
                          connect_timeout_s=CALL_TIMEOUT_S, acquire_timeout_s=ACQUIRE_TIMEOUT_S)
    journal: Journal | None = None
    try:
        overrides = {"microscope": {"call_timeout_s": CALL_TIMEOUT_S, "connect_timeout_s": CALL_TIMEOUT_S,
                                    "acquire_timeout_s": ACQUIRE_TIMEOUT_S},
                     "safety": {**plan["safety"], "busy_file": str(busy_file)}}
        settings = settings_for(server.address[:2], state_dir, overrides)
        estimator = CombinedEstimator(model, choice.calibration, settings.estimator, settings.quality)
        journal = Journal(state_dir, clock=clock)
        watched = Watched(inner, twin)
        parts = Parts(microscope=watched, source=CameraSource(watched, EXPOSURE_S, clock),  # type: ignore[arg-type]
                      estimator=estimator, settings=settings, clock=clock, memory=C1Memory(state_dir),
                      journal=journal, state=StateStore(state_dir), session_start=None)
        watched.parts_ref.append(parts)
        yield Column(twin, clock, watched, parts, state_dir, disk, busy_file)
    finally:
        if disk is not None and disk.broken:
            disk.mend()
        if journal is not None:
            journal.close()
        with contextlib.suppress(Exception):
            inner.close()
        with contextlib.suppress(Exception):
            server.close()
        if disk is not None:
            disk.close()
        shutil.rmtree(scratch, ignore_errors=True)


# ---- the checks ---------------------------------------------------------------------------------------


@dataclass
class Judge:
    """What one scenario's checks remember from cycle to cycle."""

    col: Column
    seed: int
    violations: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    moved: list[tuple[float, float]] = field(default_factory=list)
    """(twin time, path length the motor really moved) of every command so far."""
    checks: int = 0

    def bad(self, invariant: str, cycle: int, what: str) -> None:
        self.violations.append({"seed": self.seed, "invariant": invariant, "cycle": cycle, "what": what})

    def note(self, kind: str, cycle: int, what: str) -> None:
        self.findings.append({"seed": self.seed, "kind": kind, "cycle": cycle, "what": what})

    def cycle(self, k: int, result: CycleResult | None, pre: dict[str, Any], events: list[dict[str, Any]],
              entries: list[dict[str, Any]] | None) -> None:
        """Every invariant after cycle `k` (`entries`: the journal lines it wrote)."""
        self.checks += 1
        s = self.col.parts.settings.safety
        moves = [e for e in events if e["op"] == "move"]
        truth = self.col.twin.truth()
        if result is None:
            return
        self._envelope(k, result, moves, s)
        self._c1(k, result, pre, truth)
        self._doubtful(k, result, pre, events, s)
        self._verify(k, result, pre, moves, truth, s)
        if entries is not None:  # None: the disk is still broken, checked once it is mended
            self._journal(k, moves, entries)

    def _envelope(self, k: int, result: CycleResult, moves: list[dict[str, Any]], s: Any) -> None:
        limits = self.col.twin.limits()["aperture"]
        for i, e in enumerate(moves):
            t = e["target"]
            if not (limits["x"][0] <= t[0] <= limits["x"][1] and limits["y"][0] <= t[1] <= limits["y"][1]):
                self.bad("envelope", k, f"command {t} outside the hardware limits {limits}")
            centre = e["reference"] or e["session_start"]
            if centre is None:
                self.bad("envelope", k, f"command {t} with neither a reference nor a session start")
                continue
            if max(abs(t[0] - centre[0]), abs(t[1] - centre[1])) > s.window_units + 1e-9:
                self.bad("envelope", k, f"command {t} outside the window {s.window_units} around {centre}")
            if math.dist(t, centre) > s.max_excursion_units + 1e-9:
                self.bad("envelope", k, f"command {t} is {math.dist(t, centre):.1f} from {centre}, past "
                         f"max_excursion {s.max_excursion_units}")
            if i == 0:
                start = result.position_before
                if start is None or max(abs(t[0] - start[0]), abs(t[1] - start[1])) > s.max_step_units + 1e-9:
                    self.bad("envelope", k, f"correction {start} -> {t} exceeds max_step {s.max_step_units}")
            elif result.position_before is None or t != tuple(result.position_before):
                self.bad("verify", k, f"rollback to {t}, not to the cycle's start {result.position_before}")
            # Rollbacks count against the hour like corrections; the move back after a motor fault
            # (the return to a known position, made regardless: decide.envelope.step_budget) does not.
            if s.rate_limit_units_per_hour and not (i > 0 and result.reason == "motor_fault"):
                past = sum(d for when, d in self.moved if e["time"] - when < 3600.0)
                step = math.dist(e["origin_truth"], t)
                slack = 1.0 * (len(self.moved) + 1)
                if past + step > s.rate_limit_units_per_hour + slack:
                    what = "correction" if i == 0 else "rollback"
                    self.bad("envelope", k, f"{what} of {step:.1f} after {past:.1f} units moved in the "
                             f"last hour (rollbacks included) exceeds the rate limit "
                             f"{s.rate_limit_units_per_hour}")
            self.moved.append((e["time"], math.dist(e["origin_truth"], e["after_truth"])))

    def _c1(self, k: int, result: CycleResult, pre: dict[str, Any], truth: dict[str, Any]) -> None:
        now = float(truth["c1_setpoint"])
        held = self.col.parts.state.load("live").hold
        record = self.col.parts.memory.exists() and not self._stale_record(now)
        if record and not (held is not None and "C1" in held):
            self.bad("c1", k, f"the C1 record {self.col.parts.memory.path} is left and the daemon is not in "
                     f"hold for it (hold {held!r}; outcome {result.outcome}/{result.reason})")
        if not same_c1(now, pre["c1"]) and not (record and result.reason == "c1_restore_failed"):
            self.bad("c1", k, f"C1 holds {now:.8g} after the cycle, {pre['c1']:.8g} before; outcome "
                     f"{result.outcome}/{result.reason}, record on disk: {record}")

    def _stale_record(self, c1_now: float) -> bool:
        """A record whose C1 is back (a read-only directory refused its removal): nothing is off;
        the next wobble replaces it, the next start clears it."""
        try:
            found = self.col.parts.memory.load()
        except Exception:
            return False
        return found is not None and same_c1(found.c1_before, c1_now)

    def _doubtful(self, k: int, result: CycleResult, pre: dict[str, Any], events: list[dict[str, Any]],
                  s: Any) -> None:
        first = next((i for i, e in enumerate(events) if e["op"] == "move"), None)
        if result.outcome == "corrected" and first is None:
            self.bad("doubtful", k, "outcome corrected without a move command")
        if first is None:
            return
        st = pre["state"]
        if st.hold is not None or st.mode != "live" or (pre["paused"] and pre["asked"] != "force"):
            self.bad("doubtful", k, f"a move while hold={st.hold!r}, mode={st.mode}, paused={pre['paused']}")
        grabs = [e for e in events[:first] if e["op"] == "acquire"]
        blanks = sum(1 for e in grabs[-STEPS:] if e["blank"])  # the wobble the move was decided on
        if blanks:
            self.bad("doubtful", k, f"a correction decided on a wobble with {blanks} blanked frame(s)")
        b = result.before
        if b is None or not b.trusted or not b.quality.ok:
            self.bad("doubtful", k, f"a correction on an untrusted measurement: "
                     f"{None if b is None else (b.trusted, b.reason, b.quality.reasons)}")
            return
        if b.delta is None or not all(map(math.isfinite, b.delta)):
            self.bad("doubtful", k, f"a correction on a non-finite estimate {b.delta}")
        elif math.hypot(*b.delta) < s.deadband_units:
            self.bad("doubtful", k, f"a correction for |m| {math.hypot(*b.delta):.2f} below the deadband")
        if result.decision is None or result.decision.action != "move":
            self.bad("doubtful", k, f"a move with decision {result.decision}")

    def _verify(self, k: int, result: CycleResult, pre: dict[str, Any], moves: list[dict[str, Any]],
                truth: dict[str, Any], s: Any) -> None:
        state = self.col.parts.state.load("live")
        if result.outcome == "corrected":
            self.failures = 0
            target = moves[0]["target"]
            where = truth["aperture"]
            if max(abs(where[0] - target[0]), abs(where[1] - target[1])) > s.motor_tolerance_units + 1.0:
                self.bad("verify", k, f"correction kept with the aperture at {where}, commanded {target}")
            b, a = result.before, result.after
            if a is not None and b is not None and a.misalignment is not None and b.misalignment is not None \
                    and a.misalignment > b.misalignment + s.rollback_margin_units:
                self.bad("verify", k, f"kept a correction that measured worse ({b.misalignment:.1f} -> "
                         f"{a.misalignment:.1f})")
        elif result.reason in FAILURE_REASONS:
            self.failures += 1
        if result.outcome == "rolled_back" or result.reason == "rolled_back":
            if len(moves) != 2:
                self.bad("verify", k, f"rolled back with {len(moves)} commands")
            else:
                back, where = moves[1]["target"], truth["aperture"]
                if math.dist(back, where) > s.motor_tolerance_units * math.sqrt(2) + 1.0:
                    self.note("rollback-not-reached", k, f"rollback to {back} reported as {result.detail!r}; "
                              f"the aperture is at {where} and the cycle counted no motor fault for it")
        if self.failures >= s.hold_after_failures and state.hold is None:
            self.bad("verify", k, f"{self.failures} failures in a row (limit {s.hold_after_failures}) "
                     f"and no hold (outcome {result.outcome}/{result.reason})")
        disk = state.hold is not None and "state directory could not be written" in state.hold
        if state.hold is not None and pre["state"].hold is None and not disk \
                and self.failures < s.hold_after_failures and result.reason not in HOLD_REASONS:
            self.bad("verify", k, f"hold ({state.hold}) after {self.failures} failures and reason "
                     f"{result.reason}")
        if result.outcome == "hold" and state.hold is None:
            self.bad("verify", k, "outcome hold but the state has no hold")
        if pre["state"].hold is not None and moves:
            self.bad("verify", k, "a move in hold")

    def _journal(self, k: int, moves: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
        pending = self.col.parts.journal.pending()
        if pending:
            self.bad("journal", k, f"pending intents after the cycle returned: {pending}")
        intents = [e for e in entries if e.get("phase") == "intent" and e["kind"] in ("move", "rollback")]
        if len(intents) != len(moves):
            self.bad("journal", k, f"{len(moves)} commands but {len(intents)} move intents journaled")
        for intent, move in zip(intents, moves, strict=False):
            if tuple(intent["target"]) != move["target"] or intent["seq"] > move["journal_seq"]:
                self.bad("journal", k, f"command {move['target']} not preceded by its intent {intent}")
        if not entries or entries[-1]["kind"] != "cycle":
            self.bad("journal", k, "the cycle's last journal entry is not its cycle record")
        for e in entries:
            if e["kind"].startswith("hands."):
                self.note("hands-on-false-alarm", k, f"{e['kind']}: {e}")

    def interlock(self, k: int, trigger: Trigger, asked: str, pre_c1: float, events: list[dict[str, Any]]
                  ) -> None:
        """After a pause or the busy file came on: no frame, no move, C1 only set back."""
        if trigger.fired_at is None or (trigger.action == "pause" and asked == "force"):
            return
        after = events[trigger.fired_at + 1:] if trigger.op != "start" else events
        for e in after:
            if e["op"] in ("acquire", "move") or (e["op"] == "set_c1" and not same_c1(e["value"], pre_c1)):
                self.bad("interlock", k, f"{e['op']} {e.get('value', e.get('target', ''))} after the "
                         f"{trigger.action} came on (at the {trigger.count}-th {trigger.op}, asked {asked})")
                return

    def disk_mended(self, k: int, moved: bool) -> None:
        """The disk is back and a person cleared the hold: the daemon's record is its own."""
        col = self.col
        try:
            fresh = StateStore(col.state_dir).load("live")
            entries = read_journal(col.state_dir)
        except Exception as error:
            self.bad("disk", k, f"the state dir does not read after the disk was mended: {error}")
            return
        truth = col.twin.truth()
        where = [round(v) for v in truth["aperture"]]
        tol = col.parts.settings.safety.motor_tolerance_units * math.sqrt(2) + 1.0
        if fresh.last_position is None and moved:
            self.bad("disk", k, "the daemon moved the aperture but state.json has no last position")
        elif fresh.last_position is not None and math.dist(fresh.last_position, where) > tol:
            self.bad("disk", k, f"state.json says the daemon left the aperture at {fresh.last_position}, it "
                     f"is at {where}: the next cycle would blame a person")
        if fresh.last_c1 is not None and not same_c1(fresh.last_c1, float(truth["c1_setpoint"])):
            self.bad("disk", k, f"state.json says C1 was left at {fresh.last_c1}, it is "
                     f"{truth['c1_setpoint']}")
        if col.parts.journal.backlog:
            self.bad("disk", k, f"{col.parts.journal.backlog} journal entries still unwritten after the mend")
        if _pending(entries):
            self.bad("disk", k, f"intents pending after the disk was mended: {sorted(_pending(entries))}")

    def journal_whole(self) -> None:
        try:
            entries = read_journal(self.col.state_dir)
        except Exception as error:
            self.bad("journal", -1, f"read_journal failed: {type(error).__name__}: {error}")
            return
        seqs = [e["seq"] for e in entries]
        if seqs != list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False:
            self.bad("journal", -1, "journal seqs do not increase by one")


def _new_entries(col: Column, after_seq: int) -> list[dict[str, Any]]:
    return [e for e in read_journal(col.state_dir) if e["seq"] > after_seq]


def run_scenario(plan: dict[str, Any], model: ModelEstimator, twin_choice: TwinChoice | None = None
                 ) -> dict[str, Any]:
    """One scenario: offset, faults (some mid-session, some mid-cycle), cycles with clock advances,
    every check; on the default twin unless `twin_choice` says another."""
    t0 = time.perf_counter()
    outcomes: list[str] = []
    not_run = unavailable() if any(m["action"] in DISK_ACTIONS for m in plan["midcycle"]) else None
    if not_run is not None:  # the plan's disk events cannot run here: said in the result, not hidden
        plan = {**plan, "midcycle": [m for m in plan["midcycle"] if m["action"] not in DISK_ACTIONS]}
    fired: Counter[str] = Counter()
    with fault_column(plan, model, twin_choice) as col:
        judge = Judge(col, plan["seed"])
        col.twin.move_aperture(*[round(a + d) for a, d in zip(col.twin.truth()["aligned"], plan["offset"],
                                                              strict=True)])
        c1_start = float(col.twin.truth()["c1_setpoint"])
        parts = col.parts
        mend_after: int | None = None
        moved_while_broken = False
        for k in range(plan["cycles"]):
            for f in plan["faults"]:
                if f["before_cycle"] == k:
                    col.twin.inject(f["kind"], **f["params"])
            for op in plan["operator"]:
                if op["before_cycle"] == k:
                    with _told_the_disk_is_full():
                        if op["action"] == "pause":
                            parts.state.update(paused_until=math.inf, pause_reason="fault campaign: a person")
                        else:
                            parts.state.update(mode="dry-run")
            state = parts.state.load(parts.settings.schedule.mode)
            pre = {"c1": float(col.twin.truth()["c1_setpoint"]), "state": state, "asked": plan["asked"],
                   "paused": is_paused(state.paused_until, parts.wall())}
            col.watched.events = []
            col.watched.triggers = [_trigger(col, m) for m in plan["midcycle"] if m["cycle"] == k]
            for trigger in col.watched.triggers:
                if trigger.op == "start":
                    trigger.fired_at = -1
                    trigger.fire()
            seq = parts.journal.last_seq
            result = None
            try:
                result = run_cycle(parts, look=plan["looks"][k], asked=plan["asked"])
                outcomes.append(f"{result.outcome}/{result.reason}")
            except Exception as error:
                outcomes.append("raised")
                judge.bad("alive", k, f"run_cycle raised {type(error).__name__}: {error}")
            fired.update(t.action for t in col.watched.triggers if t.fired_at is not None)
            broke = [t for t in col.watched.triggers if t.action in DISK_ACTIONS and t.fired_at is not None]
            if broke:
                mend_after = k + next(m["lasts"] for m in plan["midcycle"]
                                      if m["cycle"] == k and m["action"] in DISK_ACTIONS)
            if col.disk is not None and col.disk.broken:
                moved_while_broken |= any(e["op"] == "move" for e in col.watched.events)
                if parts.state.unsaved and parts.state.load("live").hold is None:
                    judge.bad("disk", k, "a state write failed and the daemon is not in hold")
            broken = col.disk is not None and col.disk.broken is not None
            if pre["paused"] and plan["asked"] != "force" \
                    and any(e["op"] in ("set_c1", "move") for e in col.watched.events):
                judge.bad("doubtful", k, "the lens or the aperture was commanded while paused")
            entries = None if broken else _cycle_entries(col, seq, judge, k)
            judge.cycle(k, result, pre, col.watched.events, entries)
            for trigger in col.watched.triggers:
                if trigger.action in ("pause", "busy"):
                    judge.interlock(k, trigger, plan["asked"], pre["c1"], col.watched.events)
            if broken and mend_after == k:
                assert col.disk is not None
                col.disk.mend()
                _person_clears_the_hold(parts, judge)
                moves = [e for e in col.watched.events if e["op"] == "move"]
                judge._journal(k, moves, _cycle_entries(col, seq, judge, k))
                judge.disk_mended(k, moved_while_broken)
                moved_while_broken = False
            _after_the_exposure(col)
            col.watched.triggers = []  # an event that did not strike in its cycle strikes no other
            col.clock.advance(plan["advance_s"][k])
        if col.disk is not None and col.disk.broken is not None:
            col.disk.mend()
            _person_clears_the_hold(parts, judge)
            judge.disk_mended(plan["cycles"], moved_while_broken)
        final = _finish(col, judge, c1_start)
        judge.journal_whole()
    kinds = sorted({f["kind"] for f in plan["faults"]}
                   | {f"midcycle:{m['action']}" for m in plan["midcycle"]})
    return {"seed": plan["seed"], "kinds": kinds, "outcomes": outcomes, "final": final,
            "violations": judge.violations, "findings": judge.findings, "checks": judge.checks,
            "midcycle_fired": dict(fired), "not_run": not_run,
            "seconds": round(time.perf_counter() - t0, 3)}


DISK_ACTIONS = ("full", "read-only")


def _cycle_entries(col: Column, seq: int, judge: Judge, k: int) -> list[dict[str, Any]]:
    """The journal entries of the cycle that started after `seq`, up to its cycle record."""
    try:
        entries = _new_entries(col, seq)
    except Exception as error:
        judge.bad("journal", k, f"read_journal failed: {type(error).__name__}: {error}")
        return []
    last = max((i for i, e in enumerate(entries) if e["kind"] == "cycle"), default=len(entries) - 1)
    return entries[:last + 1]


def _trigger(col: Column, event: dict[str, Any]) -> Trigger:
    """The plan's mid-cycle `event` as a Trigger on the column."""
    action = event["action"]

    def fire() -> None:
        if action in DISK_ACTIONS:
            assert col.disk is not None
            if col.disk.broken is None:
                col.disk.break_(action)
        elif action == "pause":  # as the control thread does it, through the same state
            with _told_the_disk_is_full():
                col.parts.state.update(paused_until=col.parts.wall() + 600.0, pause_reason="an exposure")
        elif action == "busy":
            assert col.busy_file is not None
            col.busy_file.write_text("")
        elif action == "jump":
            col.twin.inject("jump", units=event["units"])

    return Trigger(event["op"], event["count"], fire, action)


def _told_the_disk_is_full() -> contextlib.AbstractContextManager[None]:
    """A person's change while the disk is broken: the verb answers with the StateWriteError, and
    the change holds in memory (record.state) until the disk takes it."""
    return contextlib.suppress(StateWriteError)


def _person_clears_the_hold(parts: Parts, judge: Judge) -> None:
    """What `temalign hold clear` does (service.verbs: audited in the journal, hold lifted, the run
    of failures reset), once a person has made room."""
    if parts.state.load("live").hold is None:
        return
    parts.journal.append("control", verb="hold-clear", args={}, uid=os.getuid())
    parts.state.update(hold=None)
    parts.failure_count.success()
    judge.failures = 0


def _after_the_exposure(col: Column) -> None:
    """The acquisition software's exposure is over: its pause lifted, its busy file gone."""
    if any(t.action == "pause" and t.fired_at is not None for t in col.watched.triggers):
        with _told_the_disk_is_full():
            col.parts.state.update(paused_until=None, pause_reason=None)
    if col.busy_file is not None:
        col.busy_file.unlink(missing_ok=True)


def _finish(col: Column, judge: Judge, c1_start: float) -> str:
    """Faults cleared: C1 recovered as the daemon would, back at the start value; one more cycle runs."""
    col.twin.clear_faults()
    memory = col.parts.memory
    if memory.exists():
        try:
            memory.recover(col.watched)  # type: ignore[arg-type]
        except Exception as error:
            judge.bad("c1", -1, f"recovering the C1 record with the faults cleared failed: {error}")
    now = float(col.twin.truth()["c1_setpoint"])
    if not same_c1(now, c1_start):
        judge.bad("c1", -1, f"C1 ends at {now:.8g}, started at {c1_start:.8g}")
    if memory.exists():
        judge.bad("c1", -1, "the C1 record is still on disk at the end")
    col.watched.events = []
    seq = col.parts.journal.last_seq
    try:
        result = run_cycle(col.parts)
    except Exception as error:
        judge.bad("alive", -1, f"the final cycle raised {type(error).__name__}: {error}")
        return "raised"
    if col.parts.journal.pending():
        judge.bad("journal", -1, "pending intents after the final cycle")
    if not same_c1(float(col.twin.truth()["c1_setpoint"]), c1_start):
        judge.bad("c1", -1, "C1 moved by the final cycle")
    entries = _new_entries(col, seq)
    if not entries or entries[-1]["kind"] != "cycle":
        judge.bad("journal", -1, "the final cycle left no cycle record")
    return f"{result.outcome}/{result.reason}"


def load_model(path: Path = SHIPPED_MODEL) -> ModelEstimator:
    """The shipped model, loaded once for a whole campaign."""
    return ModelEstimator(path)


# ---- the real daemon, killed ----------------------------------------------------------------------------


KILL_SCALE = 1000.0
KILL_DELAY_S = {"any": (0.05, 1.5), "move": (0.0, 0.08), "wobble": (0.0, 0.3)}
"""Seconds from the start (any) or from the intent seen in flight (move, wobble) to the SIGKILL."""


def _pending(entries: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    open_: dict[int, dict[str, Any]] = {}
    for e in entries:
        if e.get("kind") == "journal.rotated" and isinstance(e.get("pending"), list):
            open_ = {p["op"]: p for p in e["pending"]}
        elif e.get("phase") == "intent":
            open_[e["op"]] = e
        elif e.get("phase") == "done":
            open_.pop(e.get("op"), None)
    return open_


def _journal_position(entries: list[dict[str, Any]]) -> tuple[int, int] | None:
    """Where the journal last says the aperture is (a move's read-back or a cycle's position)."""
    for e in reversed(entries):
        if e.get("phase") == "done" and e["kind"] in ("move", "rollback"):
            rb = e.get("read_back")
            if isinstance(rb, list):
                return (int(rb[0]), int(rb[1]))
        if e["kind"] == "cycle" and e.get("position_after"):
            return tuple(e["position_after"])  # type: ignore[return-value]
    return None


class DaemonRig:
    """A twin served from this process on a fast clock and a real `temalign run` on it."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.clock = ScaledClock(KILL_SCALE)
        self.twin = Twin(TwinSettings().updated(NO_DRIFT), self.clock, seed=seed % (2**31))
        self.server = TwinServer(self.twin, host="127.0.0.1", port=0).start()
        self.state_dir = root / "state"
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        save_calibration(self.state_dir, nominal_calibration())
        host, port = self.server.address[:2]
        cfg = {"microscope": {"address": f"{host}:{port}", "call_timeout_s": 2.0},
               "paths": {"state_dir": str(self.state_dir)}, "control": {"socket": str(root / "c.sock")},
               "metrics": {"host": "127.0.0.1", "port": free_port()},
               "wobble": {"settle_s": 0.005}, "logging": {"format": "json"},
               "schedule": {"interval_s": 10, "jitter_s": 0, "mode": "live"}}
        import yaml

        self.config = root / "temalign.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.notify_path = root / "notify"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> float:
        """Start `temalign run`; returns seconds to READY (RuntimeError if it never comes)."""
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(self.notify_path))
        listener.settimeout(timeout_s)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path),
               "PYTHONPATH": os.pathsep.join([str(REPO / "daemon"), os.environ.get("PYTHONPATH", "")])}
        t0 = time.monotonic()
        self.log = open(self.root / "daemon.log", "ab")  # noqa: SIM115
        command = [sys.executable, "-m", "temalign.cli", "run", "--config", str(self.config)]
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            while True:
                message = listener.recv(4096).decode()
                if message.startswith("READY=1"):
                    return time.monotonic() - t0
        except TimeoutError:
            raise RuntimeError(f"temalign run sent no READY within {timeout_s} s") from None
        finally:
            listener.close()

    def request(self, verb: str, args: dict[str, Any] | None = None) -> Any:
        from temalign.service.control import request

        return request(self.root / "c.sock", verb, args or {})

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):
            self.server.close()


def kill_campaign(seed: int, kills: int, progress: Any = None) -> dict[str, Any]:
    """`kills` SIGKILLs of a real daemon at random moments of busy cycles, each followed by a
    restart and the checks of a restart (C1, journal, pending intents, aperture, READY)."""
    root = Path(tempfile.mkdtemp(prefix="ta-kill-"))
    rig = DaemonRig(root, seed)
    violations: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    ready_s: list[float] = []
    in_flight: dict[str, int] = {}
    person_c1 = 0
    outcomes: Counter[str] = Counter()
    aims: Counter[str] = Counter()
    t0 = time.perf_counter()

    def bad(kill: int, what: str) -> None:
        violations.append({"seed": seed, "kill": kill, "invariant": "restart", "what": what})

    try:
        ready_s.append(rig.start())
        for n in range(kills):
            c1_ref = float(rig.twin.truth()["c1_setpoint"])
            rig.twin.inject("jump", units=[round(float(v), 1) for v in rig.rng.uniform(-120, 120, 2)])
            aim = str(rig.rng.choice(["any", "move", "wobble"], p=[0.4, 0.35, 0.25]))
            slowed = {"move": "aperture.move", "wobble": "lens.set"}.get(aim) or str(
                rig.rng.choice(["aperture.move", "lens.set", "camera.acquire"]))
            rig.twin.inject("slow", methods=[slowed], count=int(rig.rng.integers(1, 4)),
                            seconds=float(rig.rng.uniform(100, 800)))
            stop = threading.Event()

            def busy(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    try:
                        rig.request("once")
                    except Exception:
                        return

            worker = threading.Thread(target=busy, daemon=True)
            worker.start()
            delay = float(rig.rng.uniform(*KILL_DELAY_S[aim]))
            caught = aim == "any" or _wait_for_pending(rig.state_dir, aim, timeout_s=8.0)
            time.sleep(delay)
            rig.kill()
            aims[aim] += 1
            stop.set()
            worker.join(timeout=10)
            rig.twin.clear_faults()
            time.sleep(0.5)
            entries = read_journal(rig.state_dir)
            left = _pending(entries)
            for e in left.values():
                in_flight[e["kind"]] = in_flight.get(e["kind"], 0) + 1
            memory = C1Memory(rig.state_dir)
            record = memory.load() if memory.exists() else None
            expected_c1 = c1_ref
            if record is not None and rig.rng.random() < 0.25:
                expected_c1 = record.c1_before * (1 + float(rig.rng.choice([-1, 1])) * 0.011)
                rig.twin.set_c1(expected_c1)
                person_c1 += 1
            if not left and record is None:
                in_flight["nothing"] = in_flight.get("nothing", 0) + 1
            ready_s.append(rig.start())
            truth = rig.twin.truth()
            if not same_c1(float(truth["c1_setpoint"]), expected_c1):
                bad(n, f"C1 reads {truth['c1_setpoint']:.8g} after the restart, expected {expected_c1:.8g} "
                    f"(record at the kill: {record})")
            if memory.exists():
                bad(n, "the C1 record is still on disk after the restart")
            try:
                after = read_journal(rig.state_dir)
            except Exception as error:
                bad(n, f"read_journal failed after the restart: {error}")
                continue
            seqs = [e["seq"] for e in after]
            if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                bad(n, "journal seqs do not increase by one after the restart")
            start_seq = max(e["seq"] for e in after if e["kind"] == "start")
            settled = {e["op"] for e in after
                       if e.get("phase") == "done" and e["seq"] > start_seq and e.get("recovered")}
            for op, e in left.items():
                if op not in settled:
                    bad(n, f"intent {e['kind']} op {op} left pending by the kill was not settled at restart")
            notes = [e["note"] for e in after if e["kind"] == "recovery" and e["seq"] > start_seq]
            if any(e["kind"] in ("move", "rollback") for e in left.values()) \
                    and not any("in flight" in note for note in notes):
                bad(n, "a move in flight at the kill but no recovery note about it after the restart")
            if record is not None and not notes:
                bad(n, "a C1 record at the kill but no recovery note after the restart")
            still = _pending([e for e in after if e["seq"] <= start_seq + 50])
            stale = [op for op in still if op in left]
            if stale:
                bad(n, f"intents {stale} still pending after the restart")
            upto = _last_recovery_seq(after, start_seq)
            position = _journal_position([e for e in after if e["seq"] <= upto])
            where = [round(v) for v in truth["aperture"]]
            if position is not None and math.dist(position, where) > 3.0 * math.sqrt(2) + 1:
                bad(n, f"the journal says the aperture is at {position}, it is at {where}")
            state = StateStore(rig.state_dir).load("live")
            if state.last_position is not None and math.dist(state.last_position, where) > 3.0:
                findings.append({"seed": seed, "kill": n, "kind": "stale-last-position",
                                 "what": f"state.json last_position {state.last_position}, aperture at "
                                         f"{where}: the next cycle will take the daemon's own move for a "
                                         "person's and pause"})
            try:
                once = rig.request("once")
                outcomes[f"{once['outcome']}/{once['reason']}"] += 1
                if once["reason"] in ("aperture_moved", "c1_changed") and not (
                        once["reason"] == "c1_changed" and expected_c1 != c1_ref):
                    findings.append({"seed": seed, "kill": n, "kind": "spurious-pause-after-restart",
                                     "what": f"first cycle after the restart: {once['reason']}: "
                                             f"{once['detail']} (nobody touched the column; in flight at "
                                             f"the kill: {sorted(e['kind'] for e in left.values())})"})
            except Exception as error:
                bad(n, f"a cycle after the restart failed: {error}")
            with contextlib.suppress(Exception):
                rig.request("resume")
                rig.request("hold-clear")
            if progress is not None:
                flight = sorted(e["kind"] for e in left.values()) or "-"
                seen = "" if caught else ", not seen"
                progress(f"kill {n + 1}/{kills} (aimed at {aim}{seen}): in flight {flight}"
                         f", record {'yes' if record else 'no'}, ready in {ready_s[-1]:.2f} s")
        try:
            rig.request("status")
        except Exception as error:
            bad(kills, f"the daemon does not answer status after the last restart: {error}")
    finally:
        rig.close()
        shutil.rmtree(root, ignore_errors=True)
    return {"seed": seed, "kills": kills, "violations": violations, "findings": findings,
            "in_flight_at_kill": in_flight, "person_changed_c1": person_c1,
            "first_cycle_after_restart": dict(outcomes.most_common()), "aimed_at": dict(aims),
            "ready_s": {"median": round(float(np.median(ready_s)), 3), "max": round(max(ready_s), 3),
                        "starts": len(ready_s)},
            "seconds": round(time.perf_counter() - t0, 2)}


def _wait_for_pending(state_dir: Path, kind: str, timeout_s: float) -> bool:
    """Poll the journal until an intent of `kind` is in flight (a kill aimed at it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if any(e["kind"] == kind for e in _pending(read_journal(state_dir)).values()):
                return True
        time.sleep(0.01)
    return False


def _last_recovery_seq(entries: list[dict[str, Any]], start_seq: int) -> int:
    """The seq up to which the journal describes the column as the restart found it."""
    later = [e["seq"] for e in entries
             if e["seq"] > start_seq and (e["kind"] == "recovery" or e.get("recovered"))]
    return max([start_seq, *later])
