"""The wobble against the real twin over TCP: the C1 series, the frames, and invariant 2 of
safety.md ("C1 always comes back") under every way a wobble can end, checked on the twin's truth."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from temalign import optics
from temalign.clock import ScaledClock
from temalign.estimate.spots import measure_spot, measure_stack
from temalign.estimate.walk import fit_walk
from temalign.frames import Frame
from temalign.optics import wobble_values
from temalign.protocol.errors import ConnectionLost, DeadlineExceeded, HardwareFault, ProtocolError
from temalign.wobble.c1_memory import RECORD_NAME, C1Memory
from temalign.wobble.errors import (
    C1RestoreFailed,
    CameraProtectionAbort,
    LensDidNotTake,
    PendingRecord,
    SourceError,
    WobbleError,
)
from temalign.wobble.report import describe_walk, is_concentric
from temalign.wobble.sources import CameraSource
from temalign.wobble.stack import wobble

pytestmark = pytest.mark.timeout(60)

FRACTION = 0.03
SETTLE_S = 2.0


class Boom(RuntimeError):
    """What a broken image source raises."""


class Hooked:
    """A source that runs `hook(k)` before delegating grab k: injects a twin fault so that the
    next protocol call fails, or raises in place of the frame."""

    def __init__(self, source, hook) -> None:
        self.source, self.hook = source, hook
        self.name, self.kind = source.name, source.kind
        self.grabs = 0

    def grab(self) -> Frame:
        k = self.grabs
        self.grabs += 1
        self.hook(k)
        return self.source.grab()


def hooked(served, microscope, hook) -> Hooked:
    return Hooked(CameraSource(microscope, clock=served.clock), hook)


def run(served, microscope, tmp_path: Path, source=None, **kwargs):
    kwargs.setdefault("fraction", FRACTION)
    kwargs.setdefault("settle_s", SETTLE_S)
    return wobble(microscope, source or CameraSource(microscope, clock=served.clock), clock=served.clock,
                  memory=C1Memory(tmp_path / "state"), **kwargs)


def assert_c1_back(served, c0: float) -> None:
    truth = served.truth()
    assert truth["c1_setpoint"] == pytest.approx(c0, rel=1e-12), "the lens does not hold C1 before the wobble"
    assert truth["c1"] == pytest.approx(c0, rel=1e-12), "the last command was not the restore"


def test_the_wobble_series_is_the_twin_md_formula() -> None:
    series = wobble_values(1.2, 0.03)
    assert series == pytest.approx([1.164, 1.176, 1.188, 1.2, 1.212, 1.224, 1.236], rel=1e-12)
    assert wobble_values(1.224, 0.02) == pytest.approx([1.224 * (1 + 0.02 * (k - 3) / 3) for k in range(7)],
                                                       rel=1e-15)
    assert series[3] == 1.2
    assert len(series) == 7


def test_wobble_steps_c1_waits_and_restores(twin_server, microscope, tmp_path) -> None:
    c0 = microscope.c1()
    seen = []

    def check_record_and_lens(k: int) -> None:
        record = json.loads((tmp_path / "state" / RECORD_NAME).read_text())
        assert record["c1_before"] == c0
        seen.append((k, twin_server.truth()))

    stack = run(twin_server, microscope, tmp_path,
                source=Hooked(CameraSource(microscope, clock=twin_server.clock), check_record_and_lens))

    assert stack.images.shape == (7, 256, 256) and stack.images.dtype == np.float32
    assert stack.c1_values == pytest.approx(wobble_values(c0, FRACTION), rel=1e-12)
    assert stack.c1_before == c0 and stack.wobble_fraction == FRACTION
    assert (stack.source, stack.kind) == ("camera", "raw")
    assert np.all(np.diff(stack.times) >= SETTLE_S), "frames closer together than the settle time"
    for k, truth in seen:  # at each grab the lens held c_k and had settled
        assert truth["c1_setpoint"] == pytest.approx(stack.c1_values[k], rel=1e-12)
        assert truth["lens_settled"], f"frame {k} grabbed before the lens settled"
    radii = [measure_spot(image).radius for image in stack.images]
    for k, c in enumerate(stack.c1_values):
        assert radii[k] == pytest.approx(optics.spot_radius(c, 1.2), rel=0.1)
    assert_c1_back(twin_server, c0)
    assert not (tmp_path / "state" / RECORD_NAME).exists(), "record left behind after a good wobble"
    assert describe_walk(fit_walk(stack), 256, FRACTION).startswith("walk: concentric")


def test_chosen_steps_only_and_no_settle_where_c1_did_not_change(twin_server, microscope, tmp_path) -> None:
    """The two-frame check of service.cycle: C1 as it is (no change, no settle), then the upper end
    (one settle); C1 comes back as after a full wobble."""
    c0 = microscope.c1()
    seen = []
    sleeps: list[float] = []

    class CountingClock:
        def __getattr__(self, name: str):
            return getattr(twin_server.clock, name)

        def sleep(self, seconds: float) -> None:
            sleeps.append(seconds)
            twin_server.clock.sleep(seconds)

    source = Hooked(CameraSource(microscope, clock=twin_server.clock),
                    lambda k: seen.append(twin_server.truth()))
    stack = wobble(microscope, source, fraction=FRACTION, settle_s=SETTLE_S, clock=CountingClock(),
                   memory=C1Memory(tmp_path / "state"), steps=(3, 6))

    assert stack.images.shape == (2, 256, 256)
    assert stack.c1_values == pytest.approx([c0, wobble_values(c0, FRACTION)[6]], rel=1e-12)
    assert sleeps == [SETTLE_S], "one settle expected: C1 changed once"
    assert all(truth["lens_settled"] for truth in seen)
    assert_c1_back(twin_server, c0)
    assert not (tmp_path / "state" / RECORD_NAME).exists()


@pytest.mark.parametrize("steps", [(3,), (3, 3), (3, 7), (-1, 3), (True, 3), (3.0, 6)])
def test_bad_steps_are_refused_before_anything_moves(twin_server, microscope, tmp_path, steps) -> None:
    c0 = microscope.c1()
    with pytest.raises(ValueError, match="steps"):
        run(twin_server, microscope, tmp_path, steps=steps)
    assert twin_server.truth()["c1_setpoint"] == c0 and twin_server.truth()["c1"] == c0


def test_misaligned_stack_walks_as_the_geometry_says(twin_server, microscope, tmp_path) -> None:
    home = microscope.aperture()
    microscope.move_aperture(type(home)(home.x + 150, home.y))
    stack = run(twin_server, microscope, tmp_path)
    m = twin_server.truth()["misalignment"]
    for c, image in zip(stack.c1_values, stack.images, strict=True):
        want = optics.spot_centre(c, 1.2, m)
        assert np.hypot(*(np.array(measure_spot(image).centre) - want)) * 256 < 1.0
    walk = fit_walk(stack, spots=measure_stack(stack))
    assert not isinstance(walk, str)
    assert not is_concentric(walk, FRACTION)
    assert walk.amplitude(FRACTION) == pytest.approx(1.25 * 0.15, rel=0.05)


# ---- invariant 2: every failure, at every step --------------------------------------------------

STEPS = range(7)


def inject_before(served, method: str, step: int, kind: str, **params):
    """A hook that makes the step-th call of `method` fail with fault `kind`.

    lens.set of step k happens after grab k - 1; camera.acquire of step k inside grab k."""
    fault = {"kind": kind, "count": 1, "methods": [method], **params}

    def hook(k: int) -> None:
        if (method == "lens.set" and k == step - 1) or (method == "camera.acquire" and k == step):
            served.call("twin.fault", **fault)

    if method == "lens.set" and step == 0:
        served.call("twin.fault", **fault)
    return hook


@pytest.mark.parametrize("method", ["lens.set", "camera.acquire"])
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize(("kind", "expected"), [("error", HardwareFault), ("drop", ConnectionLost)])
def test_c1_restored_after_protocol_failure(make_twin, connect, tmp_path, kind, expected, step,
                                            method) -> None:
    served = make_twin()
    microscope = connect(served)
    c0 = microscope.c1()
    hook = inject_before(served, method, step, kind)
    with pytest.raises(expected):
        run(served, microscope, tmp_path, source=Hooked(CameraSource(microscope, clock=served.clock), hook))
    assert_c1_back(served, c0)
    assert not (tmp_path / "state" / RECORD_NAME).exists()


@pytest.mark.parametrize("method", ["lens.set", "camera.acquire"])
@pytest.mark.parametrize("step", STEPS)
def test_c1_restored_after_deadline(make_twin, connect, tmp_path, step, method) -> None:
    served = make_twin()
    microscope = connect(served, call_timeout_s=0.3, acquire_timeout_s=0.3)
    c0 = microscope.c1()
    hook = inject_before(served, method, step, "silence")
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        run(served, microscope, tmp_path, source=Hooked(CameraSource(microscope, clock=served.clock), hook))
    assert time.monotonic() - started < 5.0
    assert_c1_back(served, c0)


@pytest.mark.parametrize("step", [0, 2, 6])
def test_a_late_lens_set_after_a_deadline_does_not_leave_c1_off(make_twin, connect, tmp_path, step) -> None:
    """The server carries out a lens.set after the client's deadline (and after the restore): the
    wobble waits the microscope's late_write_grace_s and puts C1 back again. Found by the fault
    campaign (seed 757)."""
    served = make_twin()
    microscope = connect(served, call_timeout_s=0.3)
    assert microscope.late_write_grace_s == 0.3
    c0 = microscope.c1()
    hook = inject_before(served, "lens.set", step, "slow", seconds=0.45 * served.clock.scale)
    with pytest.raises(DeadlineExceeded):
        run(served, microscope, tmp_path, source=Hooked(CameraSource(microscope, clock=served.clock), hook))
    time.sleep(0.5)  # long after the late command landed
    assert_c1_back(served, c0)
    assert not (tmp_path / "state" / RECORD_NAME).exists()


@pytest.mark.parametrize(("method", "waits"), [("lens.set", [0.3]), ("camera.acquire", [])])
def test_only_an_unanswered_lens_set_is_waited_for(make_twin, connect, tmp_path, monkeypatch, method,
                                                   waits) -> None:
    """The grace is for a command that may still land: a lens.set without its reply. A camera that
    missed its deadline changes nothing on the column, so nothing is waited for."""
    from temalign.wobble import stack as stack_module

    served = make_twin()
    microscope = connect(served, call_timeout_s=0.3, acquire_timeout_s=0.3)
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(stack_module.time, "sleep", sleep)
    hook = inject_before(served, method, 2, "silence")
    with pytest.raises(DeadlineExceeded):
        run(served, microscope, tmp_path, source=Hooked(CameraSource(microscope, clock=served.clock), hook))
    assert [s for s in slept if s >= 0.1] == waits  # the clock's own sleeps are milliseconds here


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("raised", [Boom("camera software crashed"), KeyboardInterrupt()])
def test_c1_restored_after_source_failure_or_interrupt(twin_server, microscope, tmp_path, step,
                                                       raised) -> None:
    c0 = microscope.c1()

    def hook(k: int) -> None:
        if k == step:
            raise raised

    with pytest.raises(type(raised)):
        run(twin_server, microscope, tmp_path, source=hooked(twin_server, microscope, hook))
    assert_c1_back(twin_server, c0)
    assert not (tmp_path / "state" / RECORD_NAME).exists()


def test_c1_restored_after_interrupt_in_the_middle_of_a_call(twin_server, microscope, tmp_path) -> None:
    """Ctrl-C while camera.acquire waits for its reply: the reply arrives later on the old
    connection, so the first restore call reads a stale reply; the restore must get past it."""
    c0 = microscope.c1()
    main_thread = threading.get_ident()

    def hook(k: int) -> None:
        if k == 3:  # about one wall second late; SIGINT arrives while the client waits
            twin_server.fault("slow", count=1, methods=["camera.acquire"], seconds=1000.0)
            threading.Timer(0.2, signal.pthread_kill, (main_thread, signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        run(twin_server, microscope, tmp_path, source=hooked(twin_server, microscope, hook))
    assert_c1_back(twin_server, c0)
    assert not (tmp_path / "state" / RECORD_NAME).exists()


def test_restore_retries_through_repeated_errors(twin_server, microscope, tmp_path) -> None:
    c0 = microscope.c1()
    # step 3's lens.set fails, then the first two restore attempts fail too
    first = inject_before(twin_server, "lens.set", 3, "error")

    def hook(k: int) -> None:
        first(k)
        if k == 2:
            twin_server.fault("error", count=2, methods=["lens.set"])

    hooked = Hooked(CameraSource(microscope, clock=twin_server.clock), hook)
    with pytest.raises(HardwareFault):
        run(twin_server, microscope, tmp_path, source=hooked, restore_attempts=3)
    assert_c1_back(twin_server, c0)


def test_restore_that_fails_keeps_the_record_for_the_next_start(twin_server, microscope, tmp_path) -> None:
    c0 = microscope.c1()
    series = wobble_values(c0, FRACTION)

    def hook(k: int) -> None:
        if k == 4:  # from step 5 on, lens.set always fails
            twin_server.fault("error", methods=["lens.set"])

    with pytest.raises(C1RestoreFailed) as raised:
        run(twin_server, microscope, tmp_path, restore_attempts=3,
            source=Hooked(CameraSource(microscope, clock=twin_server.clock), hook))
    message = str(raised.value)
    assert "may be off" in message and "next start" in message and f"{c0:.6g}" in message
    assert isinstance(raised.value.__cause__, HardwareFault)
    assert twin_server.lens_reads() == pytest.approx(series[4])
    record = json.loads((tmp_path / "state" / RECORD_NAME).read_text())
    assert record["c1_before"] == c0

    twin_server.call("twin.clear_faults")
    said = C1Memory(tmp_path / "state").recover(microscope)
    assert "restored" in said
    assert twin_server.lens_reads() == pytest.approx(c0, rel=1e-12)
    assert not (tmp_path / "state" / RECORD_NAME).exists()


@pytest.mark.parametrize("step", [0, 3, 6])
def test_lens_that_ignores_its_value_is_detected(twin_server, microscope, tmp_path, step) -> None:
    c0 = microscope.c1()

    def hook(k: int) -> None:
        if k == step - 1:
            twin_server.fault("lens_ignore", count=1)

    if step == 0:
        twin_server.fault("lens_ignore", count=1)
    expected = rf"frame {step}: C1 was set to .* the lens did not take"
    with pytest.raises(LensDidNotTake, match=expected) as raised:
        run(twin_server, microscope, tmp_path, source=hooked(twin_server, microscope, hook))
    assert "C1 restored" in str(raised.value)
    assert_c1_back(twin_server, c0)


def test_saturated_frame_aborts_at_once(make_twin, connect, tmp_path) -> None:
    served = make_twin({"beam": {"electrons_per_s": 5e9}})  # even the widest discs saturate
    microscope = connect(served)
    c0 = microscope.c1()
    source = Hooked(CameraSource(microscope, clock=served.clock), lambda k: None)
    with pytest.raises(CameraProtectionAbort, match=r"frame 0 .* saturated .* C1 restored"):
        run(served, microscope, tmp_path, source=source)
    assert source.grabs == 1, "the wobble went on after a saturated frame"
    assert_c1_back(served, c0)


def test_focused_spot_saturating_is_no_reason_to_abort(twin_server, microscope, tmp_path) -> None:
    stack = run(twin_server, microscope, tmp_path)
    assert stack.images[3].max() >= 65535, "the twin's focused spot should saturate at the defaults"
    assert max(stack.meta["saturated_fraction"]) < 0.01


def test_frames_of_changing_size_are_an_error(twin_server, microscope, tmp_path) -> None:
    c0 = microscope.c1()

    def hook(k: int) -> None:
        if k == 2:
            twin_server.call("twin.configure", overrides={"camera": {"width": 128}})

    with pytest.raises(SourceError, match="frame 2: 128x256 pixels, but frame 0 was 256x256"):
        run(twin_server, microscope, tmp_path, source=hooked(twin_server, microscope, hook))
    assert_c1_back(twin_server, c0)


def test_out_of_limits_series_changes_nothing(twin_server, microscope, tmp_path) -> None:
    c0 = microscope.c1()
    twin_server.call("twin.configure", overrides={"lens": {"limits": [1.19, 1.3]}})
    microscope.client.disconnect()  # limits come with hello
    with pytest.raises(WobbleError, match=r"outside the lens limits .* C1 was not changed"):
        run(twin_server, microscope, tmp_path)
    assert twin_server.truth()["c1"] == c0
    assert not (tmp_path / "state" / RECORD_NAME).exists()


def test_earlier_unrestored_record_blocks_the_wobble(twin_server, microscope, tmp_path) -> None:
    c0 = microscope.c1()
    C1Memory(tmp_path / "state").begin(1.3, wobble_values(1.3, FRACTION))
    with pytest.raises(PendingRecord, match="earlier wobble left C1 unrestored"):
        run(twin_server, microscope, tmp_path)
    assert twin_server.truth()["c1"] == c0
    assert json.loads((tmp_path / "state" / RECORD_NAME).read_text())["c1_before"] == 1.3


def test_bad_arguments_are_refused_before_anything_moves(twin_server, microscope, tmp_path) -> None:
    for kwargs in ({"fraction": 0.0}, {"fraction": float("nan")}, {"settle_s": -1.0},
                   {"restore_attempts": 0}, {"saturation_abort_fraction": 0.0}):
        with pytest.raises(ValueError):
            run(twin_server, microscope, tmp_path, **kwargs)
    assert twin_server.truth()["c1"] == microscope.c1()


# ---- C1Memory: what a record left behind means --------------------------------------------------


def test_record_is_written_atomically(tmp_path) -> None:
    memory = C1Memory(tmp_path / "new" / "state")
    memory.begin(1.2, wobble_values(1.2, FRACTION))
    assert sorted(p.name for p in memory.state_dir.iterdir()) == [RECORD_NAME]
    data = json.loads(memory.path.read_text())
    assert data["c1_before"] == 1.2 and data["values"] == list(wobble_values(1.2, FRACTION))
    assert memory.load().c1_before == 1.2
    memory.clear()
    assert not memory.exists() and memory.load() is None


@pytest.mark.parametrize("k", [0, 2, 3, 6])
def test_recover_restores_a_value_the_wobble_set(microscope, twin_server, tmp_path, k) -> None:
    c0 = microscope.c1()
    series = wobble_values(c0, FRACTION)
    memory = C1Memory(tmp_path)
    memory.begin(c0, series)
    microscope.set_c1(series[k])  # died here
    said = memory.recover(microscope)
    if series[k] == c0:
        assert "already back" in said
    else:
        assert "restored" in said and f"{series[k]:.6g}" in said
    assert twin_server.lens_reads() == c0
    assert not memory.exists()


def test_recover_leaves_c1_alone_when_someone_changed_it(microscope, twin_server, tmp_path) -> None:
    c0 = microscope.c1()
    memory = C1Memory(tmp_path)
    memory.begin(c0, wobble_values(c0, FRACTION))
    microscope.set_c1(1.25)  # a person, after the crash
    said = memory.recover(microscope)
    assert "someone changed C1" in said and "left alone" in said
    assert twin_server.lens_reads() == 1.25
    assert not memory.exists()


def test_recover_without_record(microscope, tmp_path) -> None:
    assert C1Memory(tmp_path).recover(microscope) == "no unfinished wobble on record"


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe", b"[1, 2]",
                                     b'{"version": 1, "c1_before": "x", "values": []}',
                                     b'{"version": 1, "c1_before": NaN, "values": []}'])
def test_corrupt_record_is_reported_never_crashes(microscope, twin_server, tmp_path, content) -> None:
    c0 = microscope.c1()
    memory = C1Memory(tmp_path)
    memory.path.write_bytes(content)
    said = memory.recover(microscope)
    assert "corrupt" in said and "left alone" in said and f"{c0:.6g}" in said
    assert twin_server.truth()["c1"] == c0
    assert not memory.exists(), "a corrupt record would block every later wobble"
    assert len(list(tmp_path.glob(f"{RECORD_NAME}.corrupt-*"))) == 1
    memory.begin(c0, wobble_values(c0, FRACTION))  # the next wobble can start


def test_recover_that_cannot_restore_keeps_the_record(microscope, twin_server, tmp_path) -> None:
    c0 = microscope.c1()
    memory = C1Memory(tmp_path)
    series = wobble_values(c0, FRACTION)
    memory.begin(c0, series)
    microscope.set_c1(series[1])
    twin_server.fault("error", methods=["lens.set"])
    with pytest.raises(C1RestoreFailed, match="may be off"):
        memory.recover(microscope)
    assert memory.exists()


KILLED_WOBBLE = textwrap.dedent("""
    import sys, time
    from temalign.clock import ScaledClock
    from temalign.protocol.tcp_microscope import TcpMicroscope
    from temalign.wobble.c1_memory import C1Memory
    from temalign.wobble.sources import CameraSource
    from temalign.wobble.stack import wobble

    class Stall:
        name, kind = "camera", "raw"
        def __init__(self, inner): self.inner, self.k = inner, 0
        def grab(self):
            if self.k == 4:
                print("stalled", flush=True)
                time.sleep(60)
            self.k += 1
            return self.inner.grab()

    clock = ScaledClock(1000.0)
    m = TcpMicroscope((sys.argv[1], int(sys.argv[2])))
    wobble(m, Stall(CameraSource(m, clock=clock)), fraction=0.03, settle_s=2.0, clock=clock,
           memory=C1Memory(sys.argv[3]))
