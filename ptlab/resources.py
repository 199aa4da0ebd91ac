"""What a trial runs on: how many torch threads, and how much memory its process holds.

A trial runs with the threads it was given, and no more than the cores others
leave free. On shared cores, intra-op threads that outnumber the free cores wait on each
other at every parallel region: measured on 2 cores under load 5-10, a CoOp
epoch took 144-255 s at 2 threads and 15-22 s at 1, while on idle cores 2
threads were only 1.5x faster than 1. So a thread too many costs far more
than a thread too few, and the count errs low.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import statistics
import time

# Samples of the run queue: one reading catches whatever happened to be runnable in that instant.
RUN_QUEUE_SAMPLES = 5
RUN_QUEUE_INTERVAL_S = 0.01


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cores_elsewhere() -> float:
    """Cores that other tasks keep busy right now: the median of a few readings of the run queue, less this process.

    The run queue (tasks runnable now, /proc/loadavg) is used rather than the
    1-minute load average, which still counts this process's own previous
    trial when a worker is reused. Where it cannot be read, the load average
    stands in.
    """
    readings = []
    for i in range(RUN_QUEUE_SAMPLES):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        readings.append(running - 1)  # this thread is running while it reads
        if i + 1 < RUN_QUEUE_SAMPLES:
            time.sleep(RUN_QUEUE_INTERVAL_S)
    return max(statistics.median(readings), 0.0)


def trial_threads(cpus: float | None = None) -> int:
    """Threads for a trial given `cpus` CPUs (None: the whole machine), capped by the cores free now; at least 1."""
    cores = usable_cores()
    given = cores if cpus is None else max(1, int(cpus))
    free = int(cores - busy_cores_elsewhere())
    return max(1, min(given, cores, free))


def size_torch_threads(cpus: float | None = None) -> int:
    """Set torch's intra-op threads for a trial (see `trial_threads`) and return the count."""
    import torch

    threads = trial_threads(cpus)
    torch.set_num_threads(threads)
    return threads


def resident_mb() -> float | None:
    """This process's resident memory now (MB), not its peak; None where /proc is not there to read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def release_memory() -> None:
    """Return the heap a finished trial freed to the system, so that a reused worker does not grow trial after trial.

    Ray runs each trial of a reused worker in a new thread, and glibc gives
    threads their own malloc arenas, each keeping the freed heap of the trial
    that used it: measured, the default study's inline worker grew from 1282 MB
    after 4 trials to 1808 MB after 32, about 60 MB a trial until every arena
    held one. malloc_trim hands back the free part of every arena.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
            libc.malloc_trim(0)
    except OSError:
        pass
