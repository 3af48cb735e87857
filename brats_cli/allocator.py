"""Keep freed memory in the process instead of handing it back to the kernel (glibc's malloc).

glibc serves every allocation above its mmap threshold (32 MiB at most) with a fresh mapping and
unmaps it on free. A width-64 forward at 128^3 allocates and frees 256 MiB activations dozens of
times, and the kernel zeroes each fresh mapping page by page on first touch, so the operations that
write into new outputs (GroupNorm, additions, concatenations) pay for page faults on every forward
(measured in bench/RESULTS.md, 'CPU, fifth session'). Serving large blocks from the heap and never
trimming it lets every forward reuse the pages of the one before. The price is a higher resident
peak, kept until the process exits; it reaches its plateau within the first forwards and stays
there (both measured in bench/RESULTS.md, 'CPU, fifth session'). `MALLOC_MMAP_MAX_=65536` in the
environment keeps glibc's default behaviour.

jemalloc or tcmalloc do the same but have to be preloaded before the interpreter starts, and
neither comes from PyPI; mallopt(3) is part of glibc and can be called at run time.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

# A user's own allocator settings win over ours.
OWN_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def user_tuned_allocator(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment already chooses how malloc behaves (glibc variables, tunables, or a
    preloaded allocator)."""
    if any(name in environ for name in OWN_SETTINGS):
        return True
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in environ.get("LD_PRELOAD", "") for name in OTHER_ALLOCATORS)


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it, for the rest of the process.
    False (nothing changed) off Linux, on a C library without mallopt (musl), or where the
    environment already tunes the allocator."""
    if not sys.platform.startswith("linux") or user_tuned_allocator():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. M_TRIM_THRESHOLD -1 turns trimming off (mallopt(3)); large blocks
    # then stay in the heap, and brk's failure still falls back to mmap inside glibc.
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
