#!/usr/bin/env python3
"""The daemon through its command line on every traced column and scene: does it get from 200 units
off to within 10 in two cycles, with no refusal after the first?

    .venv/bin/python tools/bench_cli.py [--columns ...] [--scenes ...] [--offset 200] [--starts 3]
        [--model spotnet] [--json bench-out/cli.json]

Per column, scene and start, only real processes and the real protocol: `temalign twin --optics
traced --column C --scene S` (its own drift, a seed per start, in real time with a lens and a motor
that settle in milliseconds), `temalign run` on a config of a person's choosing (live,
`safety.on_aperture_moved: new-reference`, wobble.settle_s 0.02), paused so that no scheduled cycle
interferes; `temalign calibrate` with the aperture aligned, as a person runs it before a session;
then the aperture is sent `--offset` units off (a random direction, aperture.move over the
protocol, as a person's hand would) and `temalign once --force` runs twice. After
each cycle the twin's truth gives |m|. Writes one JSON; prints a line per cell and the table of
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from benchkit.net import free_port

from temalign.microscope import Position
from temalign.protocol.tcp_microscope import TcpMicroscope
from temalign_twin.columns import COLUMNS
from temalign_twin.scenes import SCENES

CLI = [sys.executable, "-m", "temalign.cli"]
FAST = ["--set", "lens.settle_s=0.01", "--set", "motor.settle_s=0.01",
        "--set", "motor.speed_units_per_s=5000"]
"""A column whose lens and motor settle in milliseconds: the daemon's clock is the real one, so the
twin runs in real time (its drift as slow as a column's) and a wobble takes about a second."""
WITHIN_UNITS = 10.0
NOT_REFUSED = ("corrected", "within_deadband", "checked")
"""Cycle outcomes (temalign.record.result.OUTCOMES) that are not a refusal or a failure."""


def _wait(check: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(what)


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _cli(args: list[str], config: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--config", str(config)], capture_output=True, text=True,
                          timeout=timeout_s)


def one_start(column: str, scene: str, seed: int, offset: float, model: str, root: Path) -> dict[str, Any]:
    """One cold start through the CLI (module doc); the cycles' outcomes and |m| after each."""
    port = free_port()
    twin_args = [*CLI, "twin", "--optics", "traced", "--column", column, "--scene", scene,
                 "--port", str(port), "--seed", str(seed), *FAST]
    config = root / "temalign.yaml"
    config.write_text(yaml.safe_dump({
        "microscope": {"address": f"127.0.0.1:{port}"}, "paths": {"state_dir": str(root / "state")},
        "control": {"socket": str(root / "control.sock")},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "schedule": {"interval_s": 86400, "jitter_s": 0, "mode": "live"}, "wobble": {"settle_s": 0.02},
        "safety": {"on_aperture_moved": "new-reference"}, "estimator": {"model": model}}))
    result: dict[str, Any] = {"column": column, "scene": scene, "seed": seed, "cycles": []}
    with _process(twin_args, root / "twin.log"):
        probe = TcpMicroscope(("127.0.0.1", port), client_name="bench-cli")
        _wait(lambda: probe.aperture() is not None, 30, "the twin did not answer")
        with _process([*CLI, "run", "--config", str(config)], root / "daemon.log"):
            _wait(lambda: _cli(["status", "--json"], config, 10).returncode == 0, 60,
                  "the daemon did not start")
            _cli(["pause"], config)  # no scheduled cycle meets the calibration or the person's move
            calibrated = _cli(["calibrate"], config)
            said = calibrated.stdout.strip().splitlines()[-3:] + calibrated.stderr.strip().splitlines()[-2:]
            result["calibrate"] = {"exit": calibrated.returncode, "said": said}
            aligned = probe.client.call("twin.truth")["aligned"]
            phi = np.random.default_rng([seed, 200]).uniform(0, 2 * math.pi)
            probe.move_aperture(Position(round(aligned[0] + offset * math.cos(phi)),
                                         round(aligned[1] + offset * math.sin(phi))))
            result["start_units"] = float(np.hypot(*probe.client.call("twin.truth")["misalignment"]))
            for _ in range(2):
                once = _cli(["once", "--force", "--json"], config)
                try:
                    record = json.loads(once.stdout)
                except json.JSONDecodeError:
                    record = {"outcome": "error", "detail": (once.stdout + once.stderr)[-300:]}
                truth = probe.client.call("twin.truth")
                result["cycles"].append({"exit": once.returncode, "outcome": record.get("outcome"),
                                         "reason": record.get("reason"),
                                         "after_units": float(np.hypot(*truth["misalignment"]))})
        probe.close()
    cycles = result["cycles"]
    result["within"] = bool(cycles and cycles[-1]["after_units"] <= WITHIN_UNITS)
    result["refused_after_first"] = any(c["outcome"] not in NOT_REFUSED for c in cycles[1:])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--offset", type=float, default=200.0, help="units off the axis before the first cycle")
    p.add_argument("--starts", type=int, default=3, help="cold starts per column and scene (seeds 1..N)")
    p.add_argument("--model", default="spotnet", help="estimator.model: a shipped name or a path")
    p.add_argument("--json", default="bench-out/cli.json")
    args = p.parse_args(argv)
    cells = []
    started = time.monotonic()
    for column in args.columns:
        for scene in args.scenes:
            runs = []
            for seed in range(1, args.starts + 1):
                with tempfile.TemporaryDirectory(prefix="ta-cli-", dir="/tmp") as folder:
                    try:
                        runs.append(one_start(column, scene, seed, args.offset, args.model, Path(folder)))
                    except (TimeoutError, OSError, subprocess.SubprocessError) as error:
                        runs.append({"column": column, "scene": scene, "seed": seed, "error": str(error),
                                     "within": False, "refused_after_first": True, "cycles": []})
            ok = sum(r["within"] and not r["refused_after_first"] for r in runs)
            cells.append({"column": column, "scene": scene, "runs": runs, "ok": ok, "starts": len(runs)})
            trail = "; ".join(" -> ".join(f"{c['outcome']} {c['after_units']:.1f}" for c in r["cycles"])
                              or r.get("error", "?") for r in runs)
            print(f"{column:22s} {scene:21s} {ok}/{len(runs)}  {trail}", flush=True)
    total = sum(c["ok"] for c in cells)
    runs_n = sum(c["starts"] for c in cells)
    print(f"{total}/{runs_n} cold starts from {args.offset:g} units within {WITHIN_UNITS:g} in 2 cycles with "
          f"no refusal after the first ({(time.monotonic() - started) / 60:.1f} min)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["tools/bench_cli.py", *(argv or sys.argv[1:])]),
                               "machine": platform.platform(), "cpus": os.cpu_count(),
                               "date": time.strftime("%Y-%m-%d"), "model": args.model,
                               "offset": args.offset, "ok": total, "runs": runs_n, "cells": cells},
                              indent=1) + "\n")
    print(f"-> {out}")
    return 0 if total == runs_n else 1


if __name__ == "__main__":
    sys.exit(main())
