"""The gates of decide/ on their own (pure functions of plain values), and the one finiteness rule
and JSON converter they and the records share (temalign/values.py). The cycle's tests drive the
same gates through a twin over TCP; these pin each rule and its reason code directly."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from temalign.config.schema import EstimatorSettings, QualitySettings
from temalign.decide import column, stack, trust
from temalign.decide.envelope import check_aligned
from temalign.values import finite, jsonable, rounded, rounded_pair

QUALITY = QualitySettings()
ESTIMATOR = EstimatorSettings(agreement_units=15.0, classical_max_residual_px=3.0)


# ---- before the wobble: busy, hold, pause, hands on the column ----------------------------------


def gate(**overrides: object) -> column.Stop | None:
    args: dict = {"busy_file": None, "busy_file_exists": False, "hold": None, "paused_until": None,
                  "pause_reason": None, "now_epoch": 1000.0, "asked": "schedule", **overrides}
    return column.may_wobble(**args)


def test_the_busy_file_blocks_every_wobble_even_a_forced_one() -> None:
    busy = Path("/run/exposure")
    for asked in column.ASKED:
        stop = gate(busy_file=busy, busy_file_exists=True, asked=asked)
        assert stop is not None and stop.reason == column.BUSY and str(busy) in stop.detail
    assert gate(busy_file=busy, busy_file_exists=False) is None


def test_a_pause_blocks_all_but_a_forced_wobble_and_a_hold_the_scheduled_ones() -> None:
    held = gate(hold="3 failures in a row")
    assert held is not None and held.reason == column.HOLD and "temalign hold clear" in held.detail
    assert gate(hold="x", asked="once") is None, "a person's once measures in hold"
    paused = gate(paused_until=1000.5, pause_reason="exposure")
    assert paused == column.Stop(column.PAUSED, "exposure")
    once = gate(paused_until=1000.5, pause_reason="exposure", asked="once")
    assert once is not None and once.reason == column.PAUSED and "--force" in once.detail
    assert gate(paused_until=math.inf) is not None
    assert gate(paused_until=1000.0) is None, "a pause ends at its end time"
    assert gate(hold="x", paused_until=math.inf, asked="force") is None
    assert gate() is None
    with pytest.raises(ValueError, match="asked"):
        gate(asked="forced")


def test_hands_on_the_column() -> None:
    assert column.c1_changed(1.2, None, 1e-4) is None
    assert column.c1_changed(1.20005, 1.2, 1e-4) is None
    changed = column.c1_changed(1.21, 1.2, 1e-4)
    assert changed is not None and changed.reason == column.C1_CHANGED and "1.21" in changed.detail
    assert column.aperture_moved((100, 0), None, 5.0) is None
    assert column.aperture_moved((104, 3), (100, 0), 5.0) is None
    moved = column.aperture_moved((110, 0), (100, 0), 5.0)
    assert moved is not None and moved.reason == column.APERTURE_MOVED and "10 units" in moved.detail


@given(st.floats(0.5, 2.0), st.floats(-1e-3, 1e-3))
def test_same_c1_is_relative_and_symmetric(c: float, rel: float) -> None:
    other = c * (1 + rel)
    assert column.same_c1(c, other) == column.same_c1(other, c)
    if abs(rel) < 0.5e-4:
        assert column.same_c1(c, other)
    if abs(rel) > 2e-4:
        assert not column.same_c1(c, other)


# ---- the doubtful stack and the camera ----------------------------------------------------------


def facts(found: bool = True, total: float = 1000.0, on: float = 1.0, saturated: float | None = 0.0,
          truncated: bool = False) -> stack.FrameFacts:
    return stack.FrameFacts(found=found, total=total, truncated=truncated, on_detector=on,
                            centre_finite=found, saturated_fraction=saturated)


def test_a_clean_stack_passes_and_every_frame_is_usable() -> None:
    verdict = stack.judge_stack([facts()] * 7, conserved=True, settings=QUALITY)
    assert verdict == stack.StackVerdict(True, (), (True,) * 7)
    assert stack.wide_frames() == (0, 1, 5, 6)


def test_each_finding_makes_the_stack_doubtful_naming_its_frame() -> None:
    frames = [facts()] * 7
    cases = {
        "no beam in frame 2": [*frames[:2], facts(found=False), *frames[3:]],
        "signal 10% of the brightest": [*frames[:4], facts(total=100.0), *frames[5:]],
        "frame 6: disc lost (30%": [*frames[:6], facts(on=0.3)],
        "frame 0 saturated (1.0%": [facts(saturated=0.01), *frames[1:]],
    }
    for words, case in cases.items():
        verdict = stack.judge_stack(case, conserved=True, settings=QUALITY)
        assert not verdict.ok and any(words in r for r in verdict.reasons), (words, verdict.reasons)
    nothing = stack.judge_stack([facts(found=False)] * 7, conserved=True, settings=QUALITY)
    assert not nothing.ok and nothing.reasons == ("no beam in any frame (blanked, or off the detector)",)


def test_saturated_focused_frames_and_a_cut_disc_are_normal() -> None:
    frames = [facts(), facts(), facts(saturated=0.2), facts(saturated=0.5), facts(saturated=0.2), facts(),
              facts(total=300.0, truncated=True, on=0.6)]
    assert stack.judge_stack(frames, conserved=True, settings=QUALITY).ok


def test_a_display_may_hide_the_focused_spot_while_the_wide_frames_show() -> None:
    hidden = [facts(), facts(), facts(), facts(found=False), facts(), facts(), facts()]
    assert stack.judge_stack(hidden, conserved=False, settings=QUALITY).ok
    assert not stack.judge_stack(hidden, conserved=True, settings=QUALITY).ok, "raw counts never hide a beam"
    too_few = [facts(), facts(), facts(found=False), facts(found=False), facts(found=False), facts(), facts()]
    assert not stack.judge_stack(too_few, conserved=False, settings=QUALITY).ok


def test_camera_protection() -> None:
    assert stack.camera_at_risk(0.051, 0.05) and not stack.camera_at_risk(0.05, 0.05)


# ---- estimator agreement ------------------------------------------------------------------------


def says(delta: tuple[float, float] | None, residual: float = 0.5,
         reason: str | None = None) -> trust.ClassicalSays:
    return trust.ClassicalSays(delta, residual, reason)


def test_agreement_within_the_limit_moves_on_the_model() -> None:
    verdict = trust.agreement((100.0, 0.0), says((105.0, 0.0)), ESTIMATOR)
    assert (verdict.trusted, verdict.reason, verdict.delta) == (True, trust.AGREE, (100.0, 0.0))
    assert verdict.confidence == pytest.approx(1 - 5 / 15)
    apart = trust.agreement((100.0, 0.0), says((116.0, 0.0)), ESTIMATOR)
    assert (apart.trusted, apart.reason, apart.delta) == (False, trust.DISAGREE, None)


def test_a_long_move_may_differ_by_a_fraction_of_its_length() -> None:
    """15 units or 15 % of the move, whichever is more: 40 apart agree on a 300-unit move, not on a
    200-unit one; with the fraction at 0 only the units count."""
    far = trust.agreement((300.0, 0.0), says((340.0, 0.0)), ESTIMATOR)
    assert far.trusted and far.reason == trust.AGREE
    nearer = trust.agreement((200.0, 0.0), says((240.0, 0.0)), ESTIMATOR)
    assert not nearer.trusted and "more than 30.0" in nearer.detail
    strict = trust.agreement((300.0, 0.0), says((325.0, 0.0)),
                             ESTIMATOR.model_copy(update={"agreement_fraction": 0.0}))
    assert strict.reason == trust.DISAGREE


def test_a_classical_estimate_that_is_missing_or_not_a_line_refuses() -> None:
    missing = says(None, math.nan, "only 2 frame(s) show a usable spot")
    failed = trust.agreement((1.0, 1.0), missing, ESTIMATOR)
    assert (failed.reason, failed.detail) == (trust.CLASSICAL_FAILED, "only 2 frame(s) show a usable spot")
    bent = trust.agreement((1.0, 1.0), says((1.0, 1.0), residual=3.5), ESTIMATOR)
    assert bent.reason == trust.CLASSICAL_FAILED and "not a line" in bent.detail
    alone = trust.agreement((1.0, 1.0), says((40.0, 1.0)), ESTIMATOR.model_copy(update={"use": "classical"}))
    assert (alone.trusted, alone.reason, alone.delta) == (True, trust.CLASSICAL_ONLY, (40.0, 1.0))


def test_the_model_alone() -> None:
    def verdict(delta: tuple[float, float], **kw: object) -> trust.Trust | None:
        args: dict = {"use": "both", "calibrated": True, "without_calibration": "dry-run", **kw}
        return trust.model_verdict(delta, **args)

    failed = verdict((math.nan, 0.0))
    assert failed is not None and (failed.trusted, failed.reason) == (False, trust.MODEL_FAILED)
    assert verdict((3.0, 4.0)) is None, "with a calibration the classical estimator must speak"
    alone = verdict((3.0, 4.0), use="model")
    assert alone is not None and (alone.trusted, alone.reason) == (True, trust.MODEL_ONLY)
    uncalibrated = verdict((3.0, 4.0), calibrated=False)
    assert uncalibrated is not None
    assert (uncalibrated.trusted, uncalibrated.reason) == (False, trust.NO_CALIBRATION)
    allowed = verdict((3.0, 4.0), calibrated=False, without_calibration="model-only")
    assert allowed is not None and (allowed.trusted, allowed.reason) == (True, trust.MODEL_ONLY)
    needs = verdict((3.0, 4.0), calibrated=False, use="classical")
    assert needs is not None and (needs.trusted, needs.reason) == (False, trust.NO_CALIBRATION)


def test_the_check_stops_the_cycle_only_inside_the_deadband() -> None:
    assert check_aligned((3.0, 4.0), 8.0) == "two-frame check: |m| about 5.0 units, inside the deadband (8)"
    assert check_aligned((6.0, 8.0), 8.0) is None
    assert check_aligned(None, 8.0) is None and check_aligned((math.nan, 0.0), 8.0) is None


# ---- one finiteness rule, one JSON form ---------------------------------------------------------


def test_finite() -> None:
    assert finite(1, 2.5, np.float32(3.0), np.int64(4))
    for bad in (math.nan, math.inf, -math.inf, "1.5", None, True, np.bool_(True), [1.0], 1e400 * 10):
        assert not finite(bad), bad
    assert not finite(), "nothing is not a finite number"
    assert not finite(1.0, math.nan)


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: float
    y: float


def test_jsonable_is_strict_json_and_keeps_nan_apart_from_none() -> None:
    value = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "none": None,
             "array": np.array([1.0, np.nan]), "scalar": np.float64(2.5), "tuple": (1, 2), "set": {3, 1},
             "path": Path("/a/b"), "enum": Colour.RED, "point": Point(1.0, math.inf)}
    out = jsonable(value)
    assert out == {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "none": None, "array": [1.0, "NaN"],
                   "scalar": 2.5, "tuple": [1, 2], "set": [1, 3], "path": "/a/b", "enum": "red",
                   "point": {"x": 1.0, "y": "Infinity"}}
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError, match=r"where\.obj: a object has no JSON form"):
        jsonable({"obj": object()}, "where")
    assert jsonable({"obj": Colour}, default=lambda v: "shown") == {"obj": "shown"}


def test_rounded_keeps_what_is_not_a_number() -> None:
    assert rounded(1.23456) == 1.235 and rounded(None) is None and math.isnan(rounded(math.nan) or 0.0)
    assert rounded_pair((1.00049, -2.0)) == [1.0, -2.0] and rounded_pair(None) is None
