"""A client of the daemon's HTTP control endpoint, for acquisition scripts: "I am exposing, don't
wobble" (`pause`), "done" (`resume`), and `status`.

Python 3.8 or newer, standard library only, so it runs on the camera PC (Windows, the Python of
DigitalMicrograph or SerialEM) without installing temalign: copy the folder `temalign` with
`__init__.py`, `client.py` and `timetext.py` in it, or install the package.

On the command line (exit status 0 done, 1 refused by the daemon, 2 a usage mistake, 3 the daemon
cannot be reached):

    python -m temalign.client --url http://192.168.10.5:9642 --token-file C:\\temalign\\token status
    python -m temalign.client pause 10m --reason "hologram series"
    python -m temalign.client resume

`--url` and `--token-file` default to the environment variables TEMALIGN_URL and
TEMALIGN_TOKEN_FILE. In a script:

    from temalign.client import Client
    daemon = Client("http://192.168.10.5:9642", token_file=r"C:\\temalign\\token")
    with daemon.paused(for_s=600, reason="hologram series"):
        ...  # the exposures: no wobble until the block ends, or at most 600 s

The pause's duration is the safety net: a script that dies (or a PC that loses the network) leaves
a pause that ends on its own."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from temalign.timetext import format_duration, format_when, parse_duration

DEFAULT_TIMEOUT_S = 10.0
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class DaemonError(Exception):
    """The daemon refused the request (`status`: its HTTP status), or it cannot be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(DaemonError):
    """No answer from the daemon at that address (not running, a firewall, the wrong URL)."""


def read_token(path: str) -> str:
    """The token in `path`, one line; ValueError (never the token) when it is not usable."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read(4097).strip()
    except OSError as error:
        raise ValueError(f"token file {path}: {error.strerror or error}") from None
    if not token or len(token) > 4096 or any(ch.isspace() for ch in token):
        raise ValueError(f"token file {path}: expected one token on one line")
    return token


class Client:
    """The daemon at `url` (`http://HOST:PORT`), with the bearer token `token` or the one in
    `token_file`."""

    def __init__(self, url: str, token: str | None = None, token_file: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http://HOST:PORT, got {url!r}")
        if token is None:
            if token_file is None:
                raise ValueError("no token: give the daemon's token or its file (control.http_token_file)")
            token = read_token(token_file)
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        # No proxy: the daemon is on the facility network, and a proxy set for the web must not see
        # the token (nor refuse the address).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def status(self) -> dict[str, Any]:
        """What `temalign status --json` shows: `headline`, `state`, `paused_until`, ..."""
        return self._call("GET", "/v1/status")

    def pause(self, for_s: float | None = None, reason: str | None = None,
              replace: bool = False) -> dict[str, Any]:
        """Pause for `for_s` seconds (None: until resumed). A longer pause already in place is kept
        (the reply's `changed` is false) unless `replace`."""
        body: dict[str, Any] = {"replace": replace}
        if for_s is not None:
            body["for_s"] = for_s
        if reason is not None:
            body["reason"] = reason
        return self._call("POST", "/v1/pause", body)

    def resume(self) -> dict[str, Any]:
        """End the pause (the daemon takes the aperture and C1 as they are now)."""
        return self._call("POST", "/v1/resume", {})

    @contextlib.contextmanager
    def paused(self, for_s: float, reason: str | None = None) -> Iterator[dict[str, Any]]:
        """No wobble inside the block, for at most `for_s` seconds; resumed at its end, unless a
        longer pause (a person's) was in place before, which is left as it was."""
        reply = self.pause(for_s, reason)
        try:
            yield reply
        finally:
            if reply.get("changed"):
                try:
                    self.resume()
                except DaemonError as error:
                    print(f"temalign: could not resume ({error}); the pause ends on its own at "
                          f"{reply.get('paused_until')}", file=sys.stderr)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                reply = json.loads(answer.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            raise DaemonError(_error_text(error), error.code) from None
        except (urllib.error.URLError, OSError) as error:
            why = getattr(error, "reason", error)
            raise Unreachable(f"no answer from the temalign daemon at {self.url} ({why})") from None
        except ValueError:
            raise DaemonError(f"an unreadable reply from {self.url}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("result"), dict):
            raise DaemonError(f"an unexpected reply from {self.url}")
        result: dict[str, Any] = reply["result"]
        return result


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        text = str(json.loads(error.read().decode("utf-8"))["error"])
    except (ValueError, KeyError, TypeError, OSError):
        text = str(error.reason)
    return f"{text} (HTTP {error.code})"


def _when(iso: Any) -> str:
    try:
        return format_when(datetime.fromisoformat(str(iso)).timestamp())
    except ValueError:
        return str(iso)


def describe(status: dict[str, Any]) -> str:
    """A few lines of a status: its headline, the last cycle, the next one."""
    lines = [str(status.get("headline", status.get("state")))]
    cycles: list[dict[str, Any]] = status.get("last_cycles") or []
    if cycles:
        lines.append(f"last cycle {_when(cycles[0].get('time'))}: {cycles[0].get('summary')}")
    if status.get("next_cycle_at"):
        lines.append(f"next cycle {_when(status['next_cycle_at'])}")
    uptime = status.get("uptime_s")
    if isinstance(uptime, (int, float)):
        lines.append(f"pid {status.get('pid')}, up {format_duration(uptime)}, "
                     f"temalign {status.get('version')}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("TEMALIGN_URL"),
                        help="the daemon's endpoint, http://HOST:PORT (default: $TEMALIGN_URL)")
    common.add_argument("--token-file", default=os.environ.get("TEMALIGN_TOKEN_FILE"), metavar="PATH",
                        help="file holding the token (default: $TEMALIGN_TOKEN_FILE)")
    common.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
    p = argparse.ArgumentParser(prog="python -m temalign.client", parents=[common],
                                description="Pause and resume a temalign daemon over its HTTP control "
                                            "endpoint, or show its status.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    verbs.add_parser("status", parents=[common], help="the daemon's state, last cycle and next cycle",
                     description="Show the daemon's state; exit status 3 when it cannot be reached.")
    pause = verbs.add_parser("pause", parents=[common], help="no wobble for DURATION (or until resume)",
                             description="Pause the daemon: no wobble starts until resume or until "
                                         "DURATION has passed.")
    pause.add_argument("duration", nargs="?", metavar="DURATION",
                       help="with its unit: 20s, 10m, 2h, 1d (default: until resume)")
    pause.add_argument("--reason", help="shown by the daemon's status")
    pause.add_argument("--replace", action="store_true",
                       help="replace a longer pause already in place")
    verbs.add_parser("resume", parents=[common], help="end the pause",
                     description="End the pause; the daemon takes the aperture and C1 as they are now.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if not args.url:
            raise ValueError("no daemon URL: --url http://HOST:PORT or TEMALIGN_URL")
        client = Client(args.url, token_file=args.token_file)
        if args.verb == "pause":
            for_s = None if args.duration is None else parse_duration(args.duration)
            reply = client.pause(for_s, args.reason, args.replace)
        elif args.verb == "resume":
            reply = client.resume()
        else:
            reply = client.status()
    except ValueError as error:
        print(f"temalign.client: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as error:
        print(f"temalign.client: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except DaemonError as error:
        print(f"temalign.client: refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(reply, indent=1))
    else:
        print(reply.get("message") or describe(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
