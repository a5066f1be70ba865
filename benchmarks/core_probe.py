"""How much of the machine's parallel speed a computation on every core gets right now.

The 2-vCPU development VM's host sometimes runs both vCPUs on the two hyperthreads of one
physical core. Work on one thread runs as fast as ever, but work on both runs at about 1.45x
one thread's rate instead of about 1.95x (`parallel_speedup`, measured in stretches of seconds
to minutes), and the guest sees neither steal time nor another process, so `CpuWatch` calls
such a round quiet. mmjax's BiLSTM train step, which keeps both cores busy, then takes 41-44 ms
instead of 27-30 and eager PyTorch's 44-47 instead of 36-38 (benchmarks/NOTES.md, eleventh
session of issue 16): a ratio from such a round describes a smaller machine. The peer suite
therefore probes the speed-up between its rounds.
"""

import os
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

# A float32 matmul that OpenBLAS splits over every thread, timed over enough calls to take
# ~30 ms on one thread of the development VM (1.1 ms a call) and so span a scheduler tick.
_SIDE = 384
_CALLS = 30
# A probe counts as full speed from this share of the run's best reading up.
FULL_SPEED_SHARE = 0.9


def _calls_per_second(a: np.ndarray, b: np.ndarray, threads: int) -> float:
    """Matmuls per second with `threads` Python threads each running `_CALLS` of them (numpy
    releases the GIL inside a matmul)."""

    def work() -> None:
        for _ in range(_CALLS):
            a @ b

    pool = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return threads * _CALLS / (time.perf_counter() - started)


def parallel_speedup() -> float:
    """How many times more [384, 384] float32 matmuls a second the machine runs on one thread
    per core than on one thread: about the core count when each thread has a core of its own.

    BLAS runs single-threaded throughout, so no BLAS worker threads wake up: theirs would spin
    on after the probe (~100 ms of CPU on the development VM) into the next round."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((_SIDE, _SIDE), dtype=np.float32) for _ in range(2))
    with threadpool_limits(limits=1, user_api="blas"):
        a @ b
        one = _calls_per_second(a, b, 1)
        every = _calls_per_second(a, b, os.cpu_count() or 1)
    return every / one


def at_full_speed(speedups: list[float], best: float) -> list[bool]:
    """Which probe readings reach `FULL_SPEED_SHARE` of `best`, the run's highest reading."""
    return [s >= FULL_SPEED_SHARE * best for s in speedups]
