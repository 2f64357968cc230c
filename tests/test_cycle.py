"""One cycle against a real twin over TCP: each outcome, and the safety.md invariants it carries.

Every test runs the real cycle (wobble, both estimators, the envelope, move, read back, verify)
with the shipped model, on the twin's clock at 1000x (a cycle takes a fraction of a second)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from temalign.config.schema import Settings
from temalign.estimate.calibration import nominal_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelEstimator
from temalign.record.journal import Journal, read_journal
from temalign.record.state import StateStore
from temalign.service.cycle import Parts, run_cycle
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import CameraSource

SHIPPED = Path(__file__).resolve().parents[1] / "daemon" / "temalign" / "models" / "wobble_physics.tflite"


def make_parts(served: Any, connect: Any, tmp_path: Path, *, mode: str = "live", calibrated: bool = True,
               safety: dict[str, Any] | None = None, estimator: dict[str, Any] | None = None) -> Parts:
    host, port = served.address
    settings = Settings.model_validate({
        "microscope": {"address": f"{host}:{port}"}, "paths": {"state_dir": str(tmp_path / "state")},
        "schedule": {"mode": mode}, "safety": safety or {}, "estimator": estimator or {},
    })
    state_dir = settings.paths.ensure_state_dir()
    microscope = connect(served)
    model = ModelEstimator(SHIPPED)
    calibration = nominal_calibration() if calibrated else None
    return Parts(microscope=microscope, source=CameraSource(microscope, 0.1, served.clock),
                 estimator=CombinedEstimator(model, calibration, settings.estimator, settings.quality),
                 settings=settings, clock=served.clock, memory=C1Memory(state_dir),
                 journal=Journal(state_dir, clock=served.clock), state=StateStore(state_dir),
                 session_start=None)


def offset(served: Any, dx: int, dy: int) -> None:
    """Put the aperture (dx, dy) off the aligned position, as drift would."""
    aligned = served.truth()["aligned"]
    served.twin.move_aperture(round(aligned[0] + dx), round(aligned[1] + dy))


def misalignment(served: Any) -> float:
    return math.hypot(*served.truth()["misalignment"])


def test_a_misaligned_aperture_is_corrected_verified_and_journaled(make_twin: Any, connect: Any,
                                                                   tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 120, -80)
    parts = make_parts(served, connect, tmp_path)
    c1_before = served.lens_reads()
    result = run_cycle(parts)
    assert result.outcome == "corrected", result
    assert misalignment(served) < 0.2 * 144 + 3  # gain 0.8: 20 % of 144 units left, plus the motor
    assert served.lens_reads() == pytest.approx(c1_before, rel=1e-9)  # invariant 2
    assert result.before is not None and result.before.trusted and result.after is not None
    state = parts.state.load("live")
    assert state.reference == result.position_after and state.reference_set_by == "first verified correction"
    kinds = [(e["kind"], e.get("phase")) for e in read_journal(tmp_path / "state")]
    assert kinds.index(("move", "intent")) < kinds.index(("move", "done")) < kinds.index(("cycle", None))
    assert parts.journal.pending() == []


def test_aligned_aperture_is_left_alone(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    parts = make_parts(served, connect, tmp_path)
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert result.outcome == "within_deadband", result
    assert served.truth()["aperture"] == before


def wobble_labels(tmp_path: Path) -> list[str]:
    return [e["label"] for e in read_journal(tmp_path / "state")
            if e["kind"] == "wobble" and e["phase"] == "intent"]


@pytest.mark.parametrize("dx, dy", [(0, 0), (4, -3), (-5, 2)])
def test_a_check_on_an_aligned_column_stops_at_two_frames(make_twin: Any, connect: Any, tmp_path: Path,
                                                          dx: int, dy: int) -> None:
    served = make_twin()
    offset(served, dx, dy)
    parts = make_parts(served, connect, tmp_path)
    before, c1_before = served.truth()["aperture"], served.lens_reads()
    mx, my = served.truth()["misalignment"]
    result = run_cycle(parts, look="check")
    assert result.outcome == "checked", result
    assert result.before is None and result.check is not None and result.check.frames_used == 2
    assert result.check.delta == pytest.approx((-mx, -my), abs=1.5)  # delta = a* - a
    assert served.truth()["aperture"] == before
    assert served.lens_reads() == pytest.approx(c1_before, rel=1e-9)
    assert wobble_labels(tmp_path) == ["check"]
    assert parts.check_steps == (3, 6)  # the focused spot was there: one settle stays enough
    cycle = [e for e in read_journal(tmp_path / "state") if e["kind"] == "cycle"][-1]
    assert cycle["check"]["frames"] == 2 and cycle["outcome"] == "checked"


def test_a_check_that_sees_a_misalignment_runs_the_full_cycle(make_twin: Any, connect: Any,
                                                              tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 30, -25)
    parts = make_parts(served, connect, tmp_path)
    result = run_cycle(parts, look="check")
    assert result.outcome == "corrected", result
    assert result.check is not None and math.hypot(*result.check.delta) > parts.settings.safety.deadband_units
    assert misalignment(served) < parts.settings.safety.deadband_units
    assert wobble_labels(tmp_path) == ["check", "before", "verify"]


def test_a_check_that_cannot_tell_leaves_it_to_the_full_wobble(make_twin: Any, connect: Any,
                                                               tmp_path: Path) -> None:
    served = make_twin()
    parts = make_parts(served, connect, tmp_path)
    served.fault("blank")
    before = served.truth()["aperture"]
    result = run_cycle(parts, look="check")
    assert result.check is not None and result.check.delta is None and result.check.reason
    assert result.outcome == "refused_doubtful_stack", result
    assert served.truth()["aperture"] == before
    assert wobble_labels(tmp_path) == ["check", "before"]


def test_without_calibration_there_is_no_check(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    parts = make_parts(served, connect, tmp_path, calibrated=False)
    result = run_cycle(parts, look="check")
    assert (result.outcome, result.reason, result.check) == ("dry_run", "no_calibration", None)
    assert wobble_labels(tmp_path) == ["before"]


def test_the_model_alone_never_checks(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    """The check is the classical estimator's; `estimator.use: model` says not to trust that."""
    parts = make_parts(make_twin(), connect, tmp_path, estimator={"use": "model"})
    result = run_cycle(parts, look="check")
    assert result.outcome == "within_deadband" and result.check is None
    assert wobble_labels(tmp_path) == ["before"]


