"""Let glibc reuse freed memory for large CPU tensors instead of mapping fresh pages each step.

A training step on a real catalogue allocates several tensors of tens of MB (the full softmax's
(batch, n_items) logits, their gradients). glibc serves each one above its mmap threshold with fresh
pages from the kernel and returns them on free, so every step pays the page faults and zeroing again:
about 12 % of a Beauty step at d 256 (benchmarks/results/cpu_speed.json). Raising the mmap and trim
thresholds keeps those pages in the heap for the next step. PyTorch's CPU performance guide gets the
same effect by preloading jemalloc or tcmalloc, which a pip install cannot provide.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = 1 << 31  # up to 2 GiB free at the heap's top stays with the process


@functools.cache
def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once; False where libc is not glibc
    (macOS, musl) or refuses, and nothing changes."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
