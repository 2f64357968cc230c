"""The write-ahead journal (safety.md, invariant 6): durable before `append` returns, seq numbers
that never repeat, rotation with retention, and a file that no kill can leave unreadable."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import temalign
from temalign.clock import SteppedClock
from temalign.record.journal import (
    ACTIVE_NAME,
    REPAIRED_KIND,
    ROTATED_KIND,
    TORN_NAME,
    Journal,
    JournalCorrupt,
    JournalLocked,
    read_journal,
    rotated_name,
)


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of bookkeeping (rotation, seq, pending) need hundreds of appends; a real fsync costs
    milliseconds each on a busy disk. Durability itself is tested with the real fsync."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def strict_loads(line: bytes | str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(line, parse_constant=refuse)


def rotated(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("journal.*.jsonl") if p.name != ACTIVE_NAME)


def test_append_is_on_disk_and_fsynced_before_it_returns(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    journal_file = tmp_path / ACTIVE_NAME
    synced: list[bytes] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        real_fsync(fd)
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(journal_file.resolve()):
            synced.append(journal_file.read_bytes())

    monkeypatch.setattr(os, "fsync", watching_fsync)
    clock = SteppedClock(12.5)
    with Journal(tmp_path, clock=clock) as journal:
        entry = journal.append("measure", misalignment=3.25, position=(10, -4))
        assert synced, "append returned without an fsync of the journal"
        assert synced[-1].endswith((json.dumps(entry, separators=(",", ":")) + "\n").encode())
        assert entry["seq"] == 1 and entry["kind"] == "measure" and entry["t"] == 12.5
        assert entry["position"] == [10, -4]
        assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0
        clock.advance(1)
        second = journal.append("decision", action="move")
        assert second["seq"] == 2 and second["t"] == 13.5
        assert [e["seq"] for e in journal.entries()] == [1, 2]
    lines = journal_file.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [strict_loads(line) for line in lines[:-1]] == [entry, second]
    assert read_journal(tmp_path) == [entry, second] == read_journal(journal_file)


def test_without_a_clock_there_is_no_t(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        assert "t" not in journal.append("start")


def test_seq_keeps_growing_across_reopen_and_rotation(tmp_path: Path, no_fsync: None) -> None:
    last = 0
    for _ in range(5):
        with Journal(tmp_path, max_bytes=700, keep_files=1000) as journal:
            assert journal.last_seq == last
            first = journal.append("start")
            assert first["seq"] in (last + 1, last + 2), "one more, or two if this append rotated"
            for i in range(20):
                journal.append("measure", i=i, note="x" * 30)
            last = journal.last_seq
    seqs = [e["seq"] for e in read_journal(tmp_path)]
    assert seqs == list(range(1, last + 1))
    names = rotated(tmp_path)
    assert len(names) >= 5
    for name in names:
        first_line = (tmp_path / name).read_bytes().split(b"\n", 1)[0]
        assert name == rotated_name(strict_loads(first_line)["seq"])


def test_rotation_keeps_exactly_keep_files_and_deletes_older(tmp_path: Path, no_fsync: None) -> None:
    max_bytes = 1000
    with Journal(tmp_path, max_bytes=max_bytes, keep_files=3) as journal:
        for i in range(300):
            journal.append("measure", i=i, note="y" * 40)
        names = rotated(tmp_path)
        assert len(names) == 3
        kept = [e["seq"] for e in journal.entries()]
        assert kept == list(range(kept[0], journal.last_seq + 1))
        assert kept[0] > 200, "older files were not deleted"
        assert names[0] == rotated_name(kept[0])
        headers = sum(1 for e in journal.entries() if e["kind"] == ROTATED_KIND)
        assert headers == 4, "each file after the first starts with one"
        for name in names:
            lines = (tmp_path / name).read_bytes().split(b"\n")[:-1]
            header = len(lines[0]) + 1 if strict_loads(lines[0])["kind"] == ROTATED_KIND else 0
            assert (tmp_path / name).stat().st_size <= max_bytes + header
            assert len(lines) > 1
    with Journal(tmp_path, max_bytes=max_bytes, keep_files=1):
        assert len(rotated(tmp_path)) == 1, "a lower keep_files is applied at the next start"


def test_tail_reads_across_rotated_files(tmp_path: Path, no_fsync: None) -> None:
    with Journal(tmp_path, max_bytes=500, keep_files=50) as journal:
        for i in range(60):
            journal.append("measure", i=i)
        everything = list(journal.entries())
        assert journal.tail(25) == everything[-25:]
        assert journal.tail(1) == everything[-1:]
        assert journal.tail(0) == []
        assert journal.tail(10_000) == everything
        assert len(rotated(tmp_path)) > 3


def test_a_torn_last_line_is_cut_kept_and_recorded(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        for i in range(3):
            journal.append("measure", i=i)
    fragment = b'{"seq":4,"time":"2026-01-01T00:00:00Z","kind":"mov'
    with open(tmp_path / ACTIVE_NAME, "ab") as handle:
        handle.write(fragment)
    assert [e["seq"] for e in read_journal(tmp_path)] == [1, 2, 3], "a reader skips a torn last line"
    with Journal(tmp_path) as journal:
        entries = list(journal.entries())
        assert [e["seq"] for e in entries] == [1, 2, 3, 4]
        repaired = entries[-1]
        assert repaired["kind"] == REPAIRED_KIND
        assert repaired["bytes"] == len(fragment) and repaired["after_seq"] == 3
        assert repaired["kept_in"] == TORN_NAME
        assert journal.append("measure")["seq"] == 5
    assert fragment in (tmp_path / TORN_NAME).read_bytes()
    data = (tmp_path / ACTIVE_NAME).read_bytes()
    assert data.endswith(b"\n") and all(strict_loads(line) for line in data.split(b"\n")[:-1])


def test_a_whole_entry_without_its_newline_counts_as_torn(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        journal.append("measure")
    with open(tmp_path / ACTIVE_NAME, "ab") as handle:
        handle.write(b'{"seq":2,"kind":"move"}')
    with Journal(tmp_path) as journal:
        assert [(e["seq"], e["kind"]) for e in journal.entries()] == [(1, "measure"), (2, REPAIRED_KIND)]


def test_a_bad_line_before_the_last_is_corruption_named_by_file_and_line(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        for i in range(3):
            journal.append("measure", i=i)
    path = tmp_path / ACTIVE_NAME
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalCorrupt, match=rf"{ACTIVE_NAME}, line 2"):
        Journal(tmp_path)
    with pytest.raises(JournalCorrupt, match="line 2"):
        read_journal(tmp_path)
    Journal(tmp_path / "other").close()


def test_a_kill_mid_rotation_is_finished_at_the_next_open(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        op = journal.intent("move", target=(5, 5))
        journal.append("measure")
    os.rename(tmp_path / ACTIVE_NAME, tmp_path / rotated_name(1))
    with Journal(tmp_path) as journal:
        assert journal.last_seq == 3
        header = journal.tail(1)[0]
        assert header["kind"] == ROTATED_KIND and header["from"] == rotated_name(1)
        assert [p["op"] for p in journal.pending()] == [op]
        assert journal.append("measure")["seq"] == 4
        assert [e["seq"] for e in journal.entries()] == [1, 2, 3, 4]


def test_pending_finds_an_intent_without_outcome_even_after_its_file_is_deleted(
        tmp_path: Path, no_fsync: None) -> None:
    with Journal(tmp_path, max_bytes=600, keep_files=1) as journal:
        done = journal.intent("wobble", label="w1")
        journal.outcome(done, "wobble", ok=True)
        op = journal.intent("move", target=[12, -3])
        assert [p["op"] for p in journal.pending()] == [op]
        for i in range(100):
            journal.append("measure", i=i)
    assert all(int(name.split(".")[1]) > op for name in rotated(tmp_path)), "the intent's file is gone"
    with Journal(tmp_path, max_bytes=600, keep_files=1) as journal:
        pending = journal.pending()
        assert len(pending) == 1
        assert pending[0]["op"] == op == pending[0]["seq"]
        assert pending[0]["kind"] == "move" and pending[0]["phase"] == "intent"
        assert pending[0]["target"] == [12, -3]
        outcome = journal.outcome(op, "move", ok=False, recovered=True)
        assert outcome["phase"] == "done" and outcome["op"] == op
        assert journal.pending() == []
    with Journal(tmp_path, max_bytes=600, keep_files=1) as journal:
        assert journal.pending() == []


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    with pytest.raises(JournalLocked, match=f"another temalign daemon holds {tmp_path}.*pid {os.getpid()}"):
        Journal(tmp_path)
    journal.append("still fine")
    journal.close()
    with Journal(tmp_path) as again:
        assert again.last_seq == 1


def test_files_are_owner_and_group_only_whatever_the_umask(tmp_path: Path, no_fsync: None) -> None:
    old = os.umask(0o077)
    try:
        with Journal(tmp_path, max_bytes=300, keep_files=5) as journal:
            for i in range(20):
                journal.append("measure", i=i)
        with open(tmp_path / ACTIVE_NAME, "ab") as handle:
            handle.write(b"{")
        Journal(tmp_path).close()
    finally:
        os.umask(old)
    names = [ACTIVE_NAME, TORN_NAME, "journal.lock", *rotated(tmp_path)]
    assert len(names) > 4
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in names}
    assert modes == dict.fromkeys(names, 0o640)


def test_numpy_values_and_non_finite_floats_are_strict_json(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        entry = journal.append(
            "measure", a=np.float32(1.5), b=np.int64(3), flag=np.bool_(True), where=(1, 2),
            grid=np.array([[1.0, np.nan], [np.inf, -np.inf]]), nan=math.nan, big=np.float64(np.inf),
            nested={"m": [np.float64(-np.inf), None]}, path=Path("/var/lib/temalign"))
        before = journal.last_seq
        with pytest.raises(TypeError, match="journal field obj"):
            journal.append("measure", obj=object())
        with pytest.raises(ValueError, match="reserved"):
            journal.append("measure", seq=99)
        assert journal.last_seq == before
    raw = (tmp_path / ACTIVE_NAME).read_bytes().split(b"\n")
    assert len(raw) == 2 and raw[1] == b""
    back = strict_loads(raw[0])
    assert back == entry
    assert back["a"] == 1.5 and back["b"] == 3 and back["flag"] is True and back["where"] == [1, 2]
    assert back["grid"] == [[1.0, "NaN"], ["Infinity", "-Infinity"]]
    assert back["nan"] == "NaN" and back["big"] == "Infinity" and back["nested"] == {"m": ["-Infinity", None]}
    assert back["path"] == "/var/lib/temalign"


def test_appends_from_threads_interleave_whole(tmp_path: Path, no_fsync: None) -> None:
    with Journal(tmp_path, max_bytes=2000, keep_files=1000) as journal:
        def work(name: str) -> None:
            for i in range(25):
                op = journal.intent("move", who=name, i=i)
                journal.outcome(op, "move", ok=True)

        threads = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert journal.pending() == []
    seqs = [e["seq"] for e in read_journal(tmp_path)]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 200


def test_read_journal_without_a_journal_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_journal(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_journal(tmp_path / "absent")


CHILD = r"""
import os
import sys
import time
from pathlib import Path
from temalign.record.journal import Journal

