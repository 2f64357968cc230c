"""The shipped spot network (the daemon's default model) through the daemon's own path: LiteRT on a
real converted model, the walk through its spots, the calibration measured on traced columns the
remap got wrong (mirrored, magnified), and the model-alone rule inside CombinedEstimator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from temalign import shipped
from temalign.config.schema import EstimatorSettings, QualitySettings, WobbleSettings
from temalign.decide.trust import DISAGREE, MODEL_ALONE
from temalign.estimate.calibration import nominal_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelError, ModelEstimator
from temalign.microscope import Position
from temalign.service.calibrate import calibrate
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import CameraSource
from temalign.wobble.stack import wobble

pytestmark = pytest.mark.timeout(120)

WOBBLE = WobbleSettings(fraction=0.03, settle_s=2.0)


@pytest.fixture(scope="module")
def model() -> ModelEstimator:
    return ModelEstimator(shipped.default_model())


def test_the_default_model_is_a_learned_cnn(model: ModelEstimator) -> None:
    """Convolutions with learned weights, reading spots; the old physics model stays selectable."""
    assert model.reads_spots and model.card["output"] == "spots"
    assert "CONV_2D" in model.card["model"]["ops"] and model.card["model"]["params"] > 1000
    assert model.card["wobble_range"][0] <= 0.02 and model.card["wobble_range"][1] >= 0.04
    assert not ModelEstimator(shipped.model_path("wobble_physics")).reads_spots


def test_a_spot_model_gives_spots_not_delta(model: ModelEstimator) -> None:
    stack = np.zeros((7, 64, 64), dtype=np.uint16)
    stack[:, 30:34, 30:34] = 1000
    reading = model.read_spots(stack)
    assert reading.centres.shape == (7, 2) and reading.confidence.shape == (7,)
    assert np.all((reading.confidence >= 0) & (reading.confidence <= 1))
    with pytest.raises(ModelError, match="reads spots"):
        model.predict(stack)


def _place(served, microscope, misalignment: tuple[int, int]) -> None:
    aligned = served.truth()["aligned"]
    microscope.move_aperture(Position(round(aligned[0] + misalignment[0]),
                                      round(aligned[1] + misalignment[1])))


def _stack(served, microscope, tmp_path: Path):
    return wobble(microscope, CameraSource(microscope, clock=served.clock), fraction=0.03, settle_s=2.0,
                  clock=served.clock, memory=C1Memory(tmp_path / "state"))


def _calibrated(served, microscope, tmp_path: Path, model: ModelEstimator):
    return calibrate(microscope, CameraSource(microscope, clock=served.clock), wobble_settings=WOBBLE,
                     quality_settings=QualitySettings(), clock=served.clock,
                     memory=C1Memory(tmp_path / "state"), model=model)


@pytest.mark.parametrize("misalignment", [(150, -110), (-220, 60)])
def test_the_model_recentres_a_first_order_twin_stack(make_twin, connect, tmp_path, model,
                                                      misalignment) -> None:
    served = make_twin(seed=2)
    microscope = connect(served)
    _place(served, microscope, misalignment)
    stack = _stack(served, microscope, tmp_path)
    truth = -np.asarray(served.truth()["misalignment"])
    estimator = CombinedEstimator(model, nominal_calibration(), EstimatorSettings(), QualitySettings())
    measured = estimator.measure(stack)
    assert measured.model_walk is not None and measured.model_walk.frames >= 5
    assert np.linalg.norm(np.subtract(measured.model_delta, truth)) < 6.0, (measured.model_delta, truth)


@pytest.mark.parametrize("column", ["low-mag-mirrored", "high-mag-contaminated", "quarter-turn-mirrored"])
def test_the_walk_maps_right_on_a_mirrored_or_magnified_column(make_twin, connect, tmp_path, model,
                                                               column) -> None:
    """The replacement of the old remap: the spots are the images' own, so the calibration measured
    on the column (its magnification, rotation and mirror) maps the walk; the model's own M agrees
    with the classical one and a stack away from the calibration point comes out right."""
    served = make_twin({"optics": {"model": "traced", "column": column}}, seed=3)
    microscope = connect(served)
    calibration = _calibrated(served, microscope, tmp_path, model)
    assert calibration.model_matrix is not None and calibration.model_fingerprint == model.fingerprint
    own, classical = np.array(calibration.model_matrix), calibration.array
    assert (np.linalg.det(own) < 0) == column.endswith("mirrored") == (np.linalg.det(classical) < 0)
    assert np.linalg.norm(own - classical) < 0.05 * np.linalg.norm(classical)
    _place(served, microscope, (150, -110))
    stack = _stack(served, microscope, tmp_path)
    truth = -np.asarray(served.truth()["misalignment"])
    measured = CombinedEstimator(model, calibration, EstimatorSettings(), QualitySettings()).measure(stack)
    assert measured.trusted and np.linalg.norm(np.subtract(measured.delta, truth)) < 8.0, (measured, truth)


def test_the_model_alone_moves_where_the_classical_estimator_cannot_measure(make_twin, connect, tmp_path,
                                                                            model) -> None:
    """A classical walk that is never a line (its residual limit set below any real walk) is a stack
    the classical estimator cannot measure: the model moves alone, a shorter step."""
    served = make_twin(seed=4)
    microscope = connect(served)
    _place(served, microscope, (180, 90))
    stack = _stack(served, microscope, tmp_path)
    truth = -np.asarray(served.truth()["misalignment"])
    settings = EstimatorSettings(classical_max_residual_px=0.001, model_alone_max_units=60.0)
    measured = CombinedEstimator(model, nominal_calibration(), settings, QualitySettings()).measure(stack)
    assert measured.trusted and measured.reason == MODEL_ALONE, measured.detail
    assert np.hypot(*measured.delta) == pytest.approx(60.0)
    direction = np.asarray(measured.delta) / 60.0
    assert float(direction @ truth) / np.linalg.norm(truth) > 0.99
    off = EstimatorSettings(classical_max_residual_px=0.001, model_alone_max_units=0.0)
    assert not CombinedEstimator(model, nominal_calibration(), off, QualitySettings()).measure(stack).trusted


def test_a_measured_disagreement_is_never_overruled_by_the_model_alone(make_twin, connect, tmp_path,
                                                                       model) -> None:
    """The classical estimator measured, with a calibration turned 40 degrees: it disagrees, and
    the model, however sure, does not move alone."""
    served = make_twin(seed=5)
    microscope = connect(served)
    _place(served, microscope, (160, -40))
    stack = _stack(served, microscope, tmp_path)
    nominal = nominal_calibration()
    turn = np.deg2rad(40.0)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    turned = replace(nominal, matrix=tuple(map(tuple, rotation @ nominal.array)),
                     model_matrix=nominal.matrix, model_fingerprint=model.fingerprint)
    measured = CombinedEstimator(model, turned, EstimatorSettings(), QualitySettings()).measure(stack)
    assert measured.reason == DISAGREE and not measured.trusted and measured.delta is None


def test_discs_that_leave_the_detector_are_taken_again_narrower(make_twin, connect, tmp_path,
                                                                model) -> None:
    """At 420 units a 3 % wobble puts the wide discs mostly off the detector (a doubtful stack:
    disc lost); the cycle takes the stack again at 1.5 %, which the spot model was trained on, and
    corrects (an envelope wide enough for the move: the session starts at the far position)."""
    from temalign.config.schema import Settings
    from temalign.record.journal import Journal, read_journal
    from temalign.record.state import StateStore
    from temalign.service.cycle import Parts, run_cycle

    served = make_twin(seed=6)
    aligned = served.truth()["aligned"]
    served.twin.move_aperture(round(aligned[0] + 300), round(aligned[1] - 300))
    host, port = served.address
    settings = Settings.model_validate({"microscope": {"address": f"{host}:{port}"},
                                        "paths": {"state_dir": str(tmp_path / "state")},
                                        "schedule": {"mode": "live"},
                                        "safety": {"window_units": 800, "max_excursion_units": 700,
                                                   "max_step_units": 500}})
    state_dir = settings.paths.ensure_state_dir()
    microscope = connect(served)
    parts = Parts(microscope=microscope, source=CameraSource(microscope, 0.1, served.clock),
                  estimator=CombinedEstimator(model, nominal_calibration(), settings.estimator,
                                              settings.quality),
                  settings=settings, clock=served.clock, memory=C1Memory(state_dir),
                  journal=Journal(state_dir, clock=served.clock), state=StateStore(state_dir),
                  session_start=None)
    before = float(np.hypot(*served.truth()["misalignment"]))
    result = run_cycle(parts)
    wobbles = [e for e in read_journal(state_dir) if e["kind"] == "wobble" and e["phase"] == "intent"]
    fractions = {e["label"]: e["fraction"] for e in wobbles}
    assert fractions["before"] == 0.03 and fractions["before, narrower"] == pytest.approx(0.015), fractions
    assert result.outcome == "corrected", result
    assert float(np.hypot(*served.truth()["misalignment"])) < before - 200


@pytest.mark.parametrize(("lost_only", "lowest", "expected"), [
    (True, 0.015, 0.015), (True, 0.02, 0.02), (True, 0.03, None), (True, None, None), (False, 0.015, None)])
def test_only_discs_lost_to_the_edge_narrow_the_wobble_and_never_below_the_models_range(
        lost_only: bool, lowest: float | None, expected: float | None) -> None:
    from temalign.decide.stack import narrower_wobble

    assert narrower_wobble(lost_only, 0.03, lowest) == (None if expected is None else pytest.approx(expected))
