"""The device prefetch stage: read-ahead bound, positions, errors, shutdown."""

import json
import threading
import time
from collections.abc import Callable

import grain
import jax
import numpy as np
import pytest

from mmjax.parallel import data_mesh, put_batch
from mmjax.train.prefetch import Prefetcher, prefetch_batches


def _iterator(n: int = 10):
    records = [{"x": np.full((2, 3), i, np.float32)} for i in range(n)]
    return iter(grain.MapDataset.source(records).batch(2).to_iter_dataset())


def test_batches_are_placed_in_order_with_the_position_after_each():
    mesh = data_mesh(jax.devices()[:1])
    data_iter = _iterator()
    with prefetch_batches([data_iter], lambda host: put_batch(host[0], mesh)) as batches:
        first, second = next(batches), next(batches)
    assert isinstance(first.placed["x"], jax.Array)
    np.testing.assert_array_equal(np.asarray(first.placed["x"])[:, 0, 0], [0, 1])
    np.testing.assert_array_equal(np.asarray(second.placed["x"])[:, 0, 0], [2, 3])
    # A fresh iterator set to the first batch's position yields the second batch next, although
    # the prefetcher had read further ahead.
    resumed = _iterator()
    resumed.set_state(json.loads(first.positions[0].get_state()))
    np.testing.assert_array_equal(next(resumed)["x"][:, 0, 0], [2, 3])


def _counting_producer() -> tuple[list[int], Callable[[], int]]:
    produced: list[int] = []

    def produce() -> int:
        produced.append(len(produced))
        return produced[-1]

    return produced, produce


def _settled_count(produced: list[int], expected: int, limit_s: float = 5.0) -> int:
    """len(produced) once it reached `expected` (or `limit_s` passed) and then stayed 0.2 s."""
    deadline = time.monotonic() + limit_s
    while len(produced) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    return len(produced)


def test_reads_at_most_depth_ahead_and_close_stops_the_thread():
    produced, produce = _counting_producer()
    prefetcher = Prefetcher(produce, depth=2)
    assert _settled_count(produced, 2) == 2
    assert next(prefetcher) == 0
    assert _settled_count(produced, 3) == 3  # next lets the thread replace it at once
    prefetcher.close()
    assert not any(t.name == "mmjax-prefetch" and t.is_alive() for t in threading.enumerate())


def test_take_holds_the_thread_back_until_refill():
    produced, produce = _counting_producer()
    with Prefetcher(produce, depth=2) as prefetcher:
        assert _settled_count(produced, 2) == 2
        assert prefetcher.take() == 0
        # not replaced while the step is dispatched
        assert _settled_count(produced, 3, limit_s=0.3) == 2
        prefetcher.refill()
        assert _settled_count(produced, 3) == 3


def test_take_without_refill_never_stalls():
    _, produce = _counting_producer()
    with Prefetcher(produce, depth=2) as prefetcher:
        assert [prefetcher.take() for _ in range(7)] == list(range(7))


def test_a_producer_error_is_raised_by_next_in_order():
    items = iter([1, 2])

    def produce():
        value = next(items, None)
        if value is None:
            raise ValueError("record 3 is corrupt")
        return value

    with Prefetcher(produce) as prefetcher:
        assert [next(prefetcher), next(prefetcher)] == [1, 2]
        for _ in range(2):  # and again: the error stays
            with pytest.raises(ValueError, match="record 3 is corrupt"):
                next(prefetcher)


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher(lambda: 0, depth=0)