def test_dry_run_reports_the_full_measurement_even_when_asked_to_check(make_twin: Any, connect: Any,
                                                                       tmp_path: Path) -> None:
    served = make_twin()
    parts = make_parts(served, connect, tmp_path, mode="dry-run")
    result = run_cycle(parts, look="check")
    assert result.outcome == "dry_run" and result.check is None and result.before is not None
    assert wobble_labels(tmp_path) == ["before"]


def test_an_unknown_look_is_refused(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    parts = make_parts(make_twin(), connect, tmp_path)
    with pytest.raises(ValueError, match="look"):
        run_cycle(parts, look="glance")


def test_dry_run_measures_and_never_moves(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    offset(served, -150, 60)
    parts = make_parts(served, connect, tmp_path, mode="dry-run")
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert result.outcome == "dry_run" and result.decision is not None and result.decision.action == "move"
    assert served.truth()["aperture"] == before


def test_without_calibration_it_measures_only(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 100, 100)
    parts = make_parts(served, connect, tmp_path, calibrated=False)
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("dry_run", "no_calibration")
    assert served.truth()["aperture"] == before


def test_paused_skips_and_once_force_runs_anyway(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 90, 0)
    parts = make_parts(served, connect, tmp_path)
    parts.state.update(paused_until=math.inf, pause_reason="exposure")
    assert run_cycle(parts).outcome == "skipped"
    once = run_cycle(parts, asked="once")
    assert (once.outcome, once.reason) == ("skipped", "paused")
    assert run_cycle(parts, asked="force").outcome == "corrected"


def test_busy_file_blocks_even_once(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    busy = tmp_path / "busy"
    busy.touch()
    parts = make_parts(served, connect, tmp_path, safety={"busy_file": str(busy)})
    result = run_cycle(parts, asked="force")
    assert (result.outcome, result.reason) == ("skipped", "busy")


def test_blank_beam_is_refused_without_a_move(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 100, 0)
    parts = make_parts(served, connect, tmp_path)
    served.fault("blank")
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert result.outcome == "refused_doubtful_stack", result
    assert served.truth()["aperture"] == before


def test_a_stuck_motor_counts_toward_hold(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 150, 0)
    parts = make_parts(served, connect, tmp_path, safety={"hold_after_failures": 2})
    served.fault("stuck")
    first = run_cycle(parts)
    assert (first.outcome, first.reason) == ("error", "motor_fault")
    second = run_cycle(parts)
    assert second.outcome == "hold"
    assert parts.state.load("live").hold is not None
    assert run_cycle(parts).outcome == "skipped"  # only a person clears a hold


def test_a_wrong_calibration_makes_it_worse_and_is_rolled_back(make_twin: Any, connect: Any,
                                                                tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 60, 0)
    parts = make_parts(served, connect, tmp_path)
    nominal = nominal_calibration()
    flipped = tuple(tuple(-v for v in row) for row in nominal.matrix)  # a camera mirrored both ways
    parts.estimator.calibration = dataclasses.replace(nominal, matrix=flipped)
    start = served.truth()["aperture"]
    result = run_cycle(parts)
    assert result.outcome == "rolled_back", result
    assert math.dist(served.truth()["aperture"], start) <= 3  # back where it was (motor noise, backlash)
    assert parts.failures is not None and parts.failures.count == 1


def test_an_overshooting_motor_is_a_fault_and_moved_back(make_twin: Any, connect: Any,
                                                         tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 100, 0)
    parts = make_parts(served, connect, tmp_path)
    served.fault("overshoot", units=[40, 40], count=1)
    start = served.truth()["aperture"]
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("error", "motor_fault"), result
    assert math.dist(served.truth()["aperture"], start) <= 3


def test_a_person_moving_the_aperture_pauses_the_daemon(make_twin: Any, connect: Any,
                                                        tmp_path: Path) -> None:
    served = make_twin()
    parts = make_parts(served, connect, tmp_path)
    assert run_cycle(parts).outcome == "within_deadband"
    offset(served, 40, 40)
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("skipped", "aperture_moved")
    assert parts.state.load("live").paused_until == math.inf


def test_outside_the_window_is_refused(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 200, 0)
    parts = make_parts(served, connect, tmp_path, safety={"window_units": 100, "max_excursion_units": 90,
                                                          "max_step_units": 250})
    parts.state.update(reference=tuple(served.truth()["aperture"]))
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert result.outcome in ("refused_limit", "hold"), result
    assert served.truth()["aperture"] == before


def test_estimators_that_disagree_move_nothing(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    offset(served, 120, 0)
    parts = make_parts(served, connect, tmp_path,
                       estimator={"agreement_units": 0.001, "agreement_fraction": 0.0})
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("refused_low_confidence", "disagree"), result
    assert served.truth()["aperture"] == before


def test_a_person_changing_c1_pauses_the_daemon(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    served = make_twin()
    parts = make_parts(served, connect, tmp_path)
    assert run_cycle(parts).outcome == "within_deadband"
    served.twin.set_c1(served.lens_reads() * 1.01)
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("skipped", "c1_changed")
    assert parts.state.load("live").paused_until == math.inf


def test_a_lens_that_does_not_take_its_value_counts_toward_hold(make_twin: Any, connect: Any,
                                                                 tmp_path: Path) -> None:
    served = make_twin()
    parts = make_parts(served, connect, tmp_path, safety={"hold_after_failures": 2})
    c1 = served.lens_reads()
    served.fault("lens_ignore")
    first = run_cycle(parts)
    assert (first.outcome, first.reason) == ("error", "lens_did_not_take"), first
    assert run_cycle(parts).outcome == "hold"
    assert served.lens_reads() == pytest.approx(c1, rel=1e-9)


@pytest.mark.parametrize("angle_deg", [0, 100, 215, 300])
def test_converges_from_200_units_off_within_3_cycles(make_twin: Any, connect: Any, tmp_path: Path,
                                                       angle_deg: float) -> None:
    served = make_twin()
    a = math.radians(angle_deg)
    offset(served, round(200 * math.cos(a)), round(200 * math.sin(a)))
    parts = make_parts(served, connect, tmp_path)
    outcomes = []
    for _ in range(3):
        outcomes.append(run_cycle(parts).outcome)
        if misalignment(served) <= 20:
            break
    assert misalignment(served) <= 20, (outcomes, served.truth()["misalignment"])
    assert outcomes[0] == "corrected"


@pytest.mark.parametrize("use", ["model", "classical"])
def test_one_estimator_alone_when_configured(make_twin: Any, connect: Any, tmp_path: Path, use: str) -> None:
    served = make_twin()
    offset(served, 100, -40)
    parts = make_parts(served, connect, tmp_path, estimator={"use": use, "agreement_units": 0.001,
                                                             "agreement_fraction": 0.0})
    result = run_cycle(parts)
    assert result.outcome == "corrected" and result.before is not None
    assert result.before.reason == f"{use}_only"
    assert misalignment(served) < 30


def test_a_column_trained_model_is_not_remapped(make_twin: Any, connect: Any, tmp_path: Path) -> None:
    """A card with "geometry": "column" speaks the column's own frame: the calibration re-maps only
    the classical estimate, so under a mirrored calibration the two disagree and nothing moves
    (a twin-trained model is re-mapped too and they agree: test_a_wrong_calibration_...)."""
    served = make_twin()
    offset(served, 80, 0)
    model = tmp_path / "column.tflite"
    model.write_bytes(SHIPPED.read_bytes())
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**card, "geometry": "column"}))
    parts = make_parts(served, connect, tmp_path)
    nominal = nominal_calibration()
    flipped = tuple(tuple(-v for v in row) for row in nominal.matrix)
    parts.estimator = CombinedEstimator(ModelEstimator(model), dataclasses.replace(nominal, matrix=flipped),
                                        parts.settings.estimator, parts.settings.quality)
    assert not parts.estimator.remaps
    before = served.truth()["aperture"]
    result = run_cycle(parts)
    assert (result.outcome, result.reason) == ("refused_low_confidence", "disagree"), result
    assert served.truth()["aperture"] == before


def test_a_scene_that_biases_the_check_is_learned_from_the_full_wobble(make_twin: Any, connect: Any,
                                                                      tmp_path: Path) -> None:
    """A specimen edge dims half of every wide disc: seven frames cancel that pull, the check's two
    do not (it read 15 to 20 units on an aligned column). The check's reading on a trusted full
    wobble's own frames, less the wobble's, is its bias there; later checks subtract it."""
    from temalign.config.schema import QualitySettings, WobbleSettings
    from temalign.service.calibrate import calibrate

    served = make_twin({"optics": {"model": "traced", "column": "reference"},
                        "scene": {"kind": "specimen-edge", "edge_offset_fov": 0.0}}, seed=3)
    parts = make_parts(served, connect, tmp_path)
    parts.estimator.calibration = calibrate(parts.microscope, parts.source,
                                            wobble_settings=WobbleSettings(fraction=0.03, settle_s=2.0),
                                            quality_settings=QualitySettings(), clock=served.clock,
                                            memory=parts.memory, model=parts.estimator.model)
    offset(served, 4, -3)
    raw = run_cycle(parts, look="check")
    assert raw.check is not None and raw.check.delta is not None
    truth = -np.asarray(served.truth()["misalignment"])
    raw_error = float(np.hypot(*np.subtract(raw.check.delta, truth)))
    assert raw_error > 8.0, (raw.check.delta, truth)  # the bias the scene puts in two frames
    full = run_cycle(parts, look="full")
    assert full.before is not None and full.before.trusted
    assert math.hypot(*parts.check_bias) > 8.0
    learned = run_cycle(parts, look="check")
    assert learned.check is not None and learned.check.delta is not None
    truth = -np.asarray(served.truth()["misalignment"])
    assert float(np.hypot(*np.subtract(learned.check.delta, truth))) < 0.5 * raw_error
    checks = [e for e in read_journal(tmp_path / "state") if e["kind"] == "wobble" and "bias" in e]
    assert len(checks) == 2 and checks[0]["bias"] == [0.0, 0.0] and math.hypot(*checks[1]["bias"]) > 8.0
    assert checks[1]["read"] != checks[1]["delta"]  # the raw reading is journaled beside the corrected one
