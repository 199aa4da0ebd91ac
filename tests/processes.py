"""Process and port helpers shared by the tests that start Ray nodes and study drivers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> list[int]:
    """The running processes of a session (zombies do not run)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):  # the process ended while being read
            continue
        if int(session) == sid and state != "Z":
            alive.append(int(stat.parent.name))
    return alive


def kill_session(sid: int, timeout: float = 60) -> None:
    """SIGKILL every process of a session until none is left running.

    For a Ray node this is the machine going away at once: `ray start --block`
    given SIGTERM would first drain the node for 30 s.
    """
    deadline = time.monotonic() + timeout
    while alive := session_processes(sid):
        if time.monotonic() > deadline:
            pytest.fail(f"processes {alive} of session {sid} survive SIGKILL")
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
