"""Dataset acquisition against the real twin over TCP: the spiral, the labels and the truth, the
aperture and C1 put back, resume after a real interrupt, clear refusals, merge and split."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import acquire
import numpy as np
import pytest
from trainkit.datasets import Dataset, DatasetError, merge, split
from trainkit.spiral import default_revolutions, spiral

from temalign import optics

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"camera": {"width": 64, "height": 64}}
N = 12


# ---- the spiral -------------------------------------------------------------------------------

def test_spiral_starts_aligned_and_stays_in_the_disc() -> None:
    points = spiral(240.0, 127, 6.25)
    assert points.shape == (127, 2) and points.dtype == np.int64
    assert tuple(points[0]) == (0, 0)
    radii = np.hypot(*points.T)
    assert radii.max() <= 240.0 * 126 / 127 + 1.0
    expected = 240.0 * np.arange(127) / 127
    assert np.abs(radii - expected).max() <= 0.75  # radius R i / n, up to the rounding to motor units


def test_successive_points_are_close() -> None:
    n, radius, revolutions = 127, 240.0, 6.25
    steps = np.hypot(*np.diff(spiral(radius, n, revolutions), axis=0).T)
    bound = radius / n * math.sqrt(1 + (2 * math.pi * revolutions) ** 2) + math.sqrt(2)
    assert steps.max() <= bound
    assert steps.max() < 0.35 * radius  # random positions would jump across the disc


@pytest.mark.parametrize(("revolutions", "covered"), [(None, True), (1.0, False)])
def test_the_default_spiral_covers_the_disc(revolutions: float | None, covered: bool) -> None:
    n, radius = 127, 240.0
    points = spiral(radius, n, revolutions if revolutions is not None else default_revolutions(n))
    grid = np.mgrid[-240:241:6, -240:241:6].reshape(2, -1).T
    grid = grid[np.hypot(*grid.T) <= radius * (n - 1) / n]
    gap = np.min(np.hypot(*(grid[:, None, :] - points[None]).transpose(2, 0, 1)), axis=1).max()
    assert bool(gap <= 0.25 * radius) is covered, gap


def test_spiral_refuses_nonsense() -> None:
    for args in ((240.0, 0, 3.0), (-1.0, 10, 3.0), (math.nan, 10, 3.0), (240.0, 10, -1.0)):
        with pytest.raises(ValueError):
            spiral(*args)


# ---- acquisition over TCP ---------------------------------------------------------------------

def _args(served: Any, out: Path, *extra: str, samples: int = N, settle: str = "2") -> list[str]:
    host, port = served.address
    return ["--microscope", f"{host}:{port}", "--time-scale", "1000", "--settle-s", settle,
            "--radius", "240", "--samples", str(samples), "--out", str(out), "--state-dir",
            str(out.parent / "state"), "--no-progress", *extra]


def test_acquire_from_the_twin_over_tcp(make_twin: Callable[..., Any], tmp_path: Path) -> None:
    served = make_twin(SMALL)
    before = served.truth()
    a_start = np.round(before["aperture"]).astype(int)
    out = tmp_path / "set.npz"
    assert acquire.main(_args(served, out)) == 0
    data = Dataset.load(out)
    assert not out.with_name("set.npz.partial").exists()
    assert data.stacks.shape == (N, 7, 64, 64) and data.stacks.dtype == np.uint16
    assert np.array_equal(data.spiral_index, np.arange(N))
    assert np.array_equal(data.offsets, spiral(240.0, N, default_revolutions(N)))
    assert np.array_equal(data.labels, (a_start - data.positions).astype(np.float32))
    assert np.abs(data.positions - (a_start + data.offsets)).max() <= 4  # backlash and motor noise
    # a server over TCP gives no truth (tools never call twin.*); with no drift a* stays a_start
    assert np.isnan(data.truth).all()
    assert np.abs(np.asarray(served.truth()["aligned"]) - a_start).max() <= 1.0
    c0 = before["c1_setpoint"]
    assert np.allclose(data.c1_values, optics.wobble_values(c0, 0.03)[None])
    meta = data.meta
    assert meta["frames"] == "raw" and meta["camera"] == [64, 64] and meta["wobble_fraction"] == 0.03
    assert meta["spiral"] == {"radius": 240.0, "n": N, "revolutions": default_revolutions(N)}
    assert meta["server"] == "temalign-twin" and meta["c0"] == pytest.approx(c0)
    assert meta["a_start"] == a_start.tolist() and "--microscope" in meta["command"]
    assert np.all(np.diff(data.times) > 0)
    # the frames differ as the spiral walks: the outermost stack is not the aligned one
    assert np.abs(data.stacks[-1].astype(float) - data.stacks[0]).mean() > 10
    after = served.truth()
    assert math.dist(after["aperture"], a_start) <= 4 and after["c1_setpoint"] == pytest.approx(c0)
    assert not (tmp_path / "state" / "c1-wobble.json").exists()


def test_acquire_with_an_in_process_twin_records_the_preset(tmp_path: Path) -> None:
    out = tmp_path / "n6.npz"
    argv = ["--twin", "n6", "--seed", "3", "--twin-set", "camera.width=32", "--twin-set", "camera.height=32",
            "--samples", "5", "--out", str(out), "--no-progress"]
    assert acquire.main(argv) == 0
    data = Dataset.load(out)
    meta = data.meta
    assert meta["preset"] == "n6" and meta["twin_seed"] == 3 + 6 and meta["wobble_fraction"] == 0.02
    settings = meta["twin_settings"]
    assert settings["lens"]["start_over_cf"] == 1.02 and settings["camera"]["width"] == 32
    assert meta["spiral"]["radius"] == 200.0 and meta["c0"] == pytest.approx(1.02 * 1.2)
    assert np.isfinite(data.truth).all() and np.abs(data.truth - data.labels).max() < 5


def _start(argv: list[str], output: int) -> subprocess.Popen[str]:
    """The command as a person runs it: its own process, tools/ beside it."""
    path = os.pathsep.join([str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "acquire.py"), *argv],
                            env={**os.environ, "PYTHONPATH": path}, stdout=output, stderr=output, text=True)


def _partial_samples(partial: Path) -> dict[int, np.ndarray]:
    out = {}
    for path in sorted(partial.glob("sample-*.npz")):
        with np.load(path) as sample:
            out[int(sample["index"])] = sample["stack"].copy()
    return out


def test_resume_after_a_real_interrupt_loses_and_repeats_nothing(make_twin: Callable[..., Any],
                                                                 tmp_path: Path) -> None:
    served = make_twin(SMALL)
    a_start = np.round(served.truth()["aperture"]).astype(int)
    c0 = served.truth()["c1_setpoint"]
    out = tmp_path / "run.npz"
    partial = tmp_path / "run.npz.partial"
    argv = _args(served, out, settle="15")  # 15 ms of wall time per frame: slow enough to interrupt
    process = _start(argv, subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(list(partial.glob("sample-*.npz"))) < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Rerun the same command to resume" in err
    kept = _partial_samples(partial)
    assert 3 <= len(kept) < N and not out.exists()
    truth = served.truth()
    assert math.dist(truth["aperture"], a_start) <= 4 and truth["c1_setpoint"] == pytest.approx(c0)

    # the same folder with other settings is refused, and left alone
    assert acquire.main(_args(served, out, settle="15", samples=N + 1)) == 2
    assert _partial_samples(partial).keys() == kept.keys()

    assert acquire.main(argv) == 0
    data = Dataset.load(out)
    assert np.array_equal(data.spiral_index, np.arange(N))  # each index once, in spiral order
    for index, stack in kept.items():
        assert np.array_equal(data.stacks[index], stack)  # what was acquired before is what is kept
    assert np.array_equal(data.labels, (a_start - data.positions).astype(np.float32))
    assert np.isnan(data.truth).all()
    assert np.abs(np.asarray(truth["aligned"]) - a_start).max() <= 1.0
    assert len({stack.tobytes() for stack in data.stacks}) == N
    assert data.meta["a_start"] == a_start.tolist()

    # an uninterrupted run of the same command visits the same points with the same labels
    again = tmp_path / "again.npz"
    assert acquire.main(_args(served, again, settle="15")) == 0
    other = Dataset.load(again)
    assert np.array_equal(other.offsets, data.offsets)
    assert np.abs(other.labels - data.labels).max() <= 4


def test_expected_failures_are_one_clear_line(make_twin: Callable[..., Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.npz"
    assert acquire.main(["--microscope", "127.0.0.1:1", "--out", str(out), "--samples", "3",
                         "--state-dir", str(tmp_path), "--no-progress"]) == 2
    assert "cannot reach the microscope at 127.0.0.1:1" in capsys.readouterr().err
    served = make_twin(SMALL)
    assert acquire.main(_args(served, out, "--max-radius", "200")) == 2
    assert "safety cap" in capsys.readouterr().err
    limited = make_twin({**SMALL, "motor": {"limits_x": (0, 2200)}})
    assert acquire.main(_args(limited, out)) == 2
    assert "leaves the aperture limits" in capsys.readouterr().err
    assert math.dist(limited.truth()["aperture"], limited.truth()["aligned"]) < 2  # nothing moved
    assert not out.exists()


# ---- merge and split ---------------------------------------------------------------------------

def _synthetic(n: int, *, side: int = 16, dtype: type = np.uint16, name: str = "a") -> Dataset:
    rng = np.random.default_rng(len(name) + n)
    return Dataset(stacks=rng.integers(0, 200, (n, 7, side, side)).astype(dtype),
                   labels=rng.normal(size=(n, 2)).astype(np.float32), truth=np.full((n, 2), np.nan),
                   positions=rng.integers(-5, 5, (n, 2)), offsets=rng.integers(-5, 5, (n, 2)),
                   spiral_index=np.arange(n), c1_values=np.ones((n, 7)), times=np.arange(n, dtype=float),
                   meta={"name": name, "frames": "raw" if dtype == np.uint16 else "display"})


def test_merge_keeps_provenance_and_refuses_mismatches(tmp_path: Path) -> None:
    a, b, c = _synthetic(5, name="n10"), _synthetic(3, name="n13"), _synthetic(4, name="n14")
    ab = merge([a, b])
    abc = merge([ab, c])
    assert len(abc) == 12 and [s["name"] for s in abc.sources] == ["n10", "n13", "n14"]
    assert abc.source_index.tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert np.array_equal(abc.stacks[5:8], b.stacks) and np.array_equal(abc.labels[8:], c.labels)
    abc.save(tmp_path / "m.npz")
    back = Dataset.load(tmp_path / "m.npz")
    assert back.sources == abc.sources and np.array_equal(back.source_index, abc.source_index)
    assert np.array_equal(back.stacks, abc.stacks) and np.isnan(back.truth).all()
    with pytest.raises(DatasetError, match="frames of 32x32"):
        merge([a, _synthetic(2, side=32)])
    with pytest.raises(DatasetError, match="display"):
        merge([a, _synthetic(2, dtype=np.uint8)])


def test_merge_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _synthetic(5, name="n10").save(tmp_path / "a.npz")
    _synthetic(3, name="n13").save(tmp_path / "b.npz")
    assert acquire.main(["--merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                         "--out", str(tmp_path / "ab.npz")]) == 0
    assert len(Dataset.load(tmp_path / "ab.npz")) == 8
    (tmp_path / "bad.npz").write_bytes(b"not a dataset")
    assert acquire.main(["--merge", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "cannot read dataset" in capsys.readouterr().err


def test_split_is_disjoint_seeded_and_complete() -> None:
    data = merge([_synthetic(60, name="n13"), _synthetic(40, name="n14")])
    train, test = split(data, 0.2, seed=4)
    assert (len(train), len(test)) == (80, 20)
    together = np.concatenate([train.times + 1000 * train.source_index,
                               test.times + 1000 * test.source_index])
    assert sorted(together.tolist()) == sorted((data.times + 1000 * data.source_index).tolist())
    again, _ = split(data, 0.2, seed=4)
    other, _ = split(data, 0.2, seed=5)
    assert np.array_equal(again.labels, train.labels) and not np.array_equal(other.labels, train.labels)
    assert train.sources == data.sources
    with pytest.raises(ValueError):
        split(data, 1.5)
    sub = data.subset([3, 1])
    assert np.array_equal(sub.stacks, data.stacks[[3, 1]]) and json.dumps(sub.meta)


def test_resume_after_sigkill_recovers_c1_and_the_aperture(make_twin: Callable[..., Any],
                                                           tmp_path: Path) -> None:
    served = make_twin(SMALL)
    a_start = np.round(served.truth()["aperture"]).astype(int)
    c0 = served.truth()["c1_setpoint"]
    out = tmp_path / "kill.npz"
    partial = tmp_path / "kill.npz.partial"
    argv = _args(served, out, settle="15")
    process = _start(argv, subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(list(partial.glob("sample-*.npz"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.04)  # mid-wobble: C1 off its value, the aperture away from a_start
    process.kill()
    process.wait(timeout=10)
    kept = _partial_samples(partial)
    assert acquire.main(argv) == 0
    data = Dataset.load(out)
    assert np.array_equal(data.spiral_index, np.arange(N))
    for index, stack in kept.items():
        assert np.array_equal(data.stacks[index], stack)
    truth = served.truth()
    assert math.dist(truth["aperture"], a_start) <= 4 and truth["c1_setpoint"] == pytest.approx(c0)
    assert np.isnan(data.truth).all()
    assert np.abs(np.asarray(truth["aligned"]) - a_start).max() <= 1.0
