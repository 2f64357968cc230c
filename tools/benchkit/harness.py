"""A simulated column for benchmarks: a twin with its default drift on a SteppedClock, served over
real TCP in this process, and the daemon's own parts (`service.cycle.Parts`) wired to it.

The daemon code never sees the twin object; the harness (a benchmark playing the person and the
judge) reads the truth from it directly. Everything is seeded: the same seed gives the same drift,
the same faults and the same session."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from temalign import shipped
from temalign.clock import SteppedClock
from temalign.config.schema import Settings
from temalign.estimate.calibration import Calibration, nominal_calibration
from temalign.estimate.combined import CombinedEstimator
from temalign.estimate.model_estimator import ModelEstimator
from temalign.protocol.tcp_microscope import TcpMicroscope
from temalign.record.journal import Journal
from temalign.record.state import StateStore
from temalign.service.calibrate import CalibrationError, calibrate
from temalign.service.cycle import Parts
from temalign.wobble.c1_memory import C1Memory
from temalign.wobble.sources import CameraSource
from temalign_twin.model import Twin
from temalign_twin.service import TwinServer
from temalign_twin.settings import TwinSettings

REPO = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = shipped.default_model()
EXPOSURE_S = 0.1


@dataclass
class SimColumn:
    """One twin, its server, a client, a state directory and the daemon parts on them."""

    twin: Twin
    clock: SteppedClock
    server: Any
    microscope: TcpMicroscope
    state_dir: Path
    settings: Settings
    parts: Parts
    start_position: tuple[int, int]
    notes: dict[str, Any] = field(default_factory=dict)

    def truth(self) -> dict[str, Any]:
        return self.twin.truth()

    def misalignment(self) -> float:
        return float(np.hypot(*self.twin.truth()["misalignment"]))

    def offset(self, dx: float, dy: float) -> tuple[int, int]:
        """Put the aperture (dx, dy) off the aligned position (as a person or a drift would)."""
        aligned = self.twin.truth()["aligned"]
        target = (round(aligned[0] + dx), round(aligned[1] + dy))
        self.twin.move_aperture(*target)
        return target


def settings_for(address: tuple[str, int], state_dir: Path, overrides: dict[str, Any] | None = None
                 ) -> Settings:
    """The daemon's settings for a benchmark: live, metrics off, paths in `state_dir`."""
    raw: dict[str, Any] = {
        "microscope": {"address": f"{address[0]}:{address[1]}"},
        "paths": {"state_dir": str(state_dir)},
        "control": {"socket": str(state_dir / "control.sock")},
        "metrics": {"enabled": False},
        "schedule": {"mode": "live"},
    }
    for section, values in (overrides or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return Settings.model_validate(raw)


@contextlib.contextmanager
def sim_column(seed: int, *, overrides: dict[str, Any] | None = None,
               twin_overrides: dict[str, Any] | None = None, calibration: Calibration | None = None,
               model: Path = SHIPPED_MODEL, measure_calibration: bool | None = None) -> Iterator[SimColumn]:
    """A column for one run: the twin's default drift (seeded), live daemon settings with
    `overrides` (section -> keys) and twin settings with `twin_overrides`.

    The calibration: the one given; else, where the column is not twin.md's first-order one
    (traced optics) or when asked, the one the daemon's own `calibrate` measures there, aligned,
    as a person would run it before the session (where it fails, the column runs uncalibrated, as
    the daemon would, and `notes["calibration"]` says why); else the nominal one, exact for
    twin.md's geometry."""
    clock = SteppedClock()
    twin_settings = TwinSettings().updated(twin_overrides) if twin_overrides else TwinSettings()
    twin = Twin(twin_settings, clock, seed=seed)
    server = TwinServer(twin, host="127.0.0.1", port=0).start()
    state_dir = Path(tempfile.mkdtemp(prefix="ta-bench-"))
    microscope = TcpMicroscope(server.address[:2], client_name="temalign-bench")
    journal: Journal | None = None
    try:
        settings = settings_for(server.address[:2], state_dir, overrides)
        measure = twin_settings.optics.model != "first-order" if measure_calibration is None \
            else measure_calibration
        estimator = CombinedEstimator(ModelEstimator(model), calibration or nominal_calibration(),
                                      settings.estimator, settings.quality)
        journal = Journal(state_dir, clock=clock)
        source = CameraSource(microscope, EXPOSURE_S, clock)
        memory = C1Memory(state_dir)
        notes: dict[str, Any] = {}
        if calibration is None and measure:
            estimator.calibration, notes["calibration"] = _measured_calibration(
                microscope, source, settings, clock, memory, estimator.model)
        parts = Parts(microscope=microscope, source=source, estimator=estimator, settings=settings,
                      clock=clock, memory=memory, journal=journal, state=StateStore(state_dir),
                      session_start=None)
        start = tuple(int(v) for v in twin.truth()["aperture"])
        yield SimColumn(twin, clock, server, microscope, state_dir, settings, parts, start, notes)
    finally:
        if journal is not None:
            journal.close()
        with contextlib.suppress(Exception):
            microscope.close()
        with contextlib.suppress(Exception):
            server.close()
        shutil.rmtree(state_dir, ignore_errors=True)


def _measured_calibration(microscope: TcpMicroscope, source: CameraSource, settings: Settings,
                          clock: SteppedClock, memory: C1Memory, model: ModelEstimator
                          ) -> tuple[Calibration | None, str]:
    """The daemon's own calibration at the present (aligned) position, the model's output
    calibrated with it, or None and why not."""
    try:
        measured = calibrate(microscope, source, wobble_settings=settings.wobble,
                             quality_settings=settings.quality, clock=clock, memory=memory, model=model)
    except CalibrationError as error:
        return None, f"failed: {error}"
    return measured, "measured"
