"""Keep freed memory in the process while training on CPU (glibc only).

PyTorch's CPU tensors come from the C library's malloc. glibc serves every block over its
mmap threshold (128 kB to 32 MB, adaptive) with a fresh mmap and gives it back to the kernel
on free, so each training step maps, faults in page by page (zero-filled by the kernel) and
unmaps the same few hundred megabytes of activations and gradients again: a large share of
a CPU fine-tune's time goes to page faults in the kernel (measured in
docs/experiments/2026-11-29-training-throughput.md).

`keep_freed_memory()` tells glibc (mallopt) to serve large blocks from its heap and never to
trim the heap, so freed blocks are reused by the next step. The setting is process-wide
and stays: the process keeps its peak memory until it exits (a few hundred MB more for a
224 px fine-tune), which is what a training process holds anyway.
`sightwise train` (and `fit`, which the benchmark's CNNs use too) turn it on; set
SIGHTWISE_KEEP_FREED_MEMORY=0 to opt out. Intel's PyTorch CPU tuning guide makes the same
point with jemalloc/tcmalloc; mallopt needs no extra library. Elsewhere (macOS, musl,
Windows) it does nothing and says so; with another allocator preloaded, glibc's settings do
not matter.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# glibc's <malloc.h>; a trim threshold of -1 disables trimming (man 3 mallopt)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = -1


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True when it accepted (once per process)."""
    if os.environ.get("SIGHTWISE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
