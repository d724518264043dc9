"""Per-image work on a pool of threads, a batch ahead of the model.

Reading, decoding and preprocessing an image (:func:`clipbeam.transforms.images.prepare_image`)
spends its time in Pillow's C code, which releases the GIL, so threads run it in parallel with one
another and with the model, whose PyTorch kernels release the GIL too. :func:`prefetch` keeps the
next batch's images in preparation while the caller runs the model on the current one: on a GPU
worker the CPUs decode while the GPU computes, and on a CPU worker decoding fills the gaps the
model's parallel kernels leave. At most ``ahead + 1`` batches of prepared pixels exist at once, so
memory stays bounded by the batch size, not the input size.

The pool is per process, created on first use (nothing is started at import, and nothing here is
pickled with a DoFn), with one thread per CPU the process may run on.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

from clipbeam.transforms.errors import RowError

__all__ = ["decode_pool", "decode_threads", "prefetch"]

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def decode_threads() -> int:
    """Threads of the decode pool: one per CPU this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decode_pool() -> ThreadPoolExecutor:
    """The process's decode pool, created on first use (and again in a forked child, whose copy
    of the parent's pool has no threads)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(
                max_workers=decode_threads(), thread_name_prefix="clipbeam-decode"
            )
            _pool_pid = os.getpid()
        return _pool


def prefetch(
    items: Sequence[T],
    work: Callable[[T], R],
    batch_size: int,
    *,
    ahead: int = 1,
    pool: Executor | None = None,
) -> Iterator[list[R | RowError]]:
    """Runs ``work`` over ``items`` on a thread pool and yields the results in batches, in order.

    The first ``ahead + 1`` batches are submitted before this returns, so their work overlaps
    whatever the caller does before it asks for the first batch; each batch taken submits the
    next one.

    Args:
        items: the inputs, e.g. row indices.
        work: the per-item function. A :class:`RowError` it raises is yielded in place of the
            result (the row failed); any other exception is raised to the caller.
        batch_size: items per yielded batch (the last may be shorter).
        ahead: batches kept in preparation beyond the one being consumed.
        pool: the executor; :func:`decode_pool` by default.

    Returns:
        An iterator of lists of results or row errors, ``batch_size`` at a time. Closing it early
        cancels the work not started yet.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    if ahead < 0:
        raise ValueError(f"ahead must be at least 0 (got {ahead})")
    executor = pool if pool is not None else decode_pool()
    starts = deque(range(0, len(items), batch_size))
    pending: deque[list[Future]] = deque()

    def submit_next() -> None:
        if starts:
            start = starts.popleft()
            chunk = items[start : start + batch_size]
            pending.append([executor.submit(_attempt, work, item) for item in chunk])

    for _ in range(ahead + 1):
        submit_next()
    return _batches(pending, submit_next)


def _batches(
    pending: deque[list[Future]], submit_next: Callable[[], None]
) -> Iterator[list[R | RowError]]:
    try:
        while pending:
            futures = pending.popleft()
            submit_next()
            yield [future.result() for future in futures]
    finally:
        for futures in pending:
            for future in futures:
                future.cancel()


def _attempt(work: Callable[[T], R], item: T) -> R | RowError:
    try:
        return work(item)
    except RowError as exc:
        return exc
