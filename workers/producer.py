"""The producer: list a bucket prefix or a folder, record a scan, queue one task per object, and wait.

A scan is created 'queuing' while the listing goes on, page by page: each page's count is committed to the
scan's ``total`` before its tasks are published, so no task can see a total smaller than the number of
objects already queued. Once the listing is done the scan turns 'running' and may complete: whoever
writes the last row (a task, or ``wait_for_scan``) marks it complete, with one conditional UPDATE. A
database that stops answering meanwhile (a restart, a failover) is waited out for a few minutes, page by
page, as the workers wait it out.

Objects already analysed with the same ETag (S3) or sha256 (local files) and the same model version are
skipped and counted in ``skipped``, unless ``force``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Scan, ScanKind, ScanStatus, utcnow
from db.session import session_scope
from pipeline.batching import batched
from pipeline.errors import ModelPackError
from workers import resources, rows
from workers.celery_app import time_limits
from workers.errors import ScanError, UsageError
from workers.settings import get_settings
from workers.storage import ObjectRef, canonical_source, list_objects
from workers.tasks import queue_object

logger = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_SIZE = 500  # objects checked against the results table and queued per transaction
BROKER_CONNECT_RETRIES = 2
BROKER_CHECK_INTERVAL_S = 10.0  # how often a waiting producer makes sure the broker still answers
# How long a waiting producer rides out a broker that does not answer (a restart) before it gives up.
BROKER_OUTAGE_GRACE_S = 120.0
# What SQLAlchemy raises when the database does not answer (a restart, a network cut): waited for, not fatal
DATABASE_AWAY = (OperationalError, InterfaceError)
# How long the producer retries a step that needs the database (a page's bookkeeping while queuing, the last
# steps once everything is queued): the workers are busy with what is queued, and their retries wait too.
DATABASE_OUTAGE_GRACE_S = 300.0
DATABASE_RETRY_MAX_DELAY_S = 15.0
# A queuing or running scan older than this is taken for abandoned: a scheduled run no longer waits on it.
ACTIVE_SCAN_MAX_AGE = timedelta(hours=24)
# A scheduled scan is queued by a Celery task, which its hard time limit ends: one still 'queuing' this long
# after that limit (clocks of two hosts apart) has lost its producer.
ABANDONED_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class QueuedScan:
    scan_id: int
    uri: str
    queued: int
    skipped: int


@dataclass(frozen=True)
class ScanProgress:
    """A scan's counts, as ``db.queries.scan_counts`` gives them."""

    scan_id: int
    status: str
    total: int
    done: int
    skipped: int
    ok: int
    errors: int
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def in_process() -> bool:
    """Whether tasks run in this process (no broker configured: the embedded default)."""
    return get_settings().broker_url is None


def check_broker() -> None:
    """Raise ScanError unless the broker accepts a connection (after a couple of quick retries)."""
    from workers.celery_app import app, require_broker

    require_broker(get_settings())
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=BROKER_CONNECT_RETRIES, interval_start=0.2, interval_step=0.5
            )
    except (BrokerError, OSError) as e:
        raise ScanError(f"the broker at {app.connection_for_write().as_uri()} is unreachable: {e}") from e


