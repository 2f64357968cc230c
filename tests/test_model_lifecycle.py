"""Issue 14, shadow runs and promotion: the promotion rule (pure), a candidate read beside the live
model on every stack and scored on verified outcomes (a real daemon, a twin over TCP, the control
socket), promotion refused on worse evidence, promote then rollback restoring the previous model,
a bad candidate refused with nothing changed, and all of it across a restart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_daemon import config, start_daemon

from temalign import shipped
from temalign.decide.promotion import (
    CANDIDATE_MISSED_MORE,
    CANDIDATE_WORSE,
    EVIDENCE_STALE,
    NOTHING_COMPARED,
    PROMOTE,
    TOO_FEW_VERIFIED,
    Evidence,
    Score,
    may_promote,
)
from temalign.estimate.calibration import nominal_calibration, save_calibration
from temalign.record.journal import read_journal
from temalign.record.model_store import ModelStore
from temalign.service.control import ControlError, request
from temalign.service.daemon import Daemon

CLI = [sys.executable, "-m", "temalign.cli"]
JUMPS = [(60, -40), (-50, 70), (80, 30), (-70, -60)]
"""Where the optic axis jumps before each cycle (as drift would): a correction each, verified."""


# --- the rule ------------------------------------------------------------------------------------

def _evidence(verified: int, live: Score, candidate: Score, live_fp: str = "live") -> Evidence:
    return Evidence(live_fp, "cand", "2025-01-01T00:00:00+00:00", verified, live, candidate)


@pytest.mark.parametrize(("evidence", "reason", "words"), [
    (None, TOO_FEW_VERIFIED, "no candidate in shadow"),
    (_evidence(3, Score(3, 12.0), Score(3, 3.0)), TOO_FEW_VERIFIED,
     "3 verified cycles; RMS error against them: candidate 1.00 units, live 2.00 units: 5 are needed"),
    (_evidence(5, Score(5, 5.0), Score(5, 5.0), live_fp="other"), EVIDENCE_STALE, "live model is now live"),
    (_evidence(5, Score(5, 20.0), Score(4, 4.0, 1)), CANDIDATE_MISSED_MORE,
     "could not read 1 of the verified stacks, the live model 0"),
    (_evidence(5, Score(5, 5.0), Score(5, 5.1)), CANDIDATE_WORSE,
     "the candidate's error 1.01 is above the live model's 1.00"),
    (_evidence(5, Score(0, 0.0, 5), Score(0, 0.0, 5)), NOTHING_COMPARED, "the candidate read none of them"),
    (_evidence(5, Score(5, 5.0), Score(5, 5.0)), PROMOTE, "candidate 1.00 units, live 1.00 units"),
    (_evidence(6, Score(5, 80.0, 1), Score(6, 6.0)), PROMOTE,
     "candidate 1.00 units, live 4.00 units (1 not read)"),
    (_evidence(5, Score(0, 0.0, 5), Score(4, 4.0, 1)), PROMOTE, "live none read (5 not read)"),
])
def test_the_promotion_rule(evidence: Evidence | None, reason: str, words: str) -> None:
    verdict = may_promote(evidence, live_fingerprint="live", min_verified=5)
    assert (verdict.promote, verdict.reason) == (reason == PROMOTE, reason)
    assert words in verdict.detail


def test_scores_and_evidence_add_up_and_read_back() -> None:
    evidence = Evidence("a", "b", "t")
    evidence = evidence.scored((3.0, 4.0), (0.0, 0.0), (0.0, 0.0))
    evidence = evidence.scored((0.0, 0.0), None, (6.0, 8.0))
    assert evidence.verified == 2
    assert evidence.live == Score(2, 125.0, 0) and evidence.candidate == Score(1, 0.0, 1)
    assert evidence.live.rms == pytest.approx((125.0 / 2) ** 0.5)
    assert Evidence.from_json(json.loads(json.dumps(evidence.to_json()))) == evidence
    broken = evidence.to_json() | {"verified": 3}
    with pytest.raises(ValueError, match="scored \\+ missed must equal verified"):
        Evidence.from_json(broken)
    assert evidence.scored((float("nan"), 0.0), (1.0, 1.0), (1.0, 1.0)).live.missed == 1


# --- against a daemon ------------------------------------------------------------------------------

def _daemon(served: Any, connect: Any, root: Path, **sections: Any) -> Daemon:
    """A live daemon on a calibrated twin, fast settles, no schedule (cycles by `once`)."""
    state = root / "state"
    if not (state / "calibration.json").exists():
        state.mkdir(exist_ok=True)
        save_calibration(state, nominal_calibration())
    return start_daemon(served, connect, root, schedule={"mode": "live", "jitter_s": 0},
                        wobble={"settle_s": 0.01}, **sections,
                        # 1.1 %: what docs/models.md tells a config selecting wobble_physics (1.02 %) to set
                        estimator={"classical_max_residual_px": 6.0, "max_model_rmse_percent": 1.1})


def _verified(served: Any, sock: Path, count: int) -> int:
    """Cycles after jumps of the optic axis until `count` more corrections were kept after a
    trusted verification (the twin's noise leaves a walk now and then that the classical
    estimator will not call a line); returns the cycles it took."""
    done = 0
    for cycles, jump in enumerate(JUMPS * 3, start=1):
        result = _measured(served, sock, jump)
        after = result.get("after") or {}
        done += result["outcome"] == "corrected" and bool(after.get("trusted"))
        if done == count:
            return cycles
    raise AssertionError(f"only {done} of {count} verified corrections in {len(JUMPS) * 3} cycles")


def _measured(served: Any, sock: Path, jump: tuple[int, int]) -> dict[str, Any]:
    """One cycle after the optic axis jumped; the live model read its stack."""
    served.twin.inject("jump", units=list(jump))
    result = request(sock, "once")
    assert result["before"]["model"] is not None, result
    return result


def _backwards_model(root: Path) -> Path:
    """wobble_physics with a card that turns its answer around: a real candidate that reads every
    stack, worse than the live model (it points the other way). Its card keeps wobble_physics's
    evaluation, so the model gate lets it into the shadow: judging evaluations is
    tests/test_model_gate.py's job, the shadow's evidence this file's."""
    source = shipped.model_path("wobble_physics")
    path = root / "backwards.tflite"
    shutil.copyfile(source, path)
    card = json.loads(source.with_suffix(".json").read_text())
    card["output_scale"] = [-v for v in card["output_scale"]]
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def _spotnet_copy(root: Path) -> Path:
    """The shipped spot network with 8 bytes appended: another file (another fingerprint) that reads
    every stack exactly as the live model does, so it agrees with the outcomes exactly as well."""
    source = shipped.model_path("spotnet")
    path = root / "spotnet_b.tflite"
    path.write_bytes(source.read_bytes() + b"\0" * 8)
    shutil.copyfile(source.with_suffix(".json"), path.with_suffix(".json"))
    return path


