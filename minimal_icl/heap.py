"""Keep freed memory in the process: glibc's heap settings for a training loop.

A training step allocates and frees the same few dozen arrays every step. glibc's
malloc serves an allocation above its mmap threshold (128 KiB at first, adapting
upwards) with a fresh ``mmap`` and returns it to the kernel on ``free``, and it trims
the top of the heap back to the kernel whenever more than M_TRIM_THRESHOLD is free there
(128 KiB at first; freeing a mapped array raises the mmap threshold to that array's size,
up to 32 MiB, and the trim threshold to twice that). Either way the next step's arrays
land on pages the kernel has to fault in and zero again. Measured on ``paper_setting``'s
training step, 300 steps after the first twenty, one core:

    batch      with this setting              glibc's defaults
    64         0.0 faults a step, 0.30 ms     0.0 faults a step, 0.25 ms
    256        0.0 faults a step, 0.64 ms     644 faults a step, 3.3 ms
    1024       0.0 faults a step, 2.9 ms      2736 faults a step, 13.8 ms
    4096       0.0 faults a step, 20.5 ms     3377 faults a step, 27.3 ms

(the times of one process each, on a machine whose speed drifts by 20 % and more). At
batch 64 glibc's own adaptation is enough: 14 faults on the first step, none after. From
batch 256 on, its heap gives memory back to the kernel every step, and the step runs 1.3
to 5 times slower without this setting.

``keep_freed_memory`` sets both thresholds once, so freed arrays stay in the heap and
are reused from the first step: M_MMAP_THRESHOLD = 32 MiB (glibc's largest; bigger
arrays are still mapped and unmapped) and M_TRIM_THRESHOLD = 1 GiB. The cost is that
memory freed by the process is not handed back to the system until it exits (its
resident size stays at its peak). It is a no-op where the C library is not glibc.
``train.train_step`` calls it on its first call, the command line at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: HEAP_MAX_SIZE / 2 on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024

_done: list[bool] = []  # [result] once it has run


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring), once per process.

    Returns True where both were set (glibc), False elsewhere (another C library, or
    no ``mallopt``): then nothing is changed.
    """
    if _done:
        return _done[0]
    ok = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is not None:
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    _done.append(ok)
    return ok
