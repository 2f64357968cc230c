"""The spot model's side of the estimate, as pure functions: the weighted walk fit shared with the
classical estimator, which frames of a reading count (estimate/model_walk.py), the model-alone
rule (decide/trust.py: docs/safety.md), and the card of a spot model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from temalign.config.schema import EstimatorSettings
from temalign.decide.trust import MODEL_ALONE, ModelSays, model_alone
from temalign.estimate import card as cards
from temalign.estimate.calibration import nominal_calibration
from temalign.estimate.model_estimator import ModelError, SpotReading, check_compatible
from temalign.estimate.model_walk import MIN_CONFIDENCE, OUTLIER_FOV, model_walk
from temalign.estimate.walk import Walk, fit_points

C0 = 1.2
C1_VALUES = [C0 * (1 + 0.03 * (k - 3) / 3) for k in range(7)]
RHO = np.array(C1_VALUES) / C0 - 1.0
SLOPE = np.array([2.0, -1.5])


def _line(slope: np.ndarray = SLOPE, start: tuple[float, float] = (0.01, -0.02)) -> np.ndarray:
    return np.asarray(start) + RHO[:, None] * slope[None, :]


def test_a_weighted_fit_leaves_out_zero_weights_and_says_how_far_each_frame_strays() -> None:
    points = _line()
    points[0] += (0.3, 0.3)  # a misread frame
    weights = np.ones(7)
    tilted = fit_points(RHO, points, weights)
    weights[0] = 0.0
    walk = fit_points(RHO, points, weights)
    assert isinstance(walk, Walk) and isinstance(tilted, Walk)
    assert np.allclose(walk.slope, SLOPE, atol=1e-9) and walk.frames == 6
    assert not np.allclose(tilted.slope, SLOPE, atol=0.1)
    assert walk.misfits is not None and math.isnan(walk.misfits[0]) and np.nanmax(walk.misfits) < 1e-9
    assert fit_points(RHO, points, np.r_[np.ones(2), np.zeros(5)]) == (
        "only 2 frame(s) show a usable spot; at least 3 are needed")


def test_the_reading_counts_its_confident_frames_and_drops_a_stray_one() -> None:
    centres = _line()
    confidence = np.full(7, 0.95)
    confidence[6] = MIN_CONFIDENCE - 0.01  # unsure: left out whatever it says
    centres[6] += (0.5, 0.0)
    centres[1] += (3 * OUTLIER_FOV, 0.0)  # sure, but off the walk of the others
    walked = model_walk(SpotReading(centres, confidence, 0.0, 0.0), C1_VALUES, C0)
    assert walked.walk is not None and walked.used == (True, False, True, True, True, True, False)
    assert np.allclose(walked.walk.slope, SLOPE, atol=1e-9)
    few = model_walk(SpotReading(centres, np.r_[np.full(2, 0.9), np.zeros(5)], 0.0, 0.0), C1_VALUES, C0)
    assert few.walk is None and "at least 3" in (few.reason or "")
    nan = model_walk(SpotReading(np.full((7, 2), np.nan), np.ones(7), 0.0, 0.0), C1_VALUES, C0)
    assert nan.walk is None


def test_the_walk_maps_to_motor_units_through_the_calibration() -> None:
    """delta = -(M^-1 slope): the nominal M and a walk it made from a known misalignment."""
    calibration = nominal_calibration()
    delta = np.array([120.0, -80.0])
    slope = -calibration.array @ delta
    assert np.allclose(calibration.correction(slope, calibration.c1), delta)
    mirrored = ((-calibration.array[0, 0], -calibration.array[0, 1]), tuple(calibration.array[1]))
    assert np.allclose(calibration.correction(np.asarray(mirrored) @ -delta, calibration.c1, mirrored), delta)


SURE = ModelSays((200.0, 0.0), frames=7, residual_px=0.3, confidence=0.95)


@pytest.mark.parametrize(("says", "settings"), [
    (ModelSays((200.0, 0.0), 4, 0.3, 0.95), {}),
    (ModelSays((200.0, 0.0), 7, 2.5, 0.95), {}),
    (ModelSays((200.0, 0.0), 7, 0.3, 0.5), {}),
    (ModelSays((math.nan, 0.0), 7, 0.3, 0.95), {}),
    (SURE, {"use": "model"}),
    (SURE, {"model_alone_max_units": 0.0}),
    (None, {}),
])
def test_the_model_may_not_move_alone_unless_it_is_sure(says, settings) -> None:
    assert model_alone(says, "not a line", settings=EstimatorSettings(**settings)) is None


def test_the_model_alone_moves_a_shorter_step_in_the_same_direction() -> None:
    trust = model_alone(ModelSays((90.0, -120.0), 6, 0.4, 0.9), "the spot walk is not a line",
                        settings=EstimatorSettings(model_alone_max_units=60.0))
    assert trust is not None and trust.trusted and trust.reason == MODEL_ALONE
    assert trust.delta == pytest.approx((36.0, -48.0))
    assert "the spot walk is not a line" in trust.detail and "shortened to 60" in trust.detail
    short = model_alone(ModelSays((3.0, 4.0), 7, 0.2, 0.9), "x", settings=EstimatorSettings())
    assert short is not None and short.delta == (3.0, 4.0)


SPOT_CARD = {"output": "spots", "preprocess": "temalign.estimate.preprocess:spots_128",
             "input_shape": [128, 128, 7], "frames": "any", "wobble_range": [0.015, 0.04],
             "c0_over_cf_range": [0.97, 1.03], "training": {"datasets": ["traced twin"]}, "metrics": {}}


def test_a_spot_card_names_its_ranges_instead_of_one_wobble() -> None:
    assert cards.validate_card(SPOT_CARD) == []
    missing = {k: v for k, v in SPOT_CARD.items() if k != "wobble_range"}
    assert "missing key 'wobble_range'" in cards.validate_card(missing)
    assert cards.validate_card({**SPOT_CARD, "wobble_range": [0.04, 0.015]}) == [
        "wobble_range: expected [lowest, highest] such as [0.015, 0.04], got [0.04, 0.015]"]
    assert cards.validate_card({**SPOT_CARD, "output": "heatmap"}) == [
        "output: expected one of 'delta', 'spots', got 'heatmap'"]
    with pytest.raises(ValueError, match="gives no delta"):
        cards.to_motor_units([0.0, 0.0], SPOT_CARD)


@pytest.mark.parametrize("fraction", [0.015, 0.02, 0.03, 0.04])
def test_any_wobble_inside_the_trained_range_is_accepted(fraction: float) -> None:
    check_compatible(SPOT_CARD, wobble_fraction=fraction, frames="raw")


def test_a_wobble_outside_the_trained_range_is_refused_naming_it() -> None:
    with pytest.raises(ModelError, match=r"trained on wobbles of 0.015 to 0.04 .* wobble.fraction is 0.05"):
        check_compatible(SPOT_CARD, wobble_fraction=0.05, frames="raw")


def test_the_models_own_m_is_kept_only_where_it_agrees_with_the_classical_one() -> None:
    """Least squares over four moves both ways; a model M 20 % off the classical one is refused,
    one 3 % off kept."""
    from temalign.service.calibrate import MODEL_M_TOLERANCE, _spot_model_matrix, fit_matrix

    classical = nominal_calibration().array
    moves = np.array([[100.0, -100.0, 0.0, 0.0], [0.0, 0.0, 100.0, -100.0]])
    start = np.array([0.3, -0.2])

    def walks(m: np.ndarray) -> list[Walk]:
        return [Walk(start, 0.0, 7)] + [Walk(start + m @ d, 0.0, 7) for d in moves.T]

    assert np.allclose(fit_matrix([w.slope for w in walks(classical)], moves), classical)
    kept, why = _spot_model_matrix(walks(classical * 1.03), moves, classical)
    assert why is None and np.allclose(np.array(kept), classical * 1.03)
    refused, why = _spot_model_matrix(walks(classical * 1.2), moves, classical)
    assert refused is None
    assert why == f"its own M is 20% from the classical one, more than {MODEL_M_TOLERANCE:.0%}"
    missing, why = _spot_model_matrix([*walks(classical)[:4], None], moves, classical)
    assert missing is None and "no confident walk" in (why or "")
