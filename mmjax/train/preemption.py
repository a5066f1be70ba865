"""Preemption notices (SIGTERM) turned into a step at which every process stops together.

In a multi-process run JAX's preemption service catches SIGTERM on any process and agrees
with the others on a step to stop at (`reached_preemption_sync_point`), so every process
saves the same checkpoint. A single process catches SIGTERM itself and stops after the step
in flight.
"""

import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`with PreemptionWatch() as watch: ... if watch.reached(step): save and stop`."""

    def __init__(self) -> None:
        self._notified = False
        self._previous = None

    def __enter__(self) -> "PreemptionWatch":
        # Python can set a handler only from the main thread; elsewhere SIGTERM keeps its
        # default (the process ends, and a restart resumes from the last checkpoint).
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._notify)
        return self

    def _notify(self, signum: int, frame: FrameType | None) -> None:
        self._notified = True

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step`; call it after every step, on every process."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._notified

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
