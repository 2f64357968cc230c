"""The scenes of a holography session (temalign_twin/scenes.py) and real condenser astigmatism in
the traced optics: the wire's shadow where the settings put it, with bright fringes beside it; a
specimen edge that passes 40 to 70 % with a strong texture beside vacuum; line foci between the
wobble's extremes, at right angles, with a round disc between them. Each able to fail."""

from __future__ import annotations

import math
import select
import subprocess
import sys

import numpy as np
import pytest

from temalign import optics
from temalign.clock import SteppedClock
from temalign.optics import pixel_to_fov
from temalign_twin.cli import build_settings
from temalign_twin.columns import COLUMNS, REFERENCE
from temalign_twin.model import Twin
from temalign_twin.render import Specimen
from temalign_twin.scenes import SCENES, scene_transmission
from temalign_twin.settings import SceneSettings, TwinSettings
from temalign_twin.traced import stigmation_of, trace

PX = 256
XS, YS = pixel_to_fov(np.arange(PX), np.arange(PX), PX, PX)


def transmission_map(kind: str, **knobs: float) -> np.ndarray:
    st = TwinSettings().updated({"scene": {"kind": kind, **knobs}})
    found = Specimen(3).texture(st)
    assert found is not None
    return found


@pytest.mark.parametrize("offset,angle", [(-0.04, 90.0), (0.1, 90.0), (0.05, 0.0)])
def test_the_biprism_shadow_is_where_the_wire_is(offset: float, angle: float) -> None:
    """A dark band of the wire's width, centred where the settings put it, nearly black, with a
    first fringe brighter than vacuum just outside each edge."""
    t = transmission_map("biprism", wire_offset_fov=offset, wire_angle_deg=angle, wire_width_fov=0.03)
    profile = t.mean(axis=0) if angle == 90.0 else t.mean(axis=1)
    coordinate = XS if angle == 90.0 else YS
    # the offset is along the wire's direction turned by -90 deg: +x for a wire along y, -y for one along x
    offset = offset if angle == 90.0 else -offset
    dark = coordinate[profile < 0.5]
    assert dark.mean() == pytest.approx(offset, abs=1.0 / PX)
    assert dark.max() - dark.min() == pytest.approx(0.03, abs=2.0 / PX)
    assert profile.min() < 0.1
    beside = np.abs(np.abs(coordinate - offset) - 0.015) < 0.012
    assert profile[beside].max() > 1.2
    far = np.abs(coordinate - offset) > 0.2
    assert profile[far] == pytest.approx(1.0, abs=0.02)


