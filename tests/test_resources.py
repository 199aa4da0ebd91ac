"""Thread sizing, memory reading, and what the light entry points leave unimported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptlab import resources
from ptlab.methods.base import git_commit, provenance

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("cpus", "busy", "expected"),
    [
        (None, 0.0, 4),  # the whole idle machine
        (2, 0.0, 2),  # what the trial was given
        (2.5, 0.0, 2),  # fractional CPUs round down
        (None, 2.0, 2),  # the cores others leave free
        (8, 0.0, 4),  # never more than the cores
        (None, 3.5, 1),  # a part-free core is not free
        (None, 9.0, 1),  # at least one
        (0.5, 0.0, 1),
    ],
)
def test_trial_threads_takes_the_least_of_given_cores_and_free(monkeypatch, cpus, busy, expected):
    monkeypatch.setattr(resources, "usable_cores", lambda: 4)
    monkeypatch.setattr(resources, "busy_cores_elsewhere", lambda: busy)
    assert resources.trial_threads(cpus) == expected


def test_size_torch_threads_sets_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(resources, "busy_cores_elsewhere", lambda: 0.0)
    try:
        assert resources.size_torch_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_busy_cores_and_resident_memory_are_read():
    assert resources.busy_cores_elsewhere() >= 0
    if Path("/proc/self/status").is_file():
        assert resources.resident_mb() > 10


def test_git_commit_matches_git():
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    assert git_commit() == out.stdout.strip()


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        # `ptlab study status`: results through polars, the stored spec read without torch or Ray
        ("from ptlab.study.status import study_status; from ptlab.study.spec import load_study; "
         "load_study('{stored}')", ("torch", "ray", "open_clip")),
        # `ptlab study validate` of a world study: every guard, still without torch or open_clip
        ("from ptlab.study.spec import load_study; load_study('studies/noise_grid.yaml')", ("torch", "ray", "open_clip")),
        # every `ptlab` command: the CLI mounts all of them
        ("import ptlab.cli", ("torch", "ray", "open_clip", "polars")),
        # a trial's provenance names the versions without importing them
        ("from ptlab.methods.base import provenance; p = provenance(); assert p['ray'] and p['torch'], p",
         ("torch", "ray", "open_clip")),
    ],
)
def test_light_entry_points_leave_heavy_packages_unimported(code, absent, tmp_path):
    from ptlab.study.spec import load_study

    # a study folder's study.yaml, as ptlab writes it when the study starts
    stored = tmp_path / "study.yaml"
    stored.write_text(load_study(ROOT / "studies" / "noise_grid.yaml").to_yaml())
    check = f"{code.format(stored=stored)}; import sys; print(','.join(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


def test_provenance_reports_loaded_versions():
    import torch

    assert provenance()["torch"] == torch.__version__


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
def test_release_memory_returns_freed_heap_that_a_live_block_pins():
    blocks = [bytes(4000) for _ in range(25000)]  # ~100 MB from malloc (too big for Python's own allocator)
    pinned = blocks[::50]  # one live block in every 50 keeps the heap from shrinking by itself
    grown = resources.resident_mb()
    del blocks
    assert resources.resident_mb() > grown - 20  # freed, yet still held by the allocator
    resources.release_memory()
    assert resources.resident_mb() < grown - 50
    assert len(pinned) == 500
