"""CPU allocator tuning: keep freed large blocks in the process instead of handing them back to the OS every time.

glibc serves every request above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on `free`. A
CAPI step allocates and frees several (tokens, num_prototypes) float32 tensors (64 MiB at 1024 tokens x 16384
prototypes), so on CPU each of them is page-faulted in anew every step. `tune_glibc_malloc()` does at run time what

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python ...

does from the environment: no mmap-served blocks (everything comes from the heap, which is reused) and no trimming
of the heap's top. Steps run faster; the price is that the process keeps its peak heap (a few hundred MB for the
CAPI benchmark) instead of returning it between steps. It changes how *this process* allocates from now on (blocks
already mmapped stay so), so call it early. It acts on glibc's main arena, where a training loop's main thread
allocates. Other allocators (jemalloc/tcmalloc via LD_PRELOAD, macOS, musl) are left alone.
"""

import ctypes
import ctypes.util
import platform

from transformers.utils import logging

logger = logging.get_logger(__name__)

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt takes an int, so INT_MAX (2 GiB of free heap top before glibc trims it) stands for the environment's
# MALLOC_TRIM_THRESHOLD_=100000000000: for the sizes a training step frees, both mean "never trim".
_NEVER_TRIM = 2**31 - 1

_applied = False


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def tune_glibc_malloc() -> bool:
    """Make glibc malloc keep large freed blocks for reuse: `mallopt(M_MMAP_MAX, 0)` and `mallopt(M_TRIM_THRESHOLD,
    INT_MAX)`, the run-time form of `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`.

    Returns True when the settings are in effect (now or from an earlier call: calling it again is a no-op), False
    when this is not glibc (nothing is changed; the reason is logged) or glibc refused them.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        logger.warning("tune_glibc_malloc: not glibc (%s %s); allocator left as it is", *platform.libc_ver())
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    if not ok:
        logger.warning("tune_glibc_malloc: glibc mallopt refused M_MMAP_MAX / M_TRIM_THRESHOLD; allocator unchanged")
        return False
    _applied = True
    logger.info("tune_glibc_malloc: glibc keeps freed blocks (M_MMAP_MAX=0, M_TRIM_THRESHOLD=%d)", _NEVER_TRIM)
    return True
