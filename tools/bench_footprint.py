#!/usr/bin/env python3
"""Latency and footprint of the daemon against issue 5's targets (item 3), from one run.

    .venv/bin/python tools/bench_footprint.py [--seed 0] [--out bench-footprint.json]
        [--cycles 60] [--rss-twin-hours 1.0] [--rss-wall-s 150] [--idle-s 20] [--starts 5]
        [--skip-keras] [--skip-process]

Four parts, each a median (or a ratio) of this one run, with a 256 x 256 camera:
- cycle: `run_cycle` on `benchkit.harness.sim_column` (SteppedClock: settle, exposure and motor
  travel cost no wall time). The twin renders in this process, in its server thread; every
  request's server-side handling (render, base64, JSON) is timed and taken off, so `own_ms` is the
  daemon's time alone, broken down by step;
- models: each shipped model (spotnet, its int8 variant from `make model`, wobble_physics): its
  preprocessing of a 256 px stack and LiteRT on one thread, against the same weights in Keras
  where the training run's .keras is here; and the paper's CNN (untrained, 256 x 256 x 7)
  converted for scale;
- process: a real `temalign run` against a twin served from this process at a high time scale,
  driven through `once` on its control socket until an hour of twin time has passed: VmRSS and
  VmHWM, then CPU while idle (no cycle due), then start-up (exec to READY=1, median of 5), then
  start-up again with the active journal grown to journal.max_bytes (it is read at start).
Writes one JSON and prints a table."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchkit.harness import REPO, SHIPPED_MODEL, sim_column
from benchkit.net import free_port

import temalign.estimate.combined as combined_module
import temalign.service.cycle as cycle_module
from temalign.clock import ScaledClock
from temalign.record.journal import Journal
from temalign.service.control import ControlError, request
from temalign.service.cycle import run_cycle
from temalign_twin.model import Twin
from temalign_twin.service import TwinServer
from temalign_twin.settings import TwinSettings

TARGETS = {"own_ms_per_cycle": 100.0, "rss_mb": 200.0, "idle_cpu_percent": 1.0, "startup_s": 2.0,
           "model_litert_ms": 2.0, "model_preprocess_ms": 3.0, "model_mb": 4.0}
"""Issue 5's (the daemon) and issue 13's (the default model, `spotnet`: a 256 px stack)."""
INTERVAL_S = 300.0
ROTATION_MARGIN = 16 << 10
CHECK_INTERVAL_S = 60.0
"""Short, so that most of these cycles find the column still aligned and stop at the check."""
MODELS_DIR = SHIPPED_MODEL.parent
MODELS = {
    "spotnet": (MODELS_DIR / "spotnet.tflite", REPO / "runs" / "spotnet" / "spotnet.keras"),
    "spotnet_int8": (REPO / "runs" / "spotnet" / "spotnet.int8.tflite", None),
    "wobble_physics": (MODELS_DIR / "wobble_physics.tflite", REPO / "runs" / "shipped" / "best.keras"),
}
"""The .tflite measured, and the training run's .keras beside it where one is (`make model`,
`make model-physics`)."""
PROTOCOL_CALLS = ("acquire", "set_c1", "c1", "aperture", "move_aperture")


class StepTimer:
    """Wall time per named step, counting only the outermost call of a step (journal.append calls
    journal._write, say), and the twin server's time inside each protocol call taken off."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.server_s = 0.0
        self._server_lock = threading.Lock()
        self._depth: dict[str, int] = defaultdict(int)

    def reset(self) -> dict[str, float]:
        out = dict(self.totals)
        self.totals.clear()
        return out

    def wrap(self, owner: Any, name: str, step: str, *, minus_server: bool = False) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth[step] += 1
            server0 = self.server_s
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self._depth[step] -= 1
                if self._depth[step] == 0:
                    self.totals[step] += dt - (self.server_s - server0 if minus_server else 0.0)

        setattr(owner, name, timed)

    def wrap_server(self, protocol_server: Any) -> None:
        """Time the twin server's handling of each request line (rendering included)."""
        original = protocol_server._handle_line

        def timed(line: bytes, state: dict[str, bool]) -> bytes | None:
            t0 = time.perf_counter()
            try:
                return original(line, state)
            finally:
                with self._server_lock:
                    self.server_s += time.perf_counter() - t0

        protocol_server._handle_line = timed


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float) * 1e3
    return {"median": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "max": round(float(a.max()), 3)}


