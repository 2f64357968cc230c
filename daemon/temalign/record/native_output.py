"""What native libraries print themselves, caught and logged as events of our own.

LiteRT's C++ runtime writes `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` straight to
file descriptor 2 when the daemon opens its model: under systemd that is a non-JSON line in a
JSON journal, and `temalign run 2>&1 | jq` breaks on it. Python's `sys.stderr` cannot redirect a
C library's writes; only the file descriptors can. `native_output_logged` points fds 1 and 2 at a
temporary file around such a call (the daemon's start-up, before any thread logs) and logs each
line afterwards: lines LiteRT marks INFO at debug level, anything else as a warning."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

import structlog

MAX_CAUGHT_BYTES = 64 * 1024
"""More than a runtime's start-up chatter; the rest is cut."""


@contextlib.contextmanager
def native_output_logged(logger: structlog.stdlib.BoundLogger, source: str) -> Iterator[None]:
    """Inside the block, whatever is written to fds 1 and 2 is caught; after it, logged line by
    line as event `source` (e.g. "litert"). Use it only while no other thread writes output."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            caught = sink.read(MAX_CAUGHT_BYTES).decode("utf-8", errors="replace")
            for line in caught.splitlines():
                if line.strip():
                    say = logger.debug if line.startswith("INFO:") else logger.warning
                    say(source, said=line.strip())
