"""One driver per study folder: an OS file lock held for as long as a run or resume drives it.

The lock is `flock` on `study.lock` in the folder, so the kernel releases it
the moment its holder dies, however it dies: a lock that can be taken is
never held, and taking it over needs no guess about whether its holder is
still alive. The file's content (host, pid, start time, and what the driver
started: its local Ray cluster) only names the holder in the refusal and
tells the next driver what a dead one left behind (ptlab.study.cluster).
A copied study folder carries a copy of the file, not the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptlab.study.layout import LOCK_FILE


class StudyLocked(RuntimeError):
    """Another driver holds the study folder."""


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (its lock file names no holder yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started_at", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {started}, `{holder.get('command', 'ptlab')}`)"


def read_holder(study_dir: Path) -> dict[str, Any]:
    """What the lock file says about its last holder ({} if nothing readable)."""
    try:
        return json.loads((Path(study_dir) / LOCK_FILE).read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class StudyLock:
    """The held lock of one study folder; `previous` is what the last holder left in the file."""

    def __init__(self, study_dir: Path, fd: int, previous: dict[str, Any], command: str):
        self.study_dir, self.fd, self.previous = Path(study_dir), fd, previous
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(), "command": command}
        self._write()

    def note(self, **facts: Any) -> None:
        """Add facts about this run (e.g. the Ray cluster it started) for whoever takes the lock next."""
        self.holder.update(facts)
        self._write()

    def _write(self) -> None:
        # Written in place through the locked descriptor: replacing the file would give the
        # next driver a fresh inode to lock while this one still holds the old.
        data = json.dumps(self.holder).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def previous_holder_died(self) -> bool:
        """True if the file names an earlier driver on this host that is gone (it never released the lock)."""
        prev = self.previous
        if not prev.get("pid") or prev.get("host") != socket.gethostname() or prev.get("released"):
            return False
        try:
            os.kill(int(prev["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        # Alive, yet the lock was free: the pid was reused, or the file was copied from a live study.
        return False

    def release(self) -> None:
        self.holder["released"] = True
        self._write()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@contextmanager
def study_lock(study_dir: Path, command: str = "ptlab study") -> Iterator[StudyLock]:
    """Hold the study folder's lock, or raise StudyLocked naming the driver that holds it."""
    study_dir = Path(study_dir)
    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(study_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StudyLocked(f"{study_dir} is being run by {_describe(read_holder(study_dir))}; wait for it to end "
                          f"(`ptlab study status {study_dir}`) or stop that process first") from None
    lock = StudyLock(study_dir, fd, read_holder(study_dir), command)
    try:
        yield lock
    finally:
        # a run refused before it wrote anything leaves no folder behind (unlinked while still held)
        empty = created and [p.name for p in study_dir.iterdir()] == [LOCK_FILE]
        if empty:
            (study_dir / LOCK_FILE).unlink()
        lock.release()
        if empty:
            with contextlib.suppress(OSError):
                study_dir.rmdir()