def start_scan(
    uri: str,
    *,
    kind: ScanKind = ScanKind.SCAN,
    force: bool = False,
    skip_if_active: bool = False,
    sessions: sessionmaker[Session] | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
) -> QueuedScan | None:
    """List ``uri`` (``s3://bucket/prefix`` or a folder), record a scan and queue its new objects.

    With a broker the objects go to the workers and this returns once they are queued; without one
    (``in_process``) each task runs here, so the scan is complete when this returns. ``on_progress``
    sees the scan's counts after each object is handed on (analysed, in process).

    Returns None, queuing nothing, when ``skip_if_active`` and an earlier scan of ``uri`` is still under
    way (scheduled runs never overlap: two scans racing for the same rows would leave one unfinished).
    Raises UsageError for a bad URI or model pack, ScanError when the broker or the store fails; a scan
    that fails while queuing is marked 'failed' with the reason.
    """
    settings = get_settings()
    sessions = sessions or resources.process_sessions()
    source = canonical_source(uri)
    try:
        model_name, model_version = resources.model_identity()
    except ModelPackError as e:
        raise UsageError(f"cannot read the model pack in {settings.models_dir}: {e.reason}") from e
    if in_process():
        _load_models_or_refuse()
    else:
        check_broker()
    with session_scope(sessions) as session:
        if skip_if_active and kind is ScanKind.BEAT:
            _fail_abandoned_scheduled_scans(session, source)
        if skip_if_active and (
            active := queries.active_scan(session, uri=source, since=utcnow() - ACTIVE_SCAN_MAX_AGE)
        ):
            logger.warning(
                "scan %d of %s is still %s: not starting another", active.id, source, active.status
            )
            return None
        scan_id = queries.create_scan(
            session,
            uri=source,
            kind=kind,
            model_name=model_name,
            model_version=model_version,
            status=ScanStatus.QUEUING,
        ).id
    queued = skipped = 0
    try:
        for page in batched(
            list_objects(
                source, endpoint_url=settings.s3_endpoint_url, exclude_prefix=settings.quarantine_prefix
            ),
            PAGE_SIZE,
        ):
            count_page = partial(
                _count_page, sessions, scan_id, page, model_version=model_version, force=force
            )
            fresh = _through_database_outage(count_page, f"scan {scan_id}")
            for ref in fresh:
                queue_object(ref, scan_id)
                if on_progress is not None:
                    _report_progress(scan_id, on_progress, sessions)
            queued, skipped = queued + len(fresh), skipped + len(page) - len(fresh)
    except BaseException as e:  # interrupted too: a scan must not stay 'queuing' for ever
        _mark_failed(sessions, scan_id, f"{type(e).__name__}: {e}")
        if isinstance(e, UsageError | ScanError) or not isinstance(e, Exception):
            raise
        raise ScanError(f"scan {scan_id} of {source} stopped while queuing: {e}") from e

    def start_running() -> None:
        with session_scope(sessions) as session:
            queries.mark_scan_running(session, scan_id=scan_id)
        rows.complete_if_done(scan_id, sessions=sessions)  # the tasks may all have finished already

    # every object is queued and the workers are at it: a database outage now is waited out too
    _through_database_outage(start_running, f"scan {scan_id}")
    logger.info("scan %d of %s: %d queued, %d skipped", scan_id, source, queued, skipped)
    return QueuedScan(scan_id, source, queued, skipped)


def _fail_abandoned_scheduled_scans(session: Session, source: str) -> None:
    """Mark failed the scheduled scans of ``source`` left 'queuing' by a producer that was killed (OOM, the
    hard time limit: an interrupted one marks its scan itself). Celery hands that task out again, and
    without this the new run would find the scan under way and skip, as would every run for
    ``ACTIVE_SCAN_MAX_AGE``. A scan queued by hand (``deepscan scan``) has no such bound and is left alone."""
    hard_s = time_limits(get_settings().visibility_timeout_s)[1]
    error = f"its producer stopped while queuing (a scheduled scan's task ends within {hard_s:.0f} s)"
    created_before = utcnow() - timedelta(seconds=hard_s) - ABANDONED_MARGIN
    if n := queries.fail_abandoned_scans(
        session, uri=source, kind=ScanKind.BEAT.value, created_before=created_before, error=error
    ):
        logger.warning("%d scheduled scan(s) of %s marked failed: %s", n, source, error)


def _report_progress(
    scan_id: int, on_progress: Callable[[ScanProgress], None], sessions: sessionmaker[Session]
) -> None:
    """Show the scan's counts; a database that does not answer just skips this update."""
    try:
        progress = scan_progress(scan_id, sessions=sessions)
    except DATABASE_AWAY as e:
        logger.warning("scan %d: the database does not answer (%s); no progress shown", scan_id, e.orig)
        return
    on_progress(progress)


def _count_page(
    sessions: sessionmaker[Session], scan_id: int, page: list[ObjectRef], *, model_version: str, force: bool
) -> list[ObjectRef]:
    """The objects of ``page`` to queue, once the scan counts the page (committed before any is published:
    see the module docstring). One transaction for the count, so a page retried after an outage that broke
    it is counted once; only a connection lost during the COMMIT itself leaves that unknowable."""
    fresh = _fresh(sessions, page, model_version=model_version, force=force)
    with session_scope(sessions) as session:
        queries.add_to_scan(session, scan_id=scan_id, queued=len(fresh), skipped=len(page) - len(fresh))
    return fresh


def _mark_failed(sessions: sessionmaker[Session], scan_id: int, error: str) -> None:
    """Mark the scan failed with ``error``; a database still away leaves it 'queuing' (later scheduled runs
    pass it after ``ACTIVE_SCAN_MAX_AGE``) and says so in the log."""
    try:
        with session_scope(sessions) as session:
            queries.finish_scan(session, scan_id=scan_id, status=ScanStatus.FAILED, error=error)
    except DATABASE_AWAY as e:
        logger.error("scan %d could not be marked failed, the database does not answer (%s)", scan_id, e.orig)


