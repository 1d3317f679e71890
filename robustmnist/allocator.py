"""Freed tensor memory kept for reuse (glibc's malloc, i.e. Linux). With glibc's defaults a
training step hands memory back to the system and faults it in again at the next step: a
step frees tens of MB at once (activations, gradients), more than the trim threshold (twice
a dynamic mmap threshold that follows the largest block freed, up to 32 MiB), and blocks above
the mmap threshold (an evaluation batch's activations) are mapped afresh every time. A fixed,
higher mmap threshold and trim threshold keep that memory in the heap for the next step: the
same numbers, fewer page faults (measured in one run, alternating processes:
``benchmarks/allocator_ab.py``, ``benchmarks/results/allocator-ab-*.md``).

Process-wide, so robustmnist's entry points call `keep_freed_memory` (the CLI, its spawned
worker processes, the benchmarks), not its library functions behind a caller's back; a program
that uses the library may call it too. ``ROBUSTMNIST_MALLOC=system`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from robustmnist import RobustMnistError

#: Allocations up to this size come from the heap, reused when freed (glibc: 128 KiB up to a
#: dynamic 32 MiB). Older glibc refuses more than 32 MiB (HEAP_MAX_SIZE / 2): then that.
MMAP_THRESHOLD_BYTES = (256 << 20, 32 << 20)
#: Free memory at the heap's top is returned to the system only past this much.
TRIM_THRESHOLD_BYTES = 1 << 30
ENV = "ROBUSTMNIST_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; True when it is in effect. Once per
    process (later calls return the first answer); False off glibc or with
    ``ROBUSTMNIST_MALLOC=system``.

    Raises:
        RobustMnistError: ``ROBUSTMNIST_MALLOC`` is neither ``keep`` nor ``system``.
    """
    global _applied
    if _applied is None:
        setting = os.environ.get(ENV) or "keep"  # empty = unset
        if setting not in ("keep", "system"):
            raise RobustMnistError(f"{ENV}={setting!r}: use keep (the default) or system "
                                   "(glibc's own malloc settings)")
        _applied = setting == "keep" and _mallopt()
    return _applied


def _mallopt() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Each option on its own: a refused threshold must not leave the trim threshold unset.
    mmap = any(mallopt(_M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLD_BYTES)
    trim = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return mmap and trim