def _metrics(daemon: Daemon) -> str:
    url = f"http://127.0.0.1:{daemon.settings.metrics.port}/metrics"
    return str(urllib.request.urlopen(url, timeout=5).read().decode())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_a_worse_candidate_is_journaled_beside_the_live_model_and_refused(make_twin: Any, connect: Any,
                                                                          short_dir: Path) -> None:
    served = make_twin()
    candidate = _backwards_model(short_dir)
    daemon = _daemon(served, connect, short_dir, models={"promote_min_verified": 3})
    sock = daemon.settings.control.socket
    live_fp = daemon.estimator.model.fingerprint
    try:
        said = request(sock, "model-shadow", {"path": str(candidate)})
        assert said["changed"] and "backwards.tflite" in said["message"]
        assert "re-mapped through the classical M" in said["message"]
        cand_fp = said["candidate"]["fingerprint"]
        assert request(sock, "model-shadow", {"path": str(candidate)})["changed"] is False
        with pytest.raises(ControlError, match=r"too_few_verified.*0 verified cycles"):
            request(sock, "model-promote")
        cycles = _verified(served, sock, 3)
        status = request(sock, "model-status")
        evidence = status["candidate"]["evidence"]
        assert evidence["verified"] == 3 and evidence["candidate"]["missed"] == 0
        assert evidence["candidate"]["rms_units"] > 3 * evidence["live"]["rms_units"]
        assert status["promotion"]["reason"] == CANDIDATE_WORSE
        with pytest.raises(ControlError, match=r"refused \(candidate_worse\): 3 verified cycles; RMS error "
                                               r"against them: candidate .* units, live .* units"):
            request(sock, "model-promote")
        assert request(sock, "status")["model"]["fingerprint"] == live_fp
        cli = _cli("model", "promote", "-s", str(sock))
        assert cli.returncode == 1 and "candidate_worse" in cli.stderr and "Traceback" not in cli.stderr
        shown = _cli("model", "status", "-s", str(sock))
        assert shown.returncode == 0 and f"candidate in shadow: backwards.tflite ({cand_fp})" in shown.stdout
        assert "promote: not yet (candidate_worse)" in shown.stdout
        metrics = _metrics(daemon)
        assert "temalign_shadow_verified_cycles 3.0" in metrics
        assert 'temalign_shadow_rms_error_units{model="candidate"}' in metrics
        assert 'temalign_model_swaps_total{kind="promote"} 0.0' in metrics
    finally:
        daemon.stop()
    entries = read_journal(short_dir / "state")
    shadows = [e for e in entries if e["kind"] == "shadow"]
    wobbles = [e for e in entries if e["kind"] == "wobble" and e["phase"] == "done" and e.get("trusted")
               is not None]
    assert len(shadows) == len(wobbles) >= cycles + 3 and sum(e["label"] == "verify" for e in shadows) == 3
    assert all(e["live"]["fingerprint"] == live_fp and e["candidate"]["fingerprint"] == cand_fp
               and e["live"]["delta"] is not None and e["candidate"]["delta"] is not None for e in shadows)
    scored = [e for e in entries if e["kind"] == "shadow.verified"]
    assert len(scored) == 3 and all(e["candidate_error"] > e["live_error"] for e in scored)
    refusals = [e["refused"] for e in entries if e["kind"] == "model.promote"]
    assert refusals == [TOO_FEW_VERIFIED, CANDIDATE_WORSE, CANDIDATE_WORSE]
    assert not [e for e in entries if e["kind"] == "model.swap"]

    again = _daemon(served, connect, short_dir, models={"promote_min_verified": 3})  # it survives a restart
    try:
        status = request(again.settings.control.socket, "model-status")
        assert status["candidate"]["fingerprint"] == cand_fp
        assert status["candidate"]["evidence"]["verified"] == 3
        stopped = request(again.settings.control.socket, "model-shadow-stop")
        assert stopped["changed"] and stopped["candidate"] is None
        assert "3 verified cycles" in stopped["message"]
    finally:
        again.stop()
    assert [p.name for p in (short_dir / "state" / "models").iterdir()] == ["models.json"]


