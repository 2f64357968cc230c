"""Measuring the calibration against the twin over TCP: the matrix it finds, and the aperture put
back where it started whatever ends the calibration (safety.md, "Tools")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from temalign.config.schema import QualitySettings, WobbleSettings
from temalign.estimate.calibration import nominal_calibration
from temalign.estimate.classical import classical_estimate
from temalign.frames import Frame
from temalign.protocol.errors import ProtocolError
from temalign.service.calibrate import CalibrationError, calibrate
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import CameraSource

pytestmark = pytest.mark.timeout(60)

WOBBLE = WobbleSettings(fraction=0.03, settle_s=2.0)


class Hooked:
    """A source that runs `hook(k)` before grab k (k counts over all wobbles of the calibration)."""

    def __init__(self, source, hook) -> None:
        self.source, self.hook = source, hook
        self.name, self.kind = source.name, source.kind
        self.grabs = 0

    def grab(self) -> Frame:
        k = self.grabs
        self.grabs += 1
        self.hook(k)
        return self.source.grab()


def run(served, microscope, tmp_path: Path, source=None, **kwargs):
    messages: list[str] = []
    calibration = calibrate(microscope, source or CameraSource(microscope, clock=served.clock),
                            wobble_settings=WOBBLE, quality_settings=QualitySettings(), clock=served.clock,
                            memory=C1Memory(tmp_path / "state"), progress=messages.append, **kwargs)
    return calibration, messages


def place(served, microscope, misalignment: tuple[int, int]) -> tuple[int, int]:
    aligned = served.truth()["aligned"]
    target = (round(aligned[0] + misalignment[0]), round(aligned[1] + misalignment[1]))
    from temalign.microscope import Position

    microscope.move_aperture(Position(*target))
    at = microscope.aperture()
    return at.x, at.y


def assert_back(served, microscope, start: tuple[int, int], c0: float) -> None:
    at = microscope.aperture()
    assert abs(at.x - start[0]) <= 3 and abs(at.y - start[1]) <= 3, (at, start)
    truth = served.truth()
    assert truth["c1_setpoint"] == pytest.approx(c0, rel=1e-12)
    assert not truth["faults"] or all(f["remaining"] == 0 for f in truth["faults"])


@pytest.mark.parametrize("misalignment", [(0, 0), (120, -150)])
def test_calibration_on_the_twin_is_the_nominal_geometry(make_twin, connect, tmp_path, misalignment) -> None:
    served = make_twin(seed=5)
    microscope = connect(served)
    start = place(served, microscope, misalignment)
    c0 = microscope.c1()
    calibration, messages = run(served, microscope, tmp_path)
    nominal = nominal_calibration().array
    error = np.linalg.norm(calibration.array - nominal) / np.linalg.norm(nominal)
    assert error < 0.03, (calibration.matrix, nominal)  # measured: under 1 %
    assert calibration.source == "measured" and calibration.c1 == pytest.approx(c0)
    assert calibration.residual_fov * 256 < 1.0
    assert_back(served, microscope, start, c0)
    assert any("aperture back" in m for m in messages)
    # the measured calibration recentres a stack as well as the nominal one
    from temalign.wobble.stack import wobble

    stack = wobble(microscope, CameraSource(microscope, clock=served.clock), fraction=0.03, settle_s=2.0,
                   clock=served.clock, memory=C1Memory(tmp_path / "state"))
    truth = -np.asarray(served.truth()["misalignment"])
    assert np.allclose(classical_estimate(stack, calibration).delta, truth, atol=5.0)


def test_a_mirrored_column_is_measured_as_such(make_twin, connect, tmp_path) -> None:
    """The twin's camera can be mirrored only through the protocol's frames: flip them in the source."""
    served = make_twin(seed=2)
    microscope = connect(served)
    camera = CameraSource(microscope, clock=served.clock)

    class Flipped:
        name, kind = "flipped", "raw"

        def grab(self) -> Frame:
            frame = camera.grab()
            return Frame(frame.data[::-1].copy(), frame.time, self.name, "raw")

    calibration, _ = run(served, microscope, tmp_path, source=Flipped())
    expected = np.diag([1.0, -1.0]) @ nominal_calibration().array
    assert np.allclose(calibration.array, expected, rtol=0.05, atol=0.001), calibration.matrix
    assert np.linalg.det(calibration.array) < 0


@pytest.mark.parametrize(("when", "kind", "params"), [
    (10, "error", {"count": 1, "methods": ["camera.acquire"]}),  # in the wobble after the x step
    (20, "drop", {"count": 1, "methods": ["aperture.move"]}),  # the move back after the y step
    (0, "stuck", {"count": 1}),  # the x step is acknowledged and not done
])
def test_the_aperture_goes_back_after_a_fault(make_twin, connect, tmp_path, when, kind, params) -> None:
    served = make_twin(seed=4)
    microscope = connect(served)
    start = place(served, microscope, (80, 60))
    c0 = microscope.c1()

    def hook(k: int) -> None:
        if k == when:
            served.fault(kind, **params)

    source = Hooked(CameraSource(microscope, clock=served.clock), hook)
    with pytest.raises((CalibrationError, ProtocolError)) as caught:
        run(served, microscope, tmp_path, source=source)
    if kind == "stuck":
        assert "did not reach its target" in str(caught.value)
    assert_back(served, microscope, start, c0)


def test_the_aperture_goes_back_after_an_interrupt(make_twin, connect, tmp_path) -> None:
    served = make_twin(seed=4)
    microscope = connect(served)
    start = place(served, microscope, (-50, 90))
    c0 = microscope.c1()

    def hook(k: int) -> None:
        if k == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(served, microscope, tmp_path, source=Hooked(CameraSource(microscope, clock=served.clock), hook))
    assert_back(served, microscope, start, c0)


def test_a_doubtful_stack_refuses_the_calibration(make_twin, connect, tmp_path) -> None:
    served = make_twin(seed=6)
    microscope = connect(served)
    start = place(served, microscope, (30, 30))
    c0 = microscope.c1()

    def hook(k: int) -> None:
        if k == 9:
            served.fault("blank", count=1)

    with pytest.raises(CalibrationError, match=r"doubtful stack \(no beam in frame 2"):
        run(served, microscope, tmp_path, source=Hooked(CameraSource(microscope, clock=served.clock), hook))
    assert_back(served, microscope, start, c0)


def test_a_bad_step_is_refused_before_anything_moves(twin_server, microscope, tmp_path) -> None:
    before = microscope.aperture()
    with pytest.raises(CalibrationError, match="step_units"):
        run(twin_server, microscope, tmp_path, step_units=5000)
    assert microscope.aperture() == before


def test_walks_that_do_not_follow_the_aperture_are_refused(twin_server, microscope, tmp_path) -> None:
    """A source that replays the first wobble's frames: the moves change nothing, M is singular."""
    camera = CameraSource(microscope, clock=twin_server.clock)
    first: list[Frame] = []

    class Replay:
        name, kind = "replay", "raw"

        grabs = 0

        def grab(self) -> Frame:
            frame = camera.grab()
            if len(first) < 7:
                first.append(frame)
            self.grabs += 1
            return first[(self.grabs - 1) % 7]

    start = microscope.aperture()
    with pytest.raises(CalibrationError, match="ill-conditioned"):
        run(twin_server, microscope, tmp_path, source=Replay())
    assert_back(twin_server, microscope, (start.x, start.y), microscope.c1())
