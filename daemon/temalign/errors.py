"""Errors meant for a person: the CLI prints their message (no traceback) and exits with their status."""

from __future__ import annotations


class TemalignError(Exception):
    """A failure the user can act on; `exit_status` is what the command returns."""

    exit_status = 1


class ConfigError(TemalignError):
    """A configuration that cannot be used; nothing was connected or moved."""

    exit_status = 2