def test_the_biprism_shadow_is_in_the_frames() -> None:
    """The wire's shadow darkens a traced disc that it crosses, and only where it crosses."""
    st = build_settings("default", None, ["camera.shot_noise=false", "camera.read_noise=0",
                                          "camera.hot_pixel_fraction=0"],
                        optics="traced", column_name="reference", scene_name="biprism")
    twin = Twin(st, SteppedClock(), seed=1)
    twin.set_c1(st.optics.c_f * 0.97)
    twin.advance(3.0)
    frame = twin.acquire().astype(float) - st.camera.dark_offset
    row = frame[PX // 2]
    wire = np.abs(XS - st.scene.wire_offset_fov) < 0.004
    inside = (np.abs(XS) < 0.1) & ~(np.abs(XS - st.scene.wire_offset_fov) < 0.03)
    assert row[wire].max() < 0.1 * np.median(row[inside])


def test_a_specimen_edge_is_half_vacuum_half_textured_specimen() -> None:
    scene = SceneSettings(kind="specimen-edge", edge_angle_deg=0.0, edge_offset_fov=0.0)
    st = TwinSettings().updated({"scene": scene.model_dump()})
    t = Specimen(5).texture(st)
    assert t is not None
    vacuum, specimen = t[:, XS < -0.1], t[:, XS > 0.1]
    assert vacuum == pytest.approx(1.0, abs=1e-3)
    assert 0.4 <= float(specimen.mean()) <= 0.7
    assert float(specimen.std() / specimen.mean()) > 0.2  # strong texture, unlike the carbon film's 0.15
    # the edge is rough: where it crosses each row differs by more than a pixel
    crossing = [XS[np.argmax(row < 0.9)] for row in t]
    assert np.ptp(crossing) > 2.0 / PX


def test_holography_is_edge_wire_and_hologram_fringes() -> None:
    t = transmission_map("holography")
    st = SceneSettings(kind="holography")
    band = np.abs(XS - st.wire_offset_fov) - st.wire_width_fov / 2
    near = (band > 0.02) & (band < 0.06)
    rows = t[:40]  # the top rows: vacuum side of the default edge
    fringes = rows[:, near].mean(axis=0)
    spectrum = np.abs(np.fft.rfft(fringes - fringes.mean()))
    period_px = st.hologram_fringe_period_fov * PX
    peak = int(np.argmax(spectrum[1:]) + 1)
    assert len(fringes) / peak == pytest.approx(period_px, rel=0.25)
    left_of_wire = st.wire_offset_fov > XS
    assert t[:, left_of_wire].mean() > t[:, XS > 0.1].mean()  # specimen side is darker


def test_vacuum_has_nothing_in_the_beam_and_specimen_is_the_default() -> None:
    assert Specimen(1).texture(TwinSettings().updated({"scene": {"kind": "vacuum"}})) is None
    default, named = TwinSettings(), build_settings("default", None, [], scene_name="specimen")
    assert default == named
    carbon = Specimen(2).texture(default)
    assert carbon is not None  # the amorphous film of twin.md, everywhere: mean 1, its own contrast
    assert float(carbon.mean()) == pytest.approx(1.0, abs=0.02)
    assert float(carbon.std()) == pytest.approx(default.specimen.texture_contrast, rel=0.3)
    edge = scene_transmission(SceneSettings(kind="specimen-edge"), PX, PX, 2, None)
    assert edge is not None and not np.array_equal(edge, np.ones_like(edge))


# ---- astigmatism: line foci ----------------------------------------------------------------------


def shape(c: float, e: float, angle: float = 25.0) -> tuple[float, float, float]:
    """Semi-axes (FOV, long first) and the long axis's angle (deg, mod 180) of the traced beam's
    intensity, from its second moments."""
    disc = trace(c, (0.0, 0.0), REFERENCE, stigmation=stigmation_of(e, angle, REFERENCE))
    mean, box = disc.expected_electrons(1.0, TwinSettings())
    ys, xs = np.meshgrid(YS[box[0]], XS[box[1]], indexing="ij")
    w = mean / mean.sum()
    mx, my = float((w * xs).sum()), float((w * ys).sum())
    cov = np.array([[(w * (xs - mx) ** 2).sum(), (w * (xs - mx) * (ys - my)).sum()],
                    [(w * (xs - mx) * (ys - my)).sum(), (w * (ys - my) ** 2).sum()]])
    values, vectors = np.linalg.eigh(cov)
    long_axis = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1])) % 180.0
    return 2.0 * math.sqrt(values[1]), 2.0 * math.sqrt(values[0]), long_axis


