"""Prometheus metrics of workers and the API: objects by status and label, task latency, queue depth,
model load time.

A worker's tasks run in its prefork children, so a worker counts in prometheus_client's multiprocess
mode: ``PROMETHEUS_MULTIPROC_DIR`` is set by ``deepscan worker`` before anything imports prometheus_client
(the value class is chosen at its import), every child writes its samples to files there, and the main
process serves the sum of them (``serve``) on ``DEEPSCAN_METRICS_PORT``. The queue depth is read from
Redis when scraped. The API mounts ``asgi_app()`` at ``/metrics``. Elsewhere (``deepscan scan`` in process,
``detect``) the same metrics count in the process's default registry and nobody serves them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Task latencies run from a soundtrack's fraction of a second to a long video's minutes.
TASK_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
MODEL_LOAD_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)

OBJECTS = Counter("deepscan_objects", "Result rows written, by status and label", ["status", "label"])
TASK_SECONDS = Histogram(
    "deepscan_task_duration_seconds", "Wall time of a Celery task, by task", ["task"], buckets=TASK_BUCKETS_S
)
MODEL_LOAD_SECONDS = Histogram(
    "deepscan_model_load_seconds", "Time to load the model pack in a process", buckets=MODEL_LOAD_BUCKETS_S
)


def count_row(*, status: str, label: str | None) -> None:
    OBJECTS.labels(status=status, label=label or "none").inc()


_started: dict[str, float] = {}  # task id -> perf_counter at its start, in the process that runs it


@signals.task_prerun.connect
def _task_started(task_id: str, **_: Any) -> None:
    _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id: str, task: Any, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        TASK_SECONDS.labels(task=task.name).observe(time.perf_counter() - started)


class QueueDepthCollector(Collector):
    """``deepscan_queue_depth{queue}``: messages waiting in each Redis queue, read when scraped."""

    def __init__(self, broker_url: str, queues: tuple[str, ...]) -> None:
        self.broker_url, self.queues = broker_url, queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import redis

        family = GaugeMetricFamily("deepscan_queue_depth", "Messages waiting in a queue", labels=["queue"])
        client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            for queue in self.queues:
                family.add_metric([queue], float(client.llen(queue)))
        except redis.RedisError as e:  # the scrape still answers, without the depth
            logger.warning("queue depth unavailable: %s", e)
            return
        finally:
            client.close()
        yield family


def registry(*, broker_url: str | None = None, queues: tuple[str, ...] = ()) -> CollectorRegistry:
    """What to expose: every process's samples in multiprocess mode (else this process's), and the queue
    depth when ``broker_url`` is a Redis one."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        exposed = CollectorRegistry()
        multiprocess.MultiProcessCollector(exposed)
    else:
        exposed = CollectorRegistry()
        exposed.register(REGISTRY)
    if broker_url and broker_url.startswith(("redis://", "rediss://")) and queues:
        exposed.register(QueueDepthCollector(broker_url, queues))
    return exposed


def serve(port: int, *, broker_url: str | None, queues: tuple[str, ...]) -> None:
    """Serve ``/metrics`` on ``port`` (all interfaces) from a thread of this process."""
    start_http_server(port, registry=registry(broker_url=broker_url, queues=queues))
    logger.info("metrics on :%d/metrics", port)


def metrics_text(exposed: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The exposition text and its content type, for a ``/metrics`` route written by hand."""
    return generate_latest(exposed or registry()), CONTENT_TYPE_LATEST


def asgi_app(*, broker_url: str | None = None, queues: tuple[str, ...] = ()) -> Callable[..., Any]:
    """An ASGI app answering with the metrics: ``app.mount("/metrics", asgi_app(...))`` in the API."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(registry(broker_url=broker_url, queues=queues))
