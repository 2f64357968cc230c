#!Python
"""SerialEM (4.0 or newer, its Python): a hologram series with temalign paused around it.

temalign wobbles C1 every few minutes; a wobble during an exposure spoils the hologram. This
script pauses the daemon over its HTTP control endpoint before the first Record and resumes it
after the last, with temalign's stdlib-only client (docs/operations.md, "Pause from the
acquisition PC"). The pause is bounded: should the script or the PC die mid-series, the daemon
goes on by itself once the series' time (and MARGIN_S) has passed.

Set up once on the camera PC: copy the folder `temalign` holding `__init__.py`, `client.py` and
`timetext.py` to CLIENT_DIR, and the daemon's token (control.http_token_file) to TOKEN_FILE;
set URL to the daemon's control.http_listen. The first line `#!Python` tells SerialEM to run the
script with its Python.
"""

import os
import sys

import serialem as sem

CLIENT_DIR = os.environ.get("TEMALIGN_CLIENT_DIR", r"C:\temalign")
URL = os.environ.get("TEMALIGN_URL", "http://192.168.10.5:9642")
TOKEN_FILE = os.environ.get("TEMALIGN_TOKEN_FILE", r"C:\temalign\token")
OUTPUT = os.environ.get("SERIES_FILE", r"C:\data\holograms.mrc")
FRAMES = int(os.environ.get("SERIES_FRAMES", "20"))
EXPOSURE_S = float(os.environ.get("SERIES_EXPOSURE_S", "4.0"))
READOUT_S = 2.0  # per frame, beyond the exposure: readout and saving
MARGIN_S = 120.0  # the pause outlasts the planned series by this much

sys.path.insert(0, CLIENT_DIR)
from temalign.client import Client, DaemonError  # noqa: E402 (after the path is set)


def record_series() -> None:
    sem.SetExposure("R", EXPOSURE_S)
    sem.OpenNewFile(OUTPUT)
    try:
        for _ in range(FRAMES):
            sem.Record()
            sem.Save()
    finally:
        sem.CloseFile()


def main() -> None:
    daemon = Client(URL, token_file=TOKEN_FILE)
    budget_s = FRAMES * (EXPOSURE_S + READOUT_S) + MARGIN_S
    try:
        with daemon.paused(for_s=budget_s, reason=f"SerialEM: {FRAMES} holograms to {OUTPUT}"):
            record_series()
    except DaemonError as error:
        sem.OKBox(f"temalign could not be paused, so no hologram was recorded: {error}")
        raise


main()
