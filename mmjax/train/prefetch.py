"""Device prefetch: batch n + 1 is read and placed on the devices while step n runs.

A background thread takes the next host batch from each data iterator, places it with the
caller's `place` (`put_batch`), and keeps up to `depth` such batches ready. The training loop
then waits only when the input side is slower than the step.

When the thread starts on a batch matters as much: its reading and placing are Python, and
while it runs, the loop's own Python (taking the batch, dispatching the step) waits for the
GIL, in slices of CPython's 5 ms switch interval. So the training loop takes a batch with
`take` and calls `refill` once its step is dispatched: the thread then works while the loop
blocks on the device. On 2 cores this cut the loop's wait for data from 2.5-3.6 % of its wall
time to 0.8-1.3 % (benchmarks/NOTES.md, sixth session).

Reading ahead moves the data iterators past the batches the steps have consumed, so a
checkpoint must not save the iterators themselves: each `Prefetched` carries the iterators'
positions captured right after its own batches were read, and the loop saves those. A resumed
run then starts at the first batch no step consumed, as without prefetch.
"""

import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax

HostBatch = dict[str, Any]
Placed = dict[str, jax.Array]

_POLL_S = 0.1  # how often a blocked producer checks whether it was closed


class IteratorPosition:
    """A grain iterator's state at one point, saved by grain's checkpoint handler like an
    iterator (the handler calls `get_state()`; bytes are its format for non-dataset iterators)
    and restored into the real iterator by `Checkpointer`."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=4).encode()


@dataclass(frozen=True)
class Prefetched:
    """One step's input: the host batches (one per iterator), the placed arrays, and the
    iterators' positions just after these batches were read."""

    host: list[HostBatch]
    placed: Placed
    positions: list[IteratorPosition]


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Iterates over `produce()`'s results, computed up to `depth` ahead on a daemon thread.

    `next` takes a result and lets the thread start on another at once. `take` takes one
    without: the thread starts on its replacement at the next `refill` (or at the next `take`
    that finds nothing ready, so a loop that never calls `refill` still never stalls).

    An exception in `produce` (a corrupt record, a bad batch) is raised by the call that would
    have returned its result, with its own traceback. `close` stops the thread; a `produce`
    call in progress finishes first.
    """

    def __init__(self, produce: Callable[[], Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._produce = produce
        # results queued + being produced + taken but not refilled + permits == depth
        self._permits = threading.Semaphore(depth)
        self._owed = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._failed: _Failed | None = None
        self._thread = threading.Thread(target=self._run, name="mmjax-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._permits.acquire(timeout=_POLL_S):
                continue
            try:
                item = self._produce()
            except BaseException as err:  # StopIteration included: the consumer re-raises it
                self._queue.put(_Failed(err))
                return
            self._queue.put(item)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = self.take()
        self.refill()
        return item

    def take(self) -> Any:
        """The next result; the thread starts on its replacement at `refill`."""
        if self._failed is None:
            if self._queue.empty():
                self.refill()
            item = self._queue.get()
            if not isinstance(item, _Failed):
                self._owed += 1
                return item
            self._failed = item
        raise self._failed.error

    def refill(self) -> None:
        """Let the thread replace every result taken since the last refill."""
        if self._owed:
            self._permits.release(self._owed)
            self._owed = 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * _POLL_S)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch_batches(
    iterators: Sequence[Any], place: Callable[[list[HostBatch]], Placed], depth: int = 2
) -> Prefetcher:
    """A Prefetcher of `Prefetched` steps: one batch from each grain iterator, placed by
    `place`, with the iterators' positions after it."""

    def produce() -> Prefetched:
        host = [next(it) for it in iterators]
        positions = [IteratorPosition(it.get_state()) for it in iterators]
        return Prefetched(host, place(host), positions)

    return Prefetcher(produce, depth)