def bench_cycles(seed: int, cycles: int, warmup: int = 3) -> tuple[dict[str, Any], list[np.ndarray]]:
    """`run_cycle` on the simulated column, live with the nominal calibration, one cycle per
    INTERVAL_S of twin time (the default drift gives corrections, so some cycles wobble twice);
    then `cycles // 2` cycles that start with the two-frame check, CHECK_INTERVAL_S apart (those
    that stop at the check are timed)."""
    stacks: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    checks: list[float] = []
    with sim_column(seed) as column:
        timer = StepTimer()
        timer.wrap_server(column.server._server)
        parts = column.parts
        for name in PROTOCOL_CALLS:
            timer.wrap(parts.microscope, name, "capture" if name == "acquire" else "protocol_other",
                       minus_server=True)
        timer.wrap(combined_module, "assess_stack", "quality")
        timer.wrap(cycle_module, "decide", "decision")
        timer.wrap(parts.journal, "_write", "journal")
        for name in ("load", "update"):
            timer.wrap(parts.state, name, "state_file")
        for name in ("begin", "clear", "exists"):
            timer.wrap(parts.memory, name, "c1_record")
        measure = parts.estimator.measure

        def keep(stack: Any) -> Any:
            if len(stacks) < 8:
                stacks.append(np.array(stack.images))
            return measure(stack)

        parts.estimator.measure = keep  # type: ignore[method-assign]
        try:
            for k in range(warmup + cycles):
                column.clock.advance(INTERVAL_S)
                timer.reset()
                server0 = timer.server_s
                t0 = time.perf_counter()
                result = run_cycle(parts)
                wall = time.perf_counter() - t0
                steps = timer.reset()
                server = timer.server_s - server0
                wobbles = sum(m is not None for m in (result.before, result.after))
                for m in (result.before, result.after):
                    if m is not None:
                        steps["preprocess"] = steps.get("preprocess", 0.0) + m.preprocess_ms / 1e3
                        steps["inference"] = steps.get("inference", 0.0) + m.inference_ms / 1e3
                        steps["classical"] = steps.get("classical", 0.0) + m.classical_ms / 1e3
                if k >= warmup:
                    rows.append({"outcome": result.outcome, "wobbles": wobbles, "wall": wall,
                                 "server": server, "own": wall - server, **steps})
            for _ in range(cycles // 2):
                column.clock.advance(CHECK_INTERVAL_S)
                server0 = timer.server_s
                t0 = time.perf_counter()
                result = run_cycle(parts, look="check")
                wall = time.perf_counter() - t0
                if result.outcome == "checked":
                    checks.append(wall - (timer.server_s - server0))
                timer.reset()
        finally:
            parts.estimator.measure = measure  # type: ignore[method-assign]
    steps = ("capture", "protocol_other", "quality", "preprocess", "inference", "classical", "decision",
             "journal", "state_file", "c1_record")
    for row in rows:
        row["other"] = row["own"] - sum(row.get(s, 0.0) for s in steps)
    per_cycle = {s: _ms([r.get(s, 0.0) for r in rows]) for s in (*steps, "other", "own", "server", "wall")}
    one = [r for r in rows if r["wobbles"] == 1]
    two = [r for r in rows if r["wobbles"] == 2]
    outcomes: dict[str, int] = defaultdict(int)
    for r in rows:
        outcomes[r["outcome"]] += 1
    return {
        "cycles": len(rows), "warmup_cycles_dropped": warmup, "interval_s_twin": INTERVAL_S,
        "camera_px": [256, 256], "outcomes": dict(outcomes),
        "twin_rendering": "in this process (server thread); each request's server-side time is subtracted",
        "per_cycle_ms": per_cycle,
        "one_wobble_cycles_own_ms": _ms([r["own"] for r in one]) if one else None,
        "two_wobble_cycles_own_ms": _ms([r["own"] for r in two]) if two else None,
        "check_cycles": len(checks),
        "check_cycles_own_ms": _ms(checks) if checks else None,
        "per_wobble_own_ms_median": round(float(np.median([r["own"] / max(1, r["wobbles"]) for r in rows
                                                           if r["wobbles"]])) * 1e3, 3),
    }, stacks


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 3)


