"""Peak memory of this process: what the report's ``memory`` section says.

Why: onnxprune promises that pruning a model with external data needs about the memory of
its weights (weights are read lazily, stages share tensors, the two models are validated
one after the other). ``ru_maxrss`` is the figure ``/usr/bin/time -v`` prints as "Maximum
resident set size"; recording it at the end of every stage says which stage set the peak.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

__all__ = ["current_rss_bytes", "memory_section", "peak_rss_bytes", "release_freed_memory"]


def peak_rss_bytes() -> int:
    """The most resident memory this process has held so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux counts KiB


def current_rss_bytes() -> int:
    """Resident memory now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_section(peaks: dict[str, int], weight_bytes: int) -> dict[str, object]:
    """The report's ``memory``: peak resident bytes, per stage (the peak reached by the end
    of that stage), and as a multiple of the model's bytes on disk."""
    peak = max([peak_rss_bytes(), *peaks.values()])
    return {
        "peak_rss_bytes": peak,
        "weight_bytes": weight_bytes,
        "peak_over_weights": round(peak / weight_bytes, 3) if weight_bytes else None,
        "peak_rss_by_stage": dict(peaks),
    }


def release_freed_memory() -> int:
    """Hand memory that Python freed but the C allocator kept back to the system (glibc's
    ``malloc_trim``); the bytes of resident memory that went (0 where there is no glibc).

    Why: glibc raises its threshold for memory-mapping big blocks after the first ones are
    freed, so later blocks of up to 32 MB come from its heap, and a heap keeps what is freed.
    On the 0.5B decoder pruned with ``--heads``, 1.2 GB of the in-memory pruned model stayed
    resident through all of recovery after its weights had been spilled to a file: with
    this call at the start of recovery the ``--calib`` run's peak went from 1.63x to 1.16x
    of its weights."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return 0
    before = current_rss_bytes()
    libc.malloc_trim(0)
    return max(0, before - current_rss_bytes())
