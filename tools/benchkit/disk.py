"""A state directory on a disk the fault campaign can break mid-cycle: a small tmpfs of its own
that fills up (real ENOSPC) or whose directory turns immutable (real EPERM on every create,
rename and removal, as a read-only filesystem refuses them), and comes back.

Both need root (mount, chattr). `unavailable()` says why they cannot run, so a campaign or a test
reports the reason instead of skipping silently. A real remount read-only is refused by the
kernel while the journal holds its file open for writing, so "read-only" here leaves appends to
the already open journal working; the full disk covers a journal that refuses its writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SIZE = "2m"
FILLER = "filler.bin"


def unavailable() -> str | None:
    """None when disk faults can run here, else why not."""
    if os.geteuid() != 0:
        return "disk faults need root (mount -t tmpfs, chattr +i)"
    for tool in ("mount", "umount", "chattr"):
        if shutil.which(tool) is None:
            return f"disk faults need {tool}, which is not installed"
    return None


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte (real ENOSPC); returns the filler file.
    Unbuffered writes, so the disk's refusal comes here and not at close."""
    filler = directory / FILLER
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


class StateDisk:
    """A tmpfs at a fresh mount point; the state directory is `state` inside it."""

    def __init__(self) -> None:
        self.mount_point = Path(tempfile.mkdtemp(prefix="ta-disk-"))
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0750", "tmpfs",
                        str(self.mount_point)], check=True, capture_output=True)
        self.state_dir = self.mount_point / "state"
        self.state_dir.mkdir(mode=0o750)
        self.broken: str | None = None

    def fill(self) -> None:
        """The next write in the state dir gets ENOSPC."""
        fill(self.mount_point)
        self.broken = "full"

    def freeze(self) -> None:
        """The state directory and its files immutable: no create, rename or removal (EPERM)."""
        paths = [str(self.state_dir), *(str(p) for p in self.state_dir.iterdir())]
        subprocess.run(["chattr", "+i", *paths], check=True, capture_output=True)
        self.broken = "read-only"

    def break_(self, how: str) -> None:
        if how == "full":
            self.fill()
        elif how == "read-only":
            self.freeze()
        else:
            raise ValueError(f"how must be full or read-only, got {how!r}")

    def mend(self) -> None:
        """Room again, writable again: as after a person freed space or remounted."""
        if self.broken == "full":
            (self.mount_point / FILLER).unlink()
        elif self.broken == "read-only":
            paths = [str(self.state_dir), *(str(p) for p in self.state_dir.iterdir())]
            subprocess.run(["chattr", "-i", *paths], check=True, capture_output=True)
        self.broken = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.mend()
        subprocess.run(["umount", "-l", str(self.mount_point)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            self.mount_point.rmdir()
