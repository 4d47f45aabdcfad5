"""The lock that makes a Postgres data directory one ``flowctl up``'s at a time.

``flowctl up`` keeps its data in one directory shared by every terminal of the user
(``~/.local/share/flowledger/pg``). A second ``up`` on it must refuse before it touches anything:
not start a server, not empty it (``--fresh``), and above all not stop the server the first one
runs. The lock is an exclusive ``flock`` on ``<datadir>.lock`` beside the directory (the directory
itself may belong to the ``postgres`` account), holding the owner's pid as text; the kernel drops
it when its holder exits, however it exits, so a killed ``up`` never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class DataDirInUseError(RuntimeError):
    """Another process holds the data directory's lock."""

    def __init__(self, datadir: Path, pid: int | None) -> None:
        holder = f"flowctl up pid {pid}" if pid is not None else "another flowctl up"
        super().__init__(
            f"the data dir {datadir} is in use by {holder}; stop it or use --data-dir"
        )
        self.pid = pid


def lock_path(datadir: Path) -> Path:
    return datadir.with_name(datadir.name + ".lock")


@contextlib.contextmanager
def datadir_lock(datadir: Path) -> Iterator[None]:
    """Hold ``datadir``'s lock for the block; :class:`DataDirInUseError` when another has it."""
    path = lock_path(datadir.absolute())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUseError(datadir, _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


def _holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
