"""How much of the machine other processes took while a measurement ran (Linux `/proc`).

On a shared 2-core machine a co-tenant hits the two frameworks unequally: PyTorch's OpenMP
threads meet at a barrier after every parallel region, so one busy core stalls every small
matmul of an LSTM step, while XLA's thread pool degrades more gently. Measured on the 2-core
development machine with a test run taking one core: the BiLSTM train step (batch 64) went
from 30 to 899 ms in PyTorch and from 56 to 80 ms in mmjax. A ratio from such a round says
nothing about either framework, so the peer suite times each round under a `CpuWatch` and
keeps the quiet rounds.
"""

import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_ticks() -> int | None:
    """Busy CPU ticks of the whole machine since boot (user, nice, system, irq, softirq and
    the hypervisor's steal), or None without /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return user + nice + system + irq + softirq + steal


def _own_ticks(pids: tuple[int, ...]) -> int:
    """CPU ticks this process (all its threads) and the processes `pids` have used."""
    times = os.times()
    return round((times.user + times.system) * _TICKS) + sum(map(_process_ticks, pids))


def _process_ticks(pid: int) -> int:
    """User and system ticks of process `pid` (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)"
    return int(fields[11]) + int(fields[12])  # utime, stime


class CpuWatch:
    """`with CpuWatch(pids) as w: ...` -> `w.others`: the share of the machine's CPU time (0-1)
    used during the block by processes other than this one and `pids` (the suite's own
    workers); None where /proc is unavailable."""

    def __init__(self, pids: tuple[int, ...] = ()) -> None:
        self.others: float | None = None
        self._pids = pids

    def __enter__(self) -> "CpuWatch":
        self._busy, self._own = _machine_busy_ticks(), _own_ticks(self._pids)
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy = _machine_busy_ticks()
        if busy is None or self._busy is None:
            return
        capacity = (time.perf_counter() - self._started) * _TICKS * (os.cpu_count() or 1)
        others = (busy - self._busy) - (_own_ticks(self._pids) - self._own)
        self.others = min(1.0, max(0.0, others / max(capacity, 1e-9)))