""")


def test_wobble_killed_mid_way_is_restored_at_next_start(twin_server, microscope, tmp_path) -> None:
    c0 = microscope.c1()
    host, port = twin_server.address
    process = subprocess.Popen([sys.executable, "-c", KILLED_WOBBLE, host, str(port), str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == "stalled", process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    series = wobble_values(c0, FRACTION)
    assert twin_server.lens_reads() == pytest.approx(series[4]), "the kill should leave C1 mid-wobble"
    said = C1Memory(tmp_path).recover(microscope)
    assert "restored" in said
    assert twin_server.lens_reads() == c0


def test_unreachable_microscope_changes_nothing(tmp_path) -> None:
    from temalign.protocol.tcp_microscope import TcpMicroscope

    with TcpMicroscope(("127.0.0.1", 1), connect_timeout_s=1.0) as unreachable, pytest.raises(ProtocolError):
        wobble(unreachable, CameraSource(unreachable), fraction=FRACTION, settle_s=0.0,
               clock=ScaledClock(1000), memory=C1Memory(tmp_path))
    assert not (tmp_path / RECORD_NAME).exists()


# ---- temalign wobble --------------------------------------------------------------------------


def write_config(tmp_path: Path, address: tuple[str, int], extra: str = "") -> Path:
    path = tmp_path / "temalign.yaml"
    path.write_text(f'microscope:\n  address: "{address[0]}:{address[1]}"\n'
                    "wobble:\n  settle_s: 0.01\n"  # 10 twin seconds at the fixture's 1000x
                    f"paths:\n  state_dir: state\n{extra}")
    return path


def test_wobble_command_aligned_then_misaligned(twin_server, microscope, tmp_path, capsys) -> None:
    from temalign.cli import main

    config = write_config(tmp_path, twin_server.address)
    assert main(["wobble", "--config", str(config), "--save", str(tmp_path / "stack.npz")]) == 0
    out = capsys.readouterr().out
    assert "recovery: no unfinished wobble on record" in out
    rows = [line for line in out.splitlines() if re.match(r"  \d  ", line)]
    assert [int(r.split()[0]) for r in rows] == list(range(7))
    assert "walk: concentric" in out
    saved = np.load(tmp_path / "stack.npz")
    assert saved["images"].shape == (7, 256, 256) and saved["c1_values"][3] == microscope.c1()
    assert str(saved["kind"]) == "raw"

    home = microscope.aperture()
    microscope.move_aperture(type(home)(home.x, home.y - 200))
    assert main(["wobble", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "walk: NOT concentric" in out
    assert twin_server.lens_reads() == microscope.c1() == 1.2


def test_wobble_command_recovers_first(twin_server, microscope, tmp_path, capsys) -> None:
    from temalign.cli import main

    config = write_config(tmp_path, twin_server.address)
    series = wobble_values(1.2, FRACTION)
    C1Memory(tmp_path / "state").begin(1.2, series)
    microscope.set_c1(series[5])  # a wobble died here
    assert main(["wobble", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    said = "recovery: an earlier wobble did not finish and left C1 at 1.224, a value it set: restored to 1.2"
    assert said in out
    assert twin_server.lens_reads() == 1.2


def test_wobble_command_errors_are_one_clear_line(twin_server, tmp_path, capsys) -> None:
    from temalign.cli import main

    config = write_config(tmp_path, twin_server.address)
    assert main(["wobble", "--config", str(config), "--microscope", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err == "temalign: error: cannot reach the microscope at 127.0.0.1:1: connection refused\n"

    assert main(["wobble", "--config", str(config), "--source", "screen"]) == 2
    assert "source.screen.region is not set" in capsys.readouterr().err

    twin_server.fault("error", methods=["camera.acquire"], count=1)
    assert main(["wobble", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("temalign: error: the microscope at 127.0.0.1:") and "[1003]" in err
    assert "Traceback" not in err
    assert twin_server.lens_reads() == 1.2