def test_promote_then_rollback_restores_the_previous_model(make_twin: Any, connect: Any,
                                                           short_dir: Path) -> None:
    served = make_twin()
    candidate = _spotnet_copy(short_dir)
    sections = {"models": {"promote_min_verified": 2}}
    daemon = _daemon(served, connect, short_dir, **sections)
    sock = daemon.settings.control.socket
    live_fp = daemon.estimator.model.fingerprint
    try:
        cand_fp = request(sock, "model-shadow", {"path": str(candidate)})["candidate"]["fingerprint"]
        assert cand_fp != live_fp
        _verified(served, sock, 2)
        promoted = request(sock, "model-promote")
        text = promoted["message"]
        assert f"promoted spotnet_b.tflite ({cand_fp}) in place of spotnet.tflite ({live_fp})" in text
        assert "2 verified cycles; RMS error against them: candidate" in text
        assert "its walk goes through the classical M" in text
        assert promoted["live"]["source"] == "promoted" and promoted["previous"]["fingerprint"] == live_fp
        status = request(sock, "status")
        assert status["model"]["fingerprint"] == cand_fp and status["model"]["source"] == "promoted"
        _measured(served, sock, JUMPS[2])  # it measures with the promoted model
        assert 'temalign_model_swaps_total{kind="promote"} 1.0' in _metrics(daemon)
        assert 'file="spotnet_b.tflite"' in _metrics(daemon)
    finally:
        daemon.stop()

    daemon = _daemon(served, connect, short_dir, **sections)  # the promotion survives a restart
    sock = daemon.settings.control.socket
    try:
        assert daemon.estimator.model.fingerprint == cand_fp
        rolled = request(sock, "model-rollback")
        back = f"rolled back to spotnet.tflite ({live_fp}), the config's estimator.model again"
        assert back in rolled["message"]
        assert request(sock, "status")["model"]["fingerprint"] == live_fp
        assert request(sock, "status")["model"]["source"] == "config"
        _measured(served, sock, JUMPS[3])
        with pytest.raises(ControlError, match="rollback: refused: no previous model is kept"):
            request(sock, "model-rollback")
        assert 'temalign_model_swaps_total{kind="rollback"} 1.0' in _metrics(daemon)
    finally:
        daemon.stop()
    swaps = [e for e in read_journal(short_dir / "state") if e["kind"] == "model.swap"]
    assert [(e["phase"], e["swap"]) for e in swaps] == [("intent", "promote"), ("done", "promote"),
                                                        ("intent", "rollback"), ("done", "rollback")]
    assert swaps[0]["from"]["fingerprint"] == live_fp and swaps[0]["to"]["fingerprint"] == cand_fp
    assert swaps[0]["evidence"]["verified"] == 2
    assert swaps[2]["from"]["fingerprint"] == cand_fp and swaps[2]["to"]["fingerprint"] == live_fp