def bench_models(stacks: list[np.ndarray], repeats: int) -> dict[str, Any]:
    """Each shipped model (and the int8 spot network where `make model` left it): its
    preprocessing of a camera stack and LiteRT (one thread), against the same weights in Keras
    (TensorFlow on one thread) where the training run's .keras is here; and the paper's CNN."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from trainkit import spotnet
    from trainkit.conversion import convert
    from trainkit.models import build, load_keras

    from temalign.estimate.litert_model import LiteModel
    from temalign.estimate.model_estimator import ModelEstimator

    out: dict[str, Any] = {"keras_threads": 1, "litert_threads": 1, "repeats": repeats,
                           "camera": list(stacks[0].shape)}
    for name, (tflite_path, keras_path) in MODELS.items():
        if not tflite_path.is_file():
            out[name] = {"tflite": str(tflite_path.relative_to(REPO)), "absent": "not measured"}
            continue
        estimator = ModelEstimator(tflite_path)
        x = estimator.tensor(stacks[0])
        lite = estimator.lite
        row: dict[str, Any] = {"tflite": str(tflite_path.relative_to(REPO)), "input": list(x.shape),
                               "tflite_bytes": tflite_path.stat().st_size,
                               "preprocess": estimator.card["preprocess"]}
        row["preprocess_ms"] = _median_ms(lambda e=estimator: e.tensor(stacks[0]), repeats)
        row["litert_ms"] = _median_ms(lambda lm=lite, t=x: lm.invoke_one(t), repeats)
        if keras_path is not None and keras_path.is_file():
            keras_model = load_keras(str(keras_path))
            if keras_model.name == "spot_frame":  # train_spotnet keeps the per-frame network
                keras_model = spotnet.stack_model(keras_model, int(x.shape[1]))
            row["keras"] = str(keras_path.relative_to(REPO))
            row["keras_call_ms"] = _median_ms(lambda k=keras_model, t=x: k(t, training=False), repeats)
            diffs = [np.abs(np.asarray(keras_model(estimator.tensor(s), training=False)).reshape(-1)
                            - lite.invoke_one(estimator.tensor(s)).reshape(-1)) for s in stacks]
            row["same_weights_max_abs_output_diff"] = float(f"{float(np.max(diffs)):.3g}")
            row["keras_over_litert"] = round(row["keras_call_ms"] / row["litert_ms"], 2)
        elif keras_path is not None:
            row["keras"] = f"{keras_path.relative_to(REPO)} absent: not measured"
        out[name] = row

    paper = build("paper_cnn", (256, 256, 7))
    tflite = convert(paper, "float32")
    plite = LiteModel(tflite, num_threads=1)
    px = np.random.default_rng(0).random((1, 256, 256, 7), dtype=np.float32)
    prow: dict[str, Any] = {"input": [1, 256, 256, 7], "params": int(paper.count_params()),
                            "tflite_bytes": len(tflite), "trained": False}
    prow["litert_ms"] = _median_ms(lambda: plite.invoke_one(px), repeats)
    prow["keras_call_ms"] = _median_ms(lambda: paper(px, training=False), repeats)
    prow["keras_over_litert"] = round(prow["keras_call_ms"] / prow["litert_ms"], 2)
    out["paper_cnn"] = prow
    return out


# ---- a real `temalign run` process ------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and thread count from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def _cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    after = stat[stat.rindex(")") + 2:].split()
    return int(after[11]) + int(after[12])  # utime, stime (fields 14 and 15)


@contextlib.contextmanager
def _daemon(cli: list[str], config: Path, notify_path: Path) -> Iterator[tuple[subprocess.Popen, float]]:
    """A `temalign run` process; yields it and the seconds from exec to READY=1."""
    notify_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cli, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ready = threading.Event()
    ready_at: list[float] = []

    def drain() -> None:
        """Read every notification, as systemd does: the daemon's notify() blocks on a full queue."""
        with contextlib.suppress(OSError):
            while True:
                message = listener.recv(4096).decode()
                if message.startswith("READY=1") and not ready.is_set():
                    ready_at.append(time.perf_counter() - t0)
                    ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(60):
            raise RuntimeError("temalign run sent no READY=1 within 60 s")
        yield proc, ready_at[0]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        listener.close()


