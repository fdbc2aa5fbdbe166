"""Let a CPU training process reuse the memory it frees instead of mapping fresh pages every step.

A training step allocates and frees the same large tensors every time: the language model's logits
(tokens x vocabulary: 270-540 MB at bs 64 x bptt 70 with a 30k vocabulary), the LSTM's gates and
outputs, their gradients. glibc serves every allocation above its mmap threshold (128 KB, rising to at
most 32 MB as it adapts) with a fresh ``mmap`` and hands it back to the kernel on ``free``, and trims
the heap's free top back as well, so each step touches hundreds of megabytes of new pages and pays a
page fault (a zeroed page) for every 4 KB of them. docs/BENCHMARKS.md ("Reusing freed memory",
``bench/profile_step.py``) measures ten times fewer page faults and faster steps with the settings below,
for a higher peak resident size (2.0 GB instead of 1.5 GB for the small preset).

:func:`keep_freed_memory` raises both thresholds to 2 GB (the most ``mallopt`` takes) once per process,
so large tensors come from the heap and freed ones stay there for the next step. The process keeps its
peak memory instead of returning it between steps, so it is a decision for the program that trains, not
for a library inside someone else's: this project's command-line tools and its search trials make it
(:func:`for_training_on`), and a Python program that trains on a CPU may call it too; a ``Trainer`` never
does on its own. ``ULMFIT_KEEP_FREED_MEMORY=0`` turns it off. Where the C library is not glibc (macOS,
musl) it does nothing. CUDA memory has its own caching allocator and is not affected.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform

logger = logging.getLogger(__name__)

#: ``mallopt`` parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: The largest value ``mallopt`` takes (a C int): allocations above 2 GB are still mapped fresh.
THRESHOLD_BYTES = 2**31 - 1
ENV_SWITCH = "ULMFIT_KEEP_FREED_MEMORY"


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once). True when they were set."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1)
    except (OSError, AttributeError) as e:  # no loadable C library or no mallopt in it
        logger.debug("glibc malloc thresholds not set: %s", e)
        return False
    return ok


def for_training_on(device: str) -> bool:
    """:func:`keep_freed_memory` when ``device`` (a recipe's ``device``: auto, cpu, cuda...) trains on the CPU.
    ``auto`` counts as the CPU where CUDA is not available. True when the thresholds are set."""
    if device.startswith("cuda"):
        return False
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return False
    return keep_freed_memory()
