"""Celery beat's task: an incremental scan of a URI on a schedule (``DEEPSCAN_SCHEDULES``).

Apart from ``workers.tasks`` because it runs the producer, which queues those tasks: a task module never
imports who queues it.
"""

from __future__ import annotations

import logging

from db.models import ScanKind
from workers import producer
from workers.celery_app import app

logger = logging.getLogger(__name__)


@app.task(name="deepscan.scheduled_scan", ignore_result=True)
def scheduled_scan(*, uri: str) -> None:
    """An incremental scan of ``uri``, unless the previous one is still going."""
    started = producer.start_scan(uri, kind=ScanKind.BEAT, skip_if_active=True)
    if started is not None:
        logger.info(
            "scheduled scan %d of %s: %d queued, %d skipped",
            started.scan_id,
            uri,
            started.queued,
            started.skipped,
        )
