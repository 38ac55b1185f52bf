"""Batching helpers: bounded lists, items produced ahead by a thread, forward passes shared by threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.batching import CoalescingBatcher, batched, prefetched


def test_batched_keeps_order_and_bounds_the_lists() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError):
        list(batched([1], 0))


def test_prefetched_gives_every_item_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def produce() -> Iterator[int]:
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetched(produce(), depth=4)) == list(range(50))
    assert threads == {"prefetch"}


def test_prefetched_raises_the_producers_error_after_the_items_before_it() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("decoder died")

    seen = []
    with pytest.raises(OSError, match="decoder died"):
        for item in prefetched(produce(), depth=8):
            seen.append(item)
    assert seen == [1, 2]


def test_a_consumer_that_stops_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()
    produced = []

    def produce() -> Iterator[int]:
        try:
            for i in range(1_000_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    for item in prefetched(produce(), depth=2):
        if item == 3:
            break
    assert closed.wait(5)
    assert len(produced) <= 3 + 1 + 2 + 1  # what was consumed, the queue, and one item in hand


def test_callers_on_many_threads_share_forward_passes_and_get_their_own_rows() -> None:
    calls: list[int] = []

    def score_batch(items: list[int]) -> np.ndarray:
        calls.append(len(items))
        time.sleep(0.05)  # a forward pass: others arrive meanwhile
        return np.array([[item, item * 10] for item in items], dtype=np.float64)

    batcher = CoalescingBatcher(score_batch, max_items=64, max_wait_s=0.2)
    requests = [list(range(k * 100, k * 100 + 1 + k % 3)) for k in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(batcher.score, requests))
    for items, rows in zip(requests, answers, strict=True):
        assert rows.tolist() == [[item, item * 10] for item in items]
    assert sum(calls) == sum(len(items) for items in requests)
    assert len(calls) < len(requests) and batcher.batches == len(calls)  # items of several callers per pass
    assert max(calls) > 3


def test_a_full_batch_does_not_wait_and_an_error_reaches_every_caller_of_its_batch() -> None:
    def failing(items: list[int]) -> np.ndarray:
        raise RuntimeError("out of memory")

    batcher = CoalescingBatcher(failing, max_items=2, max_wait_s=30)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.score([1, 2])
    assert time.monotonic() - started < 5
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = [pool.submit(batcher.score, [k]) for k in range(2)]
        for outcome in outcomes:
            with pytest.raises(RuntimeError, match="out of memory"):
                outcome.result(timeout=10)
