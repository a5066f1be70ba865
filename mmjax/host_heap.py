"""Keep freed host memory in the process instead of handing it to the OS after every step.

XLA:CPU gives each run of a compiled program one block of memory for its temporaries (and one
per output), allocated with malloc and freed at the end of the run. glibc serves blocks over
32 MB, and smaller ones once it has trimmed its heap, with fresh pages from the OS, so every
train step faults its whole working set in again: 19,000 page faults (78 MB) per CNN-LSTM
train step and 11,000 per BiLSTM step at batch 64 on the 2-core development VM, a quarter of
their step time (benchmarks/NOTES.md). mmjax therefore sets, on import, glibc's malloc to:

- one arena (`M_ARENA_MAX` 1), so XLA's worker threads share the main heap, which can hold
  blocks of any size;
- no mmap (`M_MMAP_MAX` 0), so large blocks come from that heap and return to it;
- a 256 MB top pad (`M_TOP_PAD`): up to that much free memory stays at the top of the heap
  when glibc trims it.

Freed memory then stays with the process for its next step; the process's resident size
stays within 256 MB of its peak use (it was within the measurement noise in the benchmarks).
Setting any of glibc's `MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_`, `MALLOC_TOP_PAD_` in the
environment leaves glibc's settings alone, as do C libraries other than glibc (macOS, musl).
"""

import ctypes
import os

TOP_PAD_BYTES = 256 << 20
# glibc's malloc.h: mallopt parameters and the environment variables that set them
_SETTINGS = {
    "MALLOC_ARENA_MAX": (-8, 1),  # M_ARENA_MAX
    "MALLOC_MMAP_MAX_": (-4, 0),  # M_MMAP_MAX
    "MALLOC_TOP_PAD_": (-2, TOP_PAD_BYTES),  # M_TOP_PAD
}


def retain_freed_memory() -> bool:
    """Set glibc's malloc as the module docstring says; True when it was set."""
    if any(name in os.environ for name in _SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    if not hasattr(libc, "mallopt"):
        return False
    return all([libc.mallopt(param, value) == 1 for param, value in _SETTINGS.values()])
