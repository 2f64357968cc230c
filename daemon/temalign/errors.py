"""Errors meant for a person: the CLI prints their message (no traceback) and exits with their status."""

from __future__ import annotations


class TemalignError(Exception):
    """A failure the user can act on; `exit_status` is what the command returns."""

    exit_status = 1


class ConfigError(TemalignError):
    """A configuration that cannot be used; nothing was connected or moved.

    `summary` says which file and key without the values found there, for records that persons
    other than the one who wrote the file read (the journal, the logs): a config symlinked to a
    file that holds secrets must not end up quoted in them."""

    exit_status = 2

    def __init__(self, message: str, *, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary if summary is not None else message
