"""The daemon campaign (tools/benchkit/daemon_faults.py), one round for `make test`: a real
`temalign run` met by a regular file and a system directory where its socket goes, a second daemon,
SIGTERM and SIGKILL with restarts, a flood of half-sent connections, hostile bytes on both
listeners, a pause or the busy file in the middle of `once`, and a read-only state dir. Any
violation fails, with the seed, round and kind that show it again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from benchkit.daemon_faults import KINDS, daemon_campaign

SEED = 7
ROOT_ONLY = frozenset({"read-only-state-dir"})
"""Kinds that need root (mount): skipped with their reason where it is missing, never silently."""


@pytest.fixture(scope="module")
def campaign() -> dict[str, Any]:
    return daemon_campaign(seed=SEED, rounds=1)


def test_the_daemon_breaks_no_promise(campaign: dict[str, Any]) -> None:
    assert not campaign["violations"], json.dumps(campaign["violations"], indent=1)


def test_every_kind_ran(campaign: dict[str, Any]) -> None:
    ran, skipped = set(campaign["scenarios"]), campaign["skipped"]
    assert not set(skipped) - ROOT_ONLY, f"skipped without a root reason: {skipped}"
    assert ran | set(skipped) == set(KINDS), (ran, skipped)
    assert campaign["bad_inputs"] > 0
    assert campaign["flood"]["max_threads"] <= campaign["flood"]["thread_limit"]
    if skipped:
        pytest.skip(f"not run here: {skipped}")
