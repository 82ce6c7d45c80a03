"""The CPU allocator's settings: freed tensors' memory stays in the process, unless the user set glibc's own."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from dfad_lightning.allocator import keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"

# A step-like loop: a 64 MiB block allocated, written and freed ten times; the minor page faults it took.
LOOP = """
import resource, sys, torch
from dfad_lightning.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_the_settings_are_applied_unless_the_user_set_glibcs_own(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not keep_freed_memory()


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", LOOP, mode], env=env, capture_output=True, text=True,
                                 check=True).stdout)
        for mode in ("keep", "default")
    }  # fmt: skip
    pages = 16 * 2**20 * 4 // 4096  # one block's pages
    assert faults["default"] >= 8 * pages  # every block mapped afresh: its pages faulted in each time
    assert faults["keep"] <= 3 * pages  # the heap's first blocks (how many depends on the libc), then reused
