"""What a trial holds of its worker's memory, measured and given back.

Ray reuses a worker process for the next trial; whatever one trial leaves behind (reference
cycles, CUDA cache, glibc arenas) the next starts with.
"""

from __future__ import annotations

import os


def resident_memory_mb() -> float:
    """This process's resident memory now (Linux), or its peak where /proc is absent."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_in_use() -> dict[str, float]:
    """What a report records of this worker's memory, to show it stays flat over reused trials."""
    import torch

    memory = {"worker_rss_mb": round(resident_memory_mb(), 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
    return memory


def release_memory() -> None:
    """Give back what a trial held, so that the next trial on this reused worker starts from the same place."""
    import gc

    import torch

    gc.collect()  # the trainer, model and optimizer hold reference cycles: free them now, not at some later GC
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    _return_freed_heap_to_the_system()


def _return_freed_heap_to_the_system() -> None:
    """glibc keeps freed memory in its arenas; a long-lived worker's resident size then only grows."""
    import ctypes

    try:  # quick: Tune gives a reused worker's trial thread 2 seconds to end (TUNE_FUNCTION_THREAD_TIMEOUT_S)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
