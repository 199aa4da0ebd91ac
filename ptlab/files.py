"""Writing a file so that a reader, or a crash at any moment, sees the old file or the whole new one.

The bytes go to a temporary file beside the target, are flushed to disk,
and the temporary file is renamed over the target (atomic on POSIX); on any
error the temporary file is removed. Everything ptlab stores (trial records,
checkpoints, cached features, test logits, the study's own files) is written
this way. Torch-free: `write` is handed the open file (torch.save, np.savez
and plain bytes all take one).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol


def atomic_save(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | Path, data: bytes) -> Path:
    return atomic_save(path, lambda handle: handle.write(data))


class SharedFiles(Protocol):
    """A folder other machines read and write too (a study storage's): files fetched into, and published from, local paths."""

    def fetch(self, name: str, local: Path) -> bool:
        """Copy the shared file `name` to `local` (replacing it at once); False where it has none."""

    def publish(self, local: Path, name: str) -> None:
        """Copy `local` to the shared file `name`."""
