"""What every listener of the daemon (the control socket, the metrics endpoint) is built on: a
socketserver with a thread per connection, at most `max_connections` at once, each connection's
reads bounded by a timeout.

A connection beyond the limit is closed at once (Prometheus retries at its next scrape; the CLI
says the daemon is busy), and a thread the system refuses to start (a task limit: TasksMax) costs
that one connection, never the listener: the review found 60 half-sent HTTP requests that each held
a thread for ever, and the control socket's accept thread dying of "can't start new thread".
`alive()` says whether the serving thread still runs: the watchdog stops pinging when it does not,
so systemd restarts a daemon whose listener died."""

from __future__ import annotations

import logging
import socketserver
import sys
import threading
from typing import Any

log = logging.getLogger("temalign.listeners")

DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_REQUEST_TIMEOUT_S = 10.0


class BoundedThreads(socketserver.ThreadingMixIn):
    """ThreadingMixIn with a bound on the connections served at once (`max_connections`)."""

    daemon_threads = True
    max_connections = DEFAULT_MAX_CONNECTIONS
    refused = 0
    _slots: threading.BoundedSemaphore | None = None

    def _semaphore(self) -> threading.BoundedSemaphore:
        if self._slots is None:
            self._slots = threading.BoundedSemaphore(self.max_connections)
        return self._slots

    def process_request(self, request: Any, client_address: Any) -> None:
        slots = self._semaphore()
        if not slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True).start()
        except RuntimeError as error:  # the system refused a thread: this connection only is lost
            slots.release()
            self.refused += 1
            log.warning("listener: no thread for a connection (%s); closed it", error)
            self.shutdown_request(request)  # type: ignore[attr-defined]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (a peer that reset it, hostile bytes the handler choked on):
        one log line, not socketserver's traceback on stderr; the listener goes on."""
        error = sys.exc_info()[1]
        log.warning("listener: a connection from %s failed: %s: %s", client_address or "a local peer",
                    type(error).__name__, error)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._semaphore().release()


class Serving:
    """A socketserver served from a daemon thread, with `alive()` for the watchdog."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server = server
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.error: str | None = None
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.serve_forever(poll_interval=0.5)
        except Exception as error:  # the listener is dead: alive() says so, the watchdog stops
            self.error = f"{type(error).__name__}: {error}"
            log.error("listener %s died: %s", self.thread.name, self.error)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)