def fill_journal(state_dir: Path, mb: float) -> int:
    """Grow the active journal to `mb` MiB with copies of the run's last cycle (its wobble, decision and
    cycle entries), as weeks of cycles leave it before it rotates; returns its size in bytes. It
    stops ROTATION_MARGIN short of the rotation size: one more cycle would start a new file."""
    journal = Journal(state_dir)
    try:
        tail = journal.tail(50)
        cycle = next(e for e in reversed(tail) if e["kind"] == "cycle")
        fields = {k: v for k, v in cycle.items() if k not in ("seq", "time", "t", "kind")}
        limit = min(mb * 2**20, journal.max_bytes) - ROTATION_MARGIN
        while journal._size < limit:
            op = journal.intent("wobble", label="before", fraction=0.03)
            journal.outcome(op, "wobble", ok=True, c1=fields.get("c1"), trusted=True, reason="agree",
                            delta=[-2.8, -2.0], model=[-2.8, -2.0], classical=[-2.2, -1.5])
            journal.append("decision", action="none", reason="within_deadband", detail="", target=None,
                           live=True)
            journal.append("cycle", **fields)
        return journal._size
    finally:
        journal.close()


def bench_process(seed: int, twin_hours: float, wall_s: float, idle_s: float, starts: int,
                  full_journal_mb: float) -> dict[str, Any]:
    """RSS after `twin_hours` of twin time of cycles, idle CPU, start-up time."""
    entry = Path(sys.executable).parent / "temalign"
    cli = [str(entry)] if entry.is_file() else [sys.executable, "-m", "temalign.cli"]
    scale = twin_hours * 3600.0 / wall_s
    clock = ScaledClock(scale)
    twin = Twin(TwinSettings(), clock, seed=seed)
    server = TwinServer(twin, host="127.0.0.1", port=0).start()
    root = Path(tempfile.mkdtemp(prefix="ta-fp-"))
    host, port = server.address[:2]
    cfg = {"microscope": {"address": f"{host}:{port}"}, "paths": {"state_dir": str(root / "state")},
           "control": {"socket": str(root / "c.sock")},
           "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
           "wobble": {"settle_s": 0.02},
           "schedule": {"interval_s": 3600, "jitter_s": 0, "mode": "live"}}
    config = root / "temalign.yaml"
    config.write_text(yaml.safe_dump(cfg))
    sock = root / "c.sock"
    out: dict[str, Any] = {"command": " ".join([*cli, "run", "--config", "FILE"]), "twin_time_scale": scale,
                           "settle_s": 0.02, "interval_s": 3600,
                           "driven_by": "`once` on the control socket, back to back (Daemon.cycle)"}
    try:
        with _daemon(cli, config, root / "notify") as (proc, ready):
            out["first_start_s"] = round(ready, 3)
            after_start = _proc_status(proc.pid)
            request(sock, "calibrate", {"step_units": 60})
            t_twin0, t_wall0 = clock.now(), time.monotonic()
            outcomes: dict[str, int] = defaultdict(int)
            samples = []
            while clock.now() - t_twin0 < twin_hours * 3600.0:
                try:
                    outcomes[request(sock, "once")["outcome"]] += 1
                except ControlError as error:
                    outcomes[f"control-error: {error}"[:80]] += 1
                if sum(outcomes.values()) % 20 == 0:
                    samples.append(_proc_status(proc.pid)["VmRSS"])
            status = _proc_status(proc.pid)
            out.update({"cycles": sum(outcomes.values()), "outcomes": dict(outcomes),
                        "twin_hours": round((clock.now() - t_twin0) / 3600.0, 3),
                        "wall_s": round(time.monotonic() - t_wall0, 1),
                        "rss_mb_after_start": round(after_start["VmRSS"] / 1024, 1),
                        "rss_mb": round(status["VmRSS"] / 1024, 1),
                        "hwm_mb": round(status["VmHWM"] / 1024, 1),
                        "threads": status["Threads"],
                        "rss_mb_every_20_cycles": [round(v / 1024, 1) for v in samples]})
            time.sleep(1.0)
            hz = os.sysconf("SC_CLK_TCK")
            ticks0, t0 = _cpu_ticks(proc.pid), time.monotonic()
            time.sleep(idle_s)
            ticks1, t1 = _cpu_ticks(proc.pid), time.monotonic()
            out["idle_s"] = round(t1 - t0, 2)
            out["idle_cpu_percent"] = round(100.0 * (ticks1 - ticks0) / hz / (t1 - t0), 3)
            out["idle_cpu_ticks"] = ticks1 - ticks0
            out["clk_tck"] = hz
        times = []
        for _ in range(starts):
            with _daemon(cli, config, root / "notify") as (_, ready):
                times.append(ready)
        out["startup_s"] = {"median": round(statistics.median(times), 3), "all": [round(t, 3) for t in times]}
        if full_journal_mb > 0:
            size = fill_journal(root / "state", full_journal_mb)
            times = []
            for _ in range(starts):
                with _daemon(cli, config, root / "notify") as (_, ready):
                    times.append(ready)
            out["startup_full_journal_s"] = {"journal_mb": round(size / 2**20, 2),
                                             "median": round(statistics.median(times), 3),
                                             "all": [round(t, 3) for t in times]}
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'measure':44} {'value':>12} {'target':>10}"]
    c = result.get("cycle")
    if c:
        pc = c["per_cycle_ms"]
        lines.append(f"{'own time per cycle, median ms':44} {pc['own']['median']:>12.2f} "
                     f"{TARGETS['own_ms_per_cycle']:>10.0f}")
        for step in ("capture", "protocol_other", "quality", "preprocess", "inference", "classical",
                     "decision", "journal", "state_file", "c1_record", "other"):
            lines.append(f"{'  ' + step + ' (median ms)':44} {pc[step]['median']:>12.2f}")
        lines.append(f"{'  twin server (excluded), median ms':44} {pc['server']['median']:>12.2f}")
        if c.get("check_cycles_own_ms"):
            lines.append(f"{'own time per checked cycle (two frames), ms':44} "
                         f"{c['check_cycles_own_ms']['median']:>12.2f}")
    m = result.get("models")
    if m:
        for name in (*MODELS, "paper_cnn"):
            row = m[name]
            if "litert_ms" not in row:
                continue
            spot = name == "spotnet"
            if "preprocess_ms" in row:
                target = f"{TARGETS['model_preprocess_ms']:>10.0f}" if spot else ""
                lines.append(f"{name + ' preprocessing ms':44} {row['preprocess_ms']:>12.2f} {target}")
            target = f"{TARGETS['model_litert_ms']:>10.0f}" if spot else ""
            lines.append(f"{name + ' LiteRT ms':44} {row['litert_ms']:>12.2f} {target}")
            if "keras_call_ms" in row:
                lines.append(f"{name + ' Keras ms (ratio)':44} {row['keras_call_ms']:>12.2f} "
                             f"{'x' + str(row['keras_over_litert']):>10}")
    p = result.get("process")
    if p:
        label = f"RSS after {p['twin_hours']} h twin ({p['cycles']} cycles), MB"
        lines.append(f"{label:44} {p['rss_mb']:>12.1f} {TARGETS['rss_mb']:>10.0f}")
        lines.append(f"{'  peak (VmHWM), MB':44} {p['hwm_mb']:>12.1f}")
        lines.append(f"{'idle CPU, % of one core':44} {p['idle_cpu_percent']:>12.3f} "
                     f"{TARGETS['idle_cpu_percent']:>10.0f}")
        lines.append(f"{'start-up to READY=1, median s':44} {p['startup_s']['median']:>12.3f} "
                     f"{TARGETS['startup_s']:>10.0f}")
        full = p.get("startup_full_journal_s")
        if full:
            label = f"  with a {full['journal_mb']} MB journal, median s"
            lines.append(f"{label:44} {full['median']:>12.3f} {TARGETS['startup_s']:>10.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--seed", type=int, default=0, help="seed of the twins (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench-footprint.json"), help="JSON result")
    parser.add_argument("--cycles", type=int, default=60, help="cycles timed in-process (default 60)")
    parser.add_argument("--repeats", type=int, default=50, help="model timings per median (default 50)")
    parser.add_argument("--rss-twin-hours", type=float, default=1.0, help="twin time of cycles (default 1)")
    parser.add_argument("--rss-wall-s", type=float, default=150.0,
                        help="wall seconds that twin time takes (sets the twin's time scale; default 150)")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle CPU window (default 20 s)")
    parser.add_argument("--starts", type=int, default=5, help="start-ups timed (default 5)")
    parser.add_argument("--full-journal-mb", type=float, default=16.0,
                        help="then start-up again with the active journal grown to this size (default 16, "
                             "journal.max_bytes: the most it holds before rotating; 0: skip)")
    parser.add_argument("--skip-keras", action="store_true", help="no TensorFlow part")
    parser.add_argument("--skip-process", action="store_true", help="no `temalign run` part")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "seed": args.seed, "targets": TARGETS,
    }
    result["cycle"], stacks = bench_cycles(args.seed, args.cycles)
    if not args.skip_process:
        result["process"] = bench_process(args.seed, args.rss_twin_hours, args.rss_wall_s, args.idle_s,
                                          args.starts, args.full_journal_mb)
    if not args.skip_keras:
        result["models"] = bench_models(stacks, args.repeats)
    met = {}
    if result.get("cycle"):
        own = result["cycle"]["per_cycle_ms"]["own"]["median"]
        met["own_ms_per_cycle"] = own <= TARGETS["own_ms_per_cycle"]
    if result.get("process"):
        p = result["process"]
        met["rss_mb"] = p["rss_mb"] <= TARGETS["rss_mb"]
        met["idle_cpu_percent"] = p["idle_cpu_percent"] <= TARGETS["idle_cpu_percent"]
        met["startup_s"] = p["startup_s"]["median"] <= TARGETS["startup_s"]
        if "startup_full_journal_s" in p:
            met["startup_s_full_journal"] = p["startup_full_journal_s"]["median"] <= TARGETS["startup_s"]
    spot = (result.get("models") or {}).get("spotnet", {})
    if "litert_ms" in spot:
        met["model_litert_ms"] = spot["litert_ms"] <= TARGETS["model_litert_ms"]
        met["model_preprocess_ms"] = spot["preprocess_ms"] <= TARGETS["model_preprocess_ms"]
        met["model_mb"] = spot["tflite_bytes"] / 1e6 <= TARGETS["model_mb"]
    result["met"] = met
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['date']}  {result['machine']['platform']}  {result['machine']['cpus']} CPUs")
    print(_table(result))
    print(f"targets met: {met}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
