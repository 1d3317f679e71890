"""Freed tensor memory kept for reuse (glibc's malloc, i.e. Linux): a training batch's tensors
(a 512-digit batch is 1.6 MB per image-sized tensor) are above glibc's default threshold for
``mmap``, so each one is mapped fresh and page-faulted in again at every batch, then unmapped.
Raising the threshold and the trim threshold keeps that memory in the heap for the next batch:
the same numbers, fewer system calls and page faults. Measured in one run, alternating
processes (``benchmarks/allocator_ab.py``, ``benchmarks/results/allocator-ab-*.md``).

Process-wide, so robustmnist's entry points call `keep_freed_memory` (the CLI, its worker
processes, the benchmarks), not its library functions behind a caller's back; a program that
uses the library may call it too. ``ROBUSTMNIST_MALLOC=system`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: Allocations up to this size come from the heap, reused when freed (glibc: 128 KiB up to a
#: dynamic 32 MiB). A training batch's largest tensors (conv activations) are ~75 MB.
MMAP_THRESHOLD_BYTES = 256 << 20
#: Free memory at the heap's top is returned to the system only past this much.
TRIM_THRESHOLD_BYTES = 1 << 30
ENV = "ROBUSTMNIST_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; True when it is in effect. Once per
    process (later calls return the first answer); False off glibc or with
    ``ROBUSTMNIST_MALLOC=system``."""
    global _applied
    if _applied is None:
        _applied = os.environ.get(ENV, "keep") != "system" and _mallopt()
    return _applied


def _mallopt() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
