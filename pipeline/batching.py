"""Batching helpers: consecutive items in lists of a bounded size, items produced ahead by a thread, and
one forward pass for the items of many threads."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
logger = logging.getLogger(__name__)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter), consuming ``items`` lazily.

    ``itertools.batched`` from Python 3.12, as lists; the project supports 3.10.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def predict_padded(model: Any, batch: np.ndarray, max_batch: int) -> np.ndarray:
    """``model.predict_on_batch`` over the rows of ``batch``, in chunks of at most ``max_batch`` rows, each
    padded with zeros to a power of two; the outputs of the real rows, in order.

    Padding bounds the distinct batch shapes a backend compiles to log2(max_batch) + 1 per model; without
    it every new row count retraces the graph.
    """
    out = []
    for i in range(0, len(batch), max_batch):
        chunk = batch[i : i + max_batch]
        padded_size = 1 << (len(chunk) - 1).bit_length()
        if padded_size != len(chunk):
            chunk = np.concatenate(
                [chunk, np.zeros((padded_size - len(chunk), *chunk.shape[1:]), chunk.dtype)]
            )
        out.append(np.asarray(model.predict_on_batch(chunk))[: min(max_batch, len(batch) - i)])
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


class _Raised:
    """An exception the producer thread raised, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """The items of ``items``, produced by a thread of their own up to ``depth`` items ahead.

    Work that releases the GIL while producing (a decoder's pipe, OpenCV) overlaps with the consumer's
    (a model's forward pass). An exception of the producer is raised in the consumer, at the place of the
    item it stopped at. When the consumer stops early, the producer stops at its next item and closes
    ``items`` (a generator's ``finally`` runs in the producer's thread).
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    break
            else:
                offer(_DONE)
        except BaseException as e:  # handed over to the consumer, which raises it
            offer(_Raised(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="prefetch", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, _Raised):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()


class _Request:
    """One caller's items and, once its batch has been scored, its rows of the scores (or the error)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items
        self.scores: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class CoalescingBatcher:
    """One forward pass for the items of many threads: callers of ``score`` that arrive within
    ``max_wait_s`` of each other (or until ``max_items`` wait) share one call of ``score_batch``.

    Leader and followers, no thread of its own: the first caller that finds no batch being gathered
    gathers one, waits up to ``max_wait_s`` for others, scores them all and hands every caller its rows;
    callers arriving meanwhile wait and gather the next batch. An error of ``score_batch`` is raised to
    every caller of that batch. ``score_batch`` maps N items to an array of N rows.
    """

    def __init__(
        self, score_batch: Callable[[list[Any]], np.ndarray], *, max_items: int, max_wait_s: float
    ) -> None:
        if max_items < 1 or max_wait_s < 0:
            raise ValueError("a batch holds at least one item and waits a non-negative time")
        self._score_batch = score_batch
        self.max_items, self.max_wait_s = max_items, max_wait_s
        self._changed = threading.Condition()
        self._waiting: list[_Request] = []
        self._gathering = False
        self.batches = 0  # forward passes run, for the curious and the tests

    def score(self, items: Sequence[Any]) -> np.ndarray:
        if not items:
            return self._score_batch([])
        request = _Request(items)
        with self._changed:
            self._waiting.append(request)
            self._changed.notify_all()
            while self._gathering and not request.done:
                self._changed.wait()
            if not request.done:
                batch = self._gather()
        if not request.done:
            self._run(batch)
        if request.error is not None:
            raise request.error
        assert request.scores is not None
        return request.scores

    def _gather(self) -> list[_Request]:
        """Under the lock: wait for more callers, then take every waiting request."""
        self._gathering = True
        deadline = time.monotonic() + self.max_wait_s
        while sum(len(r.items) for r in self._waiting) < self.max_items:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.wait(left)
        batch, self._waiting = self._waiting, []
        return batch

    def _run(self, batch: list[_Request]) -> None:
        try:
            items = [item for r in batch for item in r.items]
            logger.debug("one forward pass for %d items of %d callers", len(items), len(batch))
            scores = self._score_batch(items)
            start = 0
            for r in batch:
                r.scores, start = scores[start : start + len(r.items)], start + len(r.items)
        except BaseException as e:  # every caller of the batch learns why
            for r in batch:
                r.error = e
        with self._changed:
            self.batches += 1
            for r in batch:
                r.done = True
            self._gathering = False
            self._changed.notify_all()