def test_reset_with_the_daemon_stopped_then_rollback_brings_the_promoted_model_back(
        make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    sections = {"models": {"promote_min_verified": 1}}
    daemon = _daemon(served, connect, short_dir, **sections)
    sock = daemon.settings.control.socket
    try:
        said = request(sock, "model-shadow", {"path": str(_spotnet_copy(short_dir))})
        cand_fp = said["candidate"]["fingerprint"]
        _verified(served, sock, 1)
        request(sock, "model-promote")
    finally:
        daemon.stop()
    path = short_dir / "temalign.yaml"
    path.write_text(yaml.safe_dump(config(served, short_dir, **sections)))
    check = _cli("config", "check", str(path))
    assert check.returncode == 0 and f"spotnet_b.tflite ({cand_fp}" in check.stdout
    assert "is live instead of estimator.model until `temalign model rollback`" in check.stdout
    reset = _cli("model", "reset", "--config", str(path))
    assert reset.returncode == 0 and "is live from the next start" in reset.stdout, reset
    daemon = _daemon(served, connect, short_dir, **sections)
    sock = daemon.settings.control.socket
    try:
        assert request(sock, "status")["model"]["source"] == "config"
        assert request(sock, "model-reset")["changed"] is False
        rolled = request(sock, "model-rollback")
        assert rolled["live"]["fingerprint"] == cand_fp and "kept in" in rolled["message"]
        assert daemon.estimator.model.fingerprint == cand_fp
    finally:
        daemon.stop()


def test_a_bad_candidate_is_refused_with_a_clear_message_and_changes_nothing(make_twin: Any, connect: Any,
                                                                             short_dir: Path) -> None:
    served = make_twin()
    no_card = short_dir / "nocard.tflite"
    shutil.copyfile(shipped.model_path("spotnet"), no_card)
    other_wobble = _backwards_model(short_dir)
    card = json.loads(other_wobble.with_suffix(".json").read_text())
    other_wobble.with_suffix(".json").write_text(json.dumps(card | {"wobble_fraction": 0.05}))
    daemon = _daemon(served, connect, short_dir)
    sock = daemon.settings.control.socket
    try:
        for asked, words in [(str(short_dir / "absent.tflite"), "absent.tflite: no such file"),
                             (str(no_card), "its card .*nocard.json is missing"),
                             (str(other_wobble), "expects a 0.05 wobble"),
                             ("relative.tflite", "not an absolute path"),
                             ("spotnet", "is the live model itself")]:
            with pytest.raises(ControlError, match=f"model shadow: .*{words}"):
                request(sock, "model-shadow", {"path": asked})
        status = request(sock, "model-status")
        assert status["candidate"] is None and status["live"]["source"] == "config"
        with pytest.raises(ControlError, match="promote: refused: no candidate in shadow"):
            request(sock, "model-promote")
        cli = _cli("model", "shadow", str(no_card), "-s", str(sock))
        assert cli.returncode == 1 and "is missing" in cli.stderr and "Traceback" not in cli.stderr
        assert _cli("model", "shadow", "-s", str(sock)).returncode == 2
    finally:
        daemon.stop()
    models = short_dir / "state" / "models"
    assert not models.exists() or [p.name for p in models.iterdir()] == []
    assert _cli("model", "status", "-s", str(sock)).returncode == 3


def test_a_candidate_that_fails_never_fails_the_cycle(make_twin: Any, connect: Any, short_dir: Path) -> None:
    served = make_twin()
    daemon = _daemon(served, connect, short_dir)
    sock = daemon.settings.control.socket
    try:
        request(sock, "model-shadow", {"path": str(_spotnet_copy(short_dir))})
        shadow = daemon.parts.shadow
        assert shadow is not None

        def broken(stack: Any) -> Any:
            raise RuntimeError("the candidate broke")

        shadow.candidate.read_spots = broken  # type: ignore[method-assign]
        _verified(served, sock, 1)
        status = request(sock, "model-status")["candidate"]
        assert status["failures"] == 2 and "the candidate broke" in status["last_failure"]
        assert status["evidence"]["candidate"]["missed"] == 1 and status["evidence"]["live"]["scored"] == 1
        assert "temalign_shadow_failures_total 2.0" in _metrics(daemon)
    finally:
        daemon.stop()
    errors = [e["candidate"]["error"] for e in read_journal(short_dir / "state") if e["kind"] == "shadow"]
    assert errors == ["RuntimeError: the candidate broke"] * 2


def test_the_store_keeps_one_copy_and_refuses_to_guess(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    kept = store.keep(shipped.model_path("spotnet"), origin="candidate", since="now")
    assert store.file(kept).read_bytes() == shipped.model_path("spotnet").read_bytes()
    assert store.file(kept).with_suffix(".json").is_file()
    store.collect(store.load())
    assert not store.file(kept).exists()
    store.root.mkdir(exist_ok=True)
    store.path.write_text("{not json")
    with pytest.raises(ValueError, match="will not guess which model is live"):
        store.load()


def test_a_persons_reference_scores_the_shadow_on_the_stacks_of_its_window(make_twin: Any, connect: Any,
                                                                           short_dir: Path) -> None:
    """A person who aligned by hand and set the reference says what was right on every stack of the
    next store.reference_label_s, with no correction needed (the label: reference - position)."""
    served = make_twin()
    daemon = _daemon(served, connect, short_dir)
    sock = daemon.settings.control.socket
    try:
        request(sock, "model-shadow", {"path": str(_spotnet_copy(short_dir))})
        request(sock, "reference-set")
        result = request(sock, "once")
        assert result["outcome"] in ("within_deadband", "checked", "corrected"), result
        evidence = request(sock, "model-status")["candidate"]["evidence"]
    finally:
        daemon.stop()
    scored = [e for e in read_journal(short_dir / "state") if e["kind"] == "shadow.verified"]
    assert scored and scored[0]["by"] == "reference"
    assert scored[0]["label"] == [0.0, 0.0]  # the daemon measured where the person had aligned
    assert scored[0]["live_error"] == pytest.approx(scored[0]["candidate_error"])  # the same network
    assert evidence["verified"] == len(scored)