def _through_database_outage(step: Callable[[], T], what: str) -> T:
    """Run ``step``, and again while the database does not answer, with growing pauses, for at most
    ``DATABASE_OUTAGE_GRACE_S``; then raise ScanError."""
    deadline = time.monotonic() + DATABASE_OUTAGE_GRACE_S
    delay = 1.0
    while True:
        try:
            return step()
        except DATABASE_AWAY as e:
            if time.monotonic() + delay > deadline:
                raise ScanError(
                    f"{what}: the database has not answered for {DATABASE_OUTAGE_GRACE_S:.0f} s ({e.orig})"
                ) from e
            logger.warning(
                "%s: the database does not answer (%s); trying again in %.0f s", what, e.orig, delay
            )
            time.sleep(delay)
            delay = min(2 * delay, DATABASE_RETRY_MAX_DELAY_S)


def _load_models_or_refuse() -> None:
    """Load this process's pack before anything is listed: a pack that will not load is a usage error
    then, not an error row for every object."""
    settings = get_settings()
    try:
        resources.analyzer()
    except ModelPackError as e:
        raise UsageError(f"cannot load the model pack in {settings.models_dir}: {e.reason}") from e


def _fresh(
    sessions: sessionmaker[Session], page: list[ObjectRef], *, model_version: str, force: bool
) -> list[ObjectRef]:
    """The objects of ``page`` that need analysing: all of them with ``force``."""
    if force:
        return page
    with session_scope(sessions) as session:
        return [
            ref
            for ref in page
            if not queries.already_analysed(
                session, uri=ref.uri, etag=ref.etag, content_sha256=ref.sha256, model_version=model_version
            )
        ]


def scan_progress(scan_id: int, *, sessions: sessionmaker[Session] | None = None) -> ScanProgress:
    with session_scope(sessions or resources.process_sessions()) as session:
        rows = queries.scan_counts(session, scan_id=scan_id)
        scan = session.get(Scan, scan_id)
        error = scan.error if scan is not None else None
    if not rows:
        raise ScanError(f"there is no scan {scan_id}")
    row = rows[0]
    return ScanProgress(
        scan_id,
        row["status"],
        row["total"],
        row["done"],
        row["skipped"],
        row["ok"],
        row["errors"],
        error,
    )


def wait_for_scan(
    scan_id: int,
    *,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    on_progress: Callable[[ScanProgress], None] | None = None,
    sessions: sessionmaker[Session] | None = None,
) -> ScanProgress:
    """Wait until every queued object of the scan has its row; return the final counts.

    Completes the scan itself when all rows are there (a task that wrote the last row but died before
    completing it leaves that to us). A database that stops answering is waited for, as the workers'
    retries wait for it; so is a broker that stops answering, for ``BROKER_OUTAGE_GRACE_S``. Raises
    ScanError on timeout, when the broker has been away longer than that, or when the scan failed.
    """
    sessions = sessions or resources.process_sessions()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_broker_check = broker_answered = time.monotonic()
    progress: ScanProgress | None = None
    while True:
        try:
            rows.complete_if_done(scan_id, sessions=sessions)
            progress = scan_progress(scan_id, sessions=sessions)
        except DATABASE_AWAY as e:  # the database is away: the workers retry, so do we
            logger.warning("scan %d: the database does not answer (%s); still waiting", scan_id, e.orig)
        else:
            if on_progress is not None:
                on_progress(progress)
            if progress.status == ScanStatus.COMPLETE:
                return progress
            if progress.status == ScanStatus.FAILED:
                raise ScanError(f"scan {scan_id} failed: {progress.error}")
        now = time.monotonic()
        if deadline is not None and now > deadline:
            counts = f"{progress.done} of {progress.total}" if progress else "how many"
            raise ScanError(
                f"scan {scan_id} did not finish within {timeout_s:.0f} s: {counts} objects have a result"
            )
        if now - last_broker_check > BROKER_CHECK_INTERVAL_S:
            last_broker_check = now
            try:
                check_broker()
                broker_answered = now
            except ScanError as e:
                if now - broker_answered > BROKER_OUTAGE_GRACE_S:
                    raise
                logger.warning("scan %d: %s; still waiting", scan_id, e.reason)
        time.sleep(poll_s)
