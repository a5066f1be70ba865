"""How much of the machine's parallel speed a computation on every core gets right now.

The 2-vCPU development VM at times gets only one physical core's worth of parallel speed from
its two vCPUs, as two hyperthreads of one core would give: work on one thread runs as fast as
ever, but work on both runs at 1.35-1.55x one thread's rate instead of 1.85-2.0x
(`parallel_speedup`), in stretches of seconds to minutes. The guest sees neither steal time nor
another process meanwhile, so `CpuWatch` calls such a round quiet. mmjax's BiLSTM train step
took a median 41.2 ms in the windows where the probe read under 1.75 before and after, against
31.4 ms where it read more (benchmarks/NOTES.md, eleventh session of issue 16): a ratio from
such a round describes a smaller machine. The peer suite therefore probes the speed-up between
its rounds.
"""

import os
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

# The probe's work: float32 [384, 384] matmuls on one BLAS thread each, 30 per Python thread
# (1.1 ms a call on the development VM, so each timing spans several scheduler ticks).
_SIDE = 384
_CALLS = 30
# A probe reading counts as full parallel speed from this speed-up per core up: 1.7 on the
# development VM's 2 cores, between its two modes (readings of 1.35-1.55 and of 1.74-2.2).
FULL_SPEED_PER_CORE = 0.85


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


def full_speed_threshold() -> float:
    """The lowest `parallel_speedup` reading that counts as every core working in parallel."""
    return FULL_SPEED_PER_CORE * (os.cpu_count() or 1)
