"""systemd's notify protocol (sd_notify(3)) in a few lines, without a package.

The protocol is one datagram of newline-separated VAR=value assignments to the AF_UNIX socket named
by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). Outside systemd the variable is
unset and every call is a no-op returning False, so the daemon calls these unconditionally.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "status", "stopping", "watchdog_interval_s", "watchdog_ping"]


def _address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def notify(message: str) -> bool:
    """Send `message` to systemd; True when it was delivered, False when not under systemd or on error.

    Never raises: a lost status update must not stop the daemon (the watchdog catches a daemon
    that really stopped talking).
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _address(target)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a stalled systemd (queue full) must not freeze a cycle
            sock.connect(address)
            sock.send(message.encode())
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    """STATUS is one assignment; a newline would start another."""
    return " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """Start-up is done (Type=notify: systemctl start returns now), with an optional status line."""
    message = "READY=1"
    if status:
        message += f"\nSTATUS={_one_line(status)}"
    return notify(message)


def status(text: str) -> bool:
    """The free-text status `systemctl status temalign` shows."""
    return notify(f"STATUS={_one_line(text)}")


def stopping() -> bool:
    """Shutdown has begun (the cycle in flight is being finished or aborted safely)."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """A configuration reload (SIGHUP) has begun; send `ready()` when it is done."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog_interval_s() -> float | None:
    """systemd's watchdog timeout for this process (WatchdogSec=), or None when there is none.

    Ping at least every half of it. None too when WATCHDOG_PID names another process (the
    variables were inherited from a parent) or the values do not parse.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def watchdog_ping() -> bool:
    """Tell the watchdog the daemon is alive (call from the scheduler's healthy path, not a bare timer)."""
    return notify("WATCHDOG=1")