if sys.argv[3] == "chunked":
    real_write = os.write

    def chunked_write(fd, data):
        written = real_write(fd, bytes(data[:16]))
        time.sleep(0.001)
        return written

    os.write = chunked_write
journal = Journal(Path(sys.argv[1]), max_bytes=int(sys.argv[2]), keep_files=1000)
print("open", flush=True)
i = 0
while True:
    op = journal.intent("move", target=[i, -i], pad="p" * (i * 37 % 500))
    print(op, flush=True)
    print(journal.outcome(op, "move", ok=True)["seq"], flush=True)
    i += 1
"""


def test_sigkill_while_appending_loses_no_returned_entry(tmp_path: Path) -> None:
    """Every other child writes its lines in 16-byte pieces, so most of its kills land mid-line
    and the next open has a torn line to repair; the others kill at full speed, rotations
    included. Every seq an append returned must be in the file afterwards."""
    env = {**os.environ, "PYTHONPATH": str(Path(temalign.__file__).resolve().parents[1])}
    rng = random.Random(20240601)
    max_bytes = 4096
    returned: set[int] = set()
    repairs = 0
    for run in range(20):
        how = "chunked" if run % 2 else "whole"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(max_bytes), how],
                                 stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None
        assert child.stdout.readline() == b"open\n"
        time.sleep(rng.uniform(0.005, 0.04))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        returned.update(int(line) for line in out.split(b"\n") if line.strip())
        with Journal(tmp_path, max_bytes=max_bytes, keep_files=1000) as journal:
            entries = list(journal.entries())
            seqs = [e["seq"] for e in entries]
            assert seqs == sorted(set(seqs)), "seq numbers repeated or went back"
            assert returned <= set(seqs), f"returned but lost: {sorted(returned - set(seqs))[:10]}"
            pending = journal.pending()
            assert len(pending) <= 1, "more than the one intent in flight is pending"
            repairs += sum(1 for e in entries[-2:] if e["kind"] == REPAIRED_KIND)
            for intent in pending:
                journal.outcome(intent["op"], intent["kind"], ok=False, recovered=True)
    assert len(returned) > 20, "the children hardly appended: the kills did not land mid-loop"
    assert repairs >= 2, "hardly any kill landed mid-line: the repair went untested here"
    assert len(rotated(tmp_path)) > 2, "no rotation happened during the kills"
    assert (tmp_path / TORN_NAME).stat().st_size > 0
    data = (tmp_path / ACTIVE_NAME).read_bytes()
    assert data.endswith(b"\n") and all(strict_loads(line) for line in data.split(b"\n")[:-1])


def test_many_pending_intents_do_not_make_every_append_rotate(tmp_path: Path, no_fsync: None) -> None:
    with Journal(tmp_path, max_bytes=600, keep_files=1000) as journal:
        for i in range(15):
            journal.intent("move", target=[i, i])
        for i in range(10):
            journal.append("measure", i=i)
    with Journal(tmp_path, max_bytes=600, keep_files=1000) as journal:
        for i in range(10):
            journal.append("measure", i=i)
        assert len(journal.pending()) == 15
        header = next(e for e in journal.entries() if e["kind"] == ROTATED_KIND)
        assert len(json.dumps(header)) > 600, "the carried intents alone exceed max_bytes"
        rotations = sum(1 for e in journal.entries() if e["kind"] == ROTATED_KIND)
    measures = 20 * len(json.dumps({"seq": 100, "time": "x" * 27, "kind": "measure", "i": 1}))
    assert rotations <= 3 + measures // 600, "every append rotated"


def test_a_journal_of_before_0_2_reads_with_todays_reason_codes(tmp_path: Path) -> None:
    """Reason codes were kebab-case before 0.2 (record/result.py: one convention now); every reader
    sees today's, and a reason that is not a code (a sentence) is left as it is."""
    old = [{"seq": 1, "time": "2026-11-20T10:00:00.000000Z", "kind": "cycle", "outcome": "refused_limit",
            "reason": "refused-window", "decision": {"action": "refuse", "reason": "refused-window"},
            "before": {"reason": "doubtful-stack"}},
           {"seq": 2, "time": "2026-11-20T10:10:00.000000Z", "kind": "hold", "reason": "3 failures in a row"}]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in old))
    for entries in (read_journal(tmp_path), list(Journal(tmp_path).entries())):
        assert entries[0]["reason"] == entries[0]["decision"]["reason"] == "refused_window"
        assert entries[0]["before"]["reason"] == "doubtful_stack"
        assert entries[1]["reason"] == "3 failures in a row"
