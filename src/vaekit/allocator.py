"""glibc malloc thresholds fixed once per process, so freed memory is reused instead of handed back."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (once per process; False where not glibc).

    Each decoder pass (and each training step) frees and allocates the same few MB again. glibc's
    default thresholds move with the allocation history (its mmap threshold adapts, its heap is trimmed
    above 2x it), so the same evaluation sometimes handed those pages back to the kernel and faulted
    them in again at every pass: 15-34 % system time on the Fashion conv VAE in some runs, 2-4 % in others (BENCHMARKS.md).
    Fixed thresholds (allocations below 64 MB from the heap, up to 256 MB of free heap kept) made it
    0 % in every run; IWAE-32 training on digits went from 19 % system time to under 1 %. Training and
    evaluation call it once. It is process-wide: the process may hold up to 256 MB it no longer uses.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not Linux with glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))