def axes_angle(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def test_astigmatism_has_two_line_foci_at_right_angles_inside_the_wobble() -> None:
    """Ellipticity 0.5: the two axes focus at lambda = -+0.03 (u near -+1.5 %), so the wobble's
    frames at -+1 and 2 % are lines, at right angles to each other; the middle frame is the round
    circle of least confusion, not a spot; the extremes are ellipses of axis ratio about 3, with
    the long axis where the setting puts it on the strong side."""
    c_f = REFERENCE.c_f
    frames = [shape(float(c), 0.5) for c in optics.wobble_values(c_f, 0.03)]
    weak_line, strong_line = frames[1], frames[5]
    assert weak_line[0] / weak_line[1] > 4.0 and strong_line[0] / strong_line[1] > 4.0
    assert axes_angle(weak_line[2], strong_line[2]) == pytest.approx(90.0, abs=8.0)
    middle = frames[3]
    assert middle[0] / middle[1] < 1.2 and middle[0] > 0.05
    strong = frames[6]
    assert strong[0] / strong[1] == pytest.approx(3.0, rel=0.2)
    assert axes_angle(strong[2], 25.0) < 5.0


def test_without_astigmatism_no_frame_is_a_line() -> None:
    for c in optics.wobble_values(REFERENCE.c_f, 0.03):
        long, short, _ = shape(float(c), 0.0)
        assert long / short < 1.3


def test_the_stigmated_scene_is_ellipticity_half_and_traced_frames_show_it() -> None:
    st = build_settings("default", None, ["camera.shot_noise=false", "camera.read_noise=0",
                                          "camera.hot_pixel_fraction=0"],
                        optics="traced", column_name="quarter-turn-mirrored", scene_name="stigmated")
    assert st.optics.ellipticity == 0.5 and st.scene.kind == "vacuum"
    twin = Twin(st, SteppedClock(), seed=1)
    lines = []
    for c in (st.optics.c_f * 0.985, st.optics.c_f * 1.015):
        twin.set_c1(c)
        twin.advance(3.0)
        frame = twin.acquire().astype(float) - st.camera.dark_offset
        mask = frame > 0.3 * frame.max()
        ys, xs = np.nonzero(mask)
        cov = np.cov(np.stack([xs, ys]).astype(float))
        values = np.linalg.eigvalsh(cov)
        lines.append(values[1] / max(values[0], 1e-9))
    assert min(lines) > 16.0  # axis ratio over 4 at both line foci


@pytest.mark.parametrize("name", list(SCENES))
def test_cli_serves_every_scene(name: str) -> None:
    from test_twin_service import Raw

    proc = subprocess.Popen([sys.executable, "-m", "temalign", "twin", "--port", "0", "--time-scale", "0",
                             "--optics", "traced", "--column", list(COLUMNS)[1], "--scene", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready and proc.stdout else ""
        assert f"scene {name})" in line, line
        raw = Raw(("127.0.0.1", int(line.split(":")[1].split()[0])))
        raw.call("hello", client="test")
        frame = raw.call("camera.acquire")
        assert (frame["width"], frame["height"]) == (256, 256)
        raw.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_cli_rejects_an_unknown_scene_by_name() -> None:
    proc = subprocess.run([sys.executable, "-m", "temalign", "twin", "--port", "0", "--scene", "fog"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert "unknown scene 'fog'; known: specimen" in proc.stderr and "Traceback" not in proc.stderr


# ---- the spot measurement: a line focus is a beam, clutter is not ---------------------------------


def _frame(mask: np.ndarray, level: float = 3000.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 + rng.normal(0.0, 3.0, mask.shape) + level * mask


def _line(length_px: float, width_px: float, angle_deg: float, centre: tuple[float, float] = (128.0, 128.0)
          ) -> np.ndarray:
    ii, jj = np.mgrid[0:PX, 0:PX].astype(float)
    a = math.radians(angle_deg)
    along = (jj - centre[0]) * math.cos(a) + (ii - centre[1]) * math.sin(a)
    across = -(jj - centre[0]) * math.sin(a) + (ii - centre[1]) * math.cos(a)
    return ((np.abs(along) <= length_px / 2) & (np.abs(across) <= width_px / 2)).astype(float)


@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0])
def test_a_line_focus_is_measured_as_one_beam_at_its_centre(angle: float) -> None:
    from temalign.estimate.spots import measure_spot

    spot = measure_spot(_frame(_line(60.0, 4.0, angle, (140.0, 110.0))))
    assert spot.found
    x, y = pixel_to_fov(np.array([140.0]), np.array([110.0]), PX, PX)
    assert spot.centre == pytest.approx((float(x[0]), float(y[0])), abs=0.5 / PX)


def test_a_line_cut_by_a_wire_shadow_is_still_one_beam() -> None:
    from temalign.estimate.spots import measure_spot

    cut = _line(60.0, 4.0, 0.0) * (np.abs(np.arange(PX) - 120.0) > 3)[None, :]
    assert measure_spot(_frame(cut)).found


def test_two_spots_in_a_row_and_scattered_clutter_are_not_a_beam() -> None:
    from temalign.estimate.spots import measure_spot

    far_apart = _line(10.0, 4.0, 0.0, (90.0, 128.0)) + _line(10.0, 4.0, 0.0, (170.0, 128.0))
    assert not measure_spot(_frame(far_apart)).found
    # close enough that their moments pass for one ellipse: the gap along the line tells them apart
    close = _line(10.0, 4.0, 0.0, (116.0, 128.0)) + _line(10.0, 4.0, 0.0, (140.0, 128.0))
    assert not measure_spot(_frame(close)).found
    rng = np.random.default_rng(3)
    clutter = np.zeros((PX, PX))
    for _ in range(12):
        i, j = rng.integers(20, PX - 20, 2)
        clutter[i:i + 2, j:j + 2] = 1.0
    assert not measure_spot(_frame(clutter)).found


def test_a_coherent_columns_saturated_focus_is_a_beam_not_lost_signal() -> None:
    """The low-magnification column's small, coherent crossover focuses a round beam into a spot of
    a few pixels that saturates: its clipped counts are a tenth of the wide frames', which the
    beam-conservation rule read as a missing beam; a frame with saturated pixels is a beam."""
    from temalign.config.schema import QualitySettings
    from temalign.estimate.quality import assess_stack
    from temalign.frames import WobbleStack

    st = TwinSettings().updated({"optics": {"model": "traced", "column": "low-mag-mirrored",
                                            "ellipticity": 0.0}})
    twin = Twin(st, SteppedClock(), seed=6)
    frames = []
    for c in optics.wobble_values(st.optics.c_f, 0.03):
        twin.set_c1(float(c))
        twin.advance(3.0)
        frames.append(twin.acquire())
    images = np.stack(frames)
    assert images[3].max() >= 65535
    values = tuple(float(c) for c in optics.wobble_values(st.optics.c_f, 0.03))
    stack = WobbleStack(images=images.astype(np.float32), c1_values=values, times=(0.0,) * 7,
                        c1_before=st.optics.c_f, wobble_fraction=0.03, source="twin")
    quality = assess_stack(stack, QualitySettings())
    assert quality.ok, quality.reasons
