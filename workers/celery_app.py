"""The Celery application of the distributed scanner, configured from ``workers.settings``.

Two queues: ``light`` (listing, probing and splitting videos, expanding archives, aggregating verdicts,
scheduled scans) and ``gpu`` (model inference: images, audio, video segments, soundtracks). GPU workers
consume ``gpu``; CPU-only workers may consume both.

Without a broker (the embedded default) the same app runs every task in the calling process, in Celery's
eager mode: ``deepscan scan`` then lists, expands archives, splits videos into chords and writes rows
with the very tasks the workers run, one object after another.

Delivery is at-least-once: a task is acknowledged after it ran (``acks_late``), a task whose worker
died is handed out again (``reject_on_worker_lost``, and Redis redelivers what stays unacknowledged past
the visibility timeout), so every task is idempotent. Time limits and retry delays sit below the
visibility timeout, or Redis would hand a task that is still running, or waiting to retry, to a second
worker. Messages are JSON only: a worker never unpickles what a broker hands it.

``python -m workers.cli worker`` (or ``celery -A workers.celery_app worker``) runs a worker of this app.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab
from kombu import Queue

from workers import logs
from workers.errors import UsageError
from workers.settings import ScheduleSpec, Settings, get_settings

logger = logging.getLogger(__name__)

LIGHT_QUEUE, GPU_QUEUE = "light", "gpu"
GPU_TASKS = ("deepscan.analyze_object", "deepscan.score_segment", "deepscan.score_soundtrack")
# A soft limit raises inside the task (which then records an error row); the hard limit kills it. Both
# stay below the visibility timeout so that no task still running is ever handed to a second worker.
SOFT_LIMIT_FRACTION, HARD_LIMIT_FRACTION = 0.8, 0.9
# Retries wait (unacknowledged) in the worker: they must come back well within the visibility timeout.
RETRY_DELAY_FRACTION, RETRY_DELAY_CAP_S = 0.25, 600
# How often a worker sweeps Redis for tasks abandoned by a dead worker (a cheap sorted-set range query):
# four times per visibility timeout, at least once a minute.
RESTORE_SWEEPS_PER_TIMEOUT, RESTORE_SWEEP_CAP_S = 4, 60
# A child loads TensorFlow and the pack before taking tasks; Celery's default (4 s) would reap it as hung.
PROCESS_START_TIMEOUT_S = 300.0
# Tries of a result write (a chord part's) while the backend is unreachable, with Celery's backoff between
# them (10 ms, doubling, at most 10 s apart); each try itself retries its Redis call for about 20 s
# (the backend's default retry policy), so a write waits several minutes for Redis in all.
RESULT_STORE_RETRIES = 20
# How long a task's delivery count (workers.tasks.count_delivery) waits for an unreachable result backend:
# tries 0, 1, 2, 3, 4 s apart, then every 5 s, about two minutes. Passed to that one call: as the backend's
# own policy it would also stretch each of the result write's tries above, to tens of minutes in all.
DELIVERY_COUNT_RETRY_POLICY = {"max_retries": 30, "interval_start": 0, "interval_step": 1, "interval_max": 5}
PUBLISH_RETRY_POLICY = {"max_retries": 15, "interval_start": 0, "interval_step": 1, "interval_max": 5}


def time_limits(visibility_timeout_s: int) -> tuple[float, float]:
    """(soft, hard) task time limits in seconds for a broker visibility timeout."""
    return SOFT_LIMIT_FRACTION * visibility_timeout_s, HARD_LIMIT_FRACTION * visibility_timeout_s


def retry_delay_cap_s(visibility_timeout_s: int) -> int:
    """The longest backoff between two tries of a task."""
    return max(1, min(RETRY_DELAY_CAP_S, int(RETRY_DELAY_FRACTION * visibility_timeout_s)))


def beat_schedule(specs: list[ScheduleSpec]) -> dict[str, dict[str, Any]]:
    """Celery beat entries: one incremental ``scheduled_scan`` of each URI on its interval or crontab.

    A run that no worker picked up before the next one is due expires rather than piling up.
    """
    entries: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.every_s is not None:
            schedule: timedelta | crontab = timedelta(seconds=spec.every_s)
            expires_s = spec.every_s
        else:
            assert spec.crontab is not None
            minute, hour, day_of_month, month_of_year, day_of_week = spec.crontab.split()
            schedule = crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
            )
            expires_s = 3600.0
        entries[f"scan {spec.uri}"] = {
            "task": "deepscan.scheduled_scan",
            "schedule": schedule,
            "kwargs": {"uri": spec.uri},
            "options": {"queue": LIGHT_QUEUE, "expires": expires_s},
        }
    return entries


def require_broker(settings: Settings) -> str:
    """The broker URL; UsageError when it is not set (a worker, beat or producer then refuses to start)."""
    if not settings.broker_url:
        raise UsageError(
            "DEEPSCAN_BROKER_URL is not set: the distributed scanner needs a broker "
            "(e.g. redis://127.0.0.1:6379/0)"
        )
    return settings.broker_url


def make_app(settings: Settings) -> Celery:
    """The Celery app for ``settings``. Raises UsageError for inconsistent timeouts.

    Importing it needs no broker. Without one, tasks run eagerly in the caller's process (the embedded
    scan; failures are handled by the tasks' own ``on_failure`` and never propagate to the caller);
    starting a worker or beat without one fails (``require_broker``).
    """
    visibility_s = settings.visibility_timeout_s
    if settings.result_expires_s < visibility_s:
        raise UsageError(
            "DEEPSCAN_RESULT_EXPIRES_S must be at least DEEPSCAN_VISIBILITY_TIMEOUT_S: a video's chord "
            "keeps its parts' results until the last part is done"
        )
    soft_s, hard_s = time_limits(visibility_s)
    app = Celery("deepscan", include=["workers.tasks", "workers.scheduled"])
    app.conf.update(
        # no broker: tasks run eagerly in the caller; the in-memory transport is never used, and keeps kombu
        # from looking for a default AMQP host
        broker_url=settings.broker_url or "memory://localhost/",
        # Chords count their parts in the result backend: it must exist and keep results.
        result_backend=settings.result_backend or settings.broker_url,
        result_expires=settings.result_expires_s,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A task running when the broker goes away finishes and writes its row (redelivered later, it is
        # idempotent); cancelled, it was lost whenever the broker restarted before its restore.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A chord part that finishes while Redis is away keeps trying to store its result until it is back.
        result_backend_always_retry=True,
        result_backend_max_retries=RESULT_STORE_RETRIES,
        # Publishing (the producer, a task queuing the next) rides out a broker restart too: 1, 2, 3, 4 s,
        # then every 5 s, about a minute in all (Celery's default gives up after under a second).
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility_s,
            "unacked_restore_interval": max(
                1, min(RESTORE_SWEEP_CAP_S, visibility_s // RESTORE_SWEEPS_PER_TIMEOUT)
            ),
            "unacked_restore_throttle": 1,
        },
        task_soft_time_limit=soft_s,
        task_time_limit=hard_s,
        task_queues=(Queue(LIGHT_QUEUE), Queue(GPU_QUEUE)),
        task_default_queue=LIGHT_QUEUE,
        task_routes={name: {"queue": GPU_QUEUE} for name in GPU_TASKS},
        worker_proc_alive_timeout=PROCESS_START_TIMEOUT_S,
        beat_schedule=beat_schedule(settings.schedules),
        timezone="UTC",
        enable_utc=True,
        task_always_eager=settings.broker_url is None,
        task_eager_propagates=False,
        task_store_eager_result=False,
    )
    return app


app = make_app(get_settings())


@signals.celeryd_init.connect
@signals.beat_init.connect
def _refuse_to_start_without_broker(**_: Any) -> None:
    require_broker(get_settings())


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    logs.configure(logger.handlers, get_settings().log_format)


# Set in the worker's main process before it forks, read by each child.
_consumes_gpu_queue = True


@signals.celeryd_after_setup.connect
def _note_queues(sender: str, instance: Any, **_: Any) -> None:
    global _consumes_gpu_queue
    consumed = instance.app.amqp.queues.consume_from
    _consumes_gpu_queue = not consumed or GPU_QUEUE in consumed
    from celery.concurrency.prefork import TaskPool as PreforkPool

    forks = isinstance(instance.pool_cls, type) and issubclass(instance.pool_cls, PreforkPool)
    if not forks:  # threads or solo: the tasks run in this process, so its models are loaded here
        _load_models()


@signals.worker_process_init.connect
def _load_models(**_: Any) -> None:
    """Load and warm the models once per process of a worker that runs inference, before it takes a task:
    each child of a prefork pool, or the worker's own process for a threads or solo pool.

    Loading at the first task instead would spend that task's time limit on it; warming (tracing every
    member's forward pass) makes the first object cost what the hundredth does.
    """
    if not _consumes_gpu_queue:
        return
    from pipeline.errors import DeepscanError
    from workers import resources

    try:
        started = time.perf_counter()
        resources.analyzer().warm_up()
        logger.info("models loaded and warmed in %.1f s", time.perf_counter() - started)
    except DeepscanError:  # the tasks record it on each row (status model_error); keep the worker up
        logger.exception("could not load the model pack")


@signals.worker_process_shutdown.connect  # a prefork child
@signals.worker_shutdown.connect  # the worker: its threads' copies, with a threads or solo pool
def _drop_local_copies(**_: Any) -> None:
    from workers import resources

    resources.close_local_copies()
