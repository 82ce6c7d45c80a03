"""The CPU allocator's settings: freed tensor memory is kept by the process instead of returned to the kernel.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB to 32 MiB, adjusted as
it goes) with a fresh ``mmap`` and returns it to the kernel when freed; a training step allocates
and frees activations of that size at every step, so each step faults all of their pages in
again, and a large part of the CPU's time goes to the kernel. :func:`keep_freed_memory` raises
the mmap and trim thresholds once, before the run allocates, so that freed blocks stay in the
process's heap and are reused. The process keeps its peak memory until it ends.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int): blocks below 2 GiB stay in the heap
# A user's own glibc settings, which are left alone.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for the rest of the process; whether they were set.

    Nothing happens where the C library is not glibc (macOS, Windows, musl), or where the user
    set glibc's allocator through the environment.
    """
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
