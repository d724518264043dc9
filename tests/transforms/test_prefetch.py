"""The decode pool: results in order and in batches, row errors in place, bounded lookahead."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import pytest

from clipbeam.transforms.errors import RowError
from clipbeam.transforms.prefetch import decode_pool, decode_threads, prefetch


class Recorder(Executor):
    """Runs work at once, in the caller's thread, and records what was submitted when."""

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.submitted.append(args[-1])
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_results_come_in_order_in_batches():
    batches = list(prefetch(list(range(10)), lambda x: x * x, 4))
    assert batches == [[0, 1, 4, 9], [16, 25, 36, 49], [64, 81]]
    assert list(prefetch([], lambda x: x, 4)) == []


def test_row_errors_take_their_item_s_place_and_other_errors_are_raised():
    def work(x: int) -> int:
        if x == 2:
            raise RowError("corrupt_image", "bad")
        if x == 5:
            raise KeyError("a bug")
        return x

    batches = prefetch(list(range(6)), work, 3)
    first = next(batches)
    assert first[:2] == [0, 1] and isinstance(first[2], RowError)
    with pytest.raises(KeyError, match="a bug"):
        next(batches)


def test_work_is_submitted_a_bounded_number_of_batches_ahead():
    pool = Recorder()
    batches = prefetch(list(range(10)), lambda x: x, 2, ahead=1, pool=pool)
    # Before anything is consumed: the first batch and one ahead, so they overlap the caller.
    assert pool.submitted == [0, 1, 2, 3]
    next(batches)
    assert pool.submitted == [0, 1, 2, 3, 4, 5]
    assert list(batches) == [[2, 3], [4, 5], [6, 7], [8, 9]]
    pool = Recorder()
    prefetch(list(range(10)), lambda x: x, 2, ahead=0, pool=pool)
    assert pool.submitted == [0, 1]


def test_closing_early_cancels_work_not_started():
    release, started = threading.Event(), []

    def work(x: int) -> int:
        started.append(x)
        if x >= 2:
            release.wait(10)  # the single worker is stuck here on item 2; 3..7 wait in line
        return x

    with ThreadPoolExecutor(max_workers=1) as pool:
        batches = prefetch(list(range(8)), work, 2, ahead=2, pool=pool)
        assert next(batches) == [0, 1]
        batches.close()
        release.set()
    assert started == [0, 1, 2]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        prefetch([1], lambda x: x, 0)
    with pytest.raises(ValueError, match="ahead must be at least 0"):
        prefetch([1], lambda x: x, 1, ahead=-1)


def test_one_pool_per_process_with_a_thread_per_cpu():
    assert decode_pool() is decode_pool()
    assert decode_pool()._max_workers == decode_threads() >= 1
    if hasattr(os, "sched_getaffinity"):
        assert decode_threads() == len(os.sched_getaffinity(0))
