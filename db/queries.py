"""Query functions: keyword-only arguments, an explicit session, no commits (the caller owns the unit of work)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import FrameResult, Result, Scan, ScanKind, ScanObject, ScanStatus, utcnow
from pipeline.errors import ResultStatus

# Columns a caller may set through upsert_result; id, uri and the timestamps belong to the store.
STORE_COLUMNS = frozenset({"id", "uri", "created_at", "updated_at"})
VERDICT_COLUMNS = frozenset(column.key for column in Result.__table__.columns) - STORE_COLUMNS


def create_scan(
    session: Session,
    *,
    uri: str,
    kind: ScanKind,
    model_name: str,
    model_version: str,
    total: int = 0,
    status: ScanStatus = ScanStatus.RUNNING,
) -> Scan:
    """Record the start of a run and return it with its id assigned.

    ``status`` is 'running', or 'queuing' for a producer that has not listed everything yet: a queuing
    scan is never marked complete by ``complete_scan_if_done``, since its ``total`` is still growing.
    """
    scan = Scan(
        uri=uri,
        kind=ScanKind(kind).value,
        status=ScanStatus(status).value,
        model_name=model_name,
        model_version=model_version,
        total=total,
    )
    session.add(scan)
    session.flush()
    return scan


def finish_scan(
    session: Session, *, scan_id: int, status: ScanStatus = ScanStatus.COMPLETE, error: str | None = None
) -> Scan:
    """Mark a run finished with ``status`` ('complete' or 'failed') and an optional error message.

    Raises ``LookupError`` when there is no scan ``scan_id``.
    """
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise LookupError(f"no scan with id {scan_id}")
    scan.status = ScanStatus(status).value
    scan.error = error
    scan.finished_at = utcnow()
    session.flush()
    return scan


def add_to_scan(session: Session, *, scan_id: int, queued: int = 0, skipped: int = 0) -> None:
    """Add to a scan's ``total`` (objects queued) and ``skipped`` counts in one atomic UPDATE.

    Atomic in the database (``total = total + n``), so concurrent producers and archive tasks never lose
    an increment. Callers commit it before queuing the objects it counts.
    """
    session.execute(
        update(Scan)
        .where(Scan.id == scan_id)
        .values(total=Scan.total + queued, skipped=Scan.skipped + skipped)
    )


def lock_scan(session: Session, *, scan_id: int) -> Scan | None:
    """The scan, row-locked until the transaction ends (``SELECT ... FOR UPDATE``; SQLite locks on write).

    Serialises read-then-write bookkeeping on one scan, such as expanding an archive exactly once.
    """
    stmt = select(Scan).where(Scan.id == scan_id).with_for_update()
    return session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()


def mark_scan_running(session: Session, *, scan_id: int) -> None:
    """Move a 'queuing' scan to 'running': its ``total`` is final and it may now complete."""
    session.execute(
        update(Scan)
        .where(Scan.id == scan_id, Scan.status == ScanStatus.QUEUING)
        .values(status=ScanStatus.RUNNING)
    )


def complete_scan_if_done(session: Session, *, scan_id: int) -> bool:
    """Mark a 'running' scan complete when it accounts for at least ``total`` objects. True if this call did.

    One conditional UPDATE: of several callers racing (the last tasks, a waiting producer), exactly one
    sees a row changed. Call it in a transaction of its own, after committing the row just written, so
    that the last writer always counts every row.
    """
    rows = select(func.count()).where(ScanObject.scan_id == scan_id).scalar_subquery()
    stmt = (
        update(Scan)
        .where(Scan.id == scan_id, Scan.status == ScanStatus.RUNNING, Scan.total <= rows)
        .values(status=ScanStatus.COMPLETE, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], session.execute(stmt))
    return bool(result.rowcount)


def active_scan(session: Session, *, uri: str, since: datetime) -> Scan | None:
    """The newest scan of ``uri`` created after ``since`` that is still queuing or running, or None."""
    stmt = (
        select(Scan)
        .where(
            Scan.uri == uri,
            Scan.status.in_((ScanStatus.QUEUING, ScanStatus.RUNNING)),
            Scan.created_at >= since,
        )
        .order_by(Scan.id.desc())
        .limit(1)
    )
    return session.execute(stmt).scalar_one_or_none()


def fail_abandoned_scans(
    session: Session, *, uri: str, kind: str, created_before: datetime, error: str
) -> int:
    """Mark failed, in one UPDATE, the scans of ``uri`` and ``kind`` still 'queuing' that were created before
    ``created_before``: the caller knows their producer cannot still be running. Returns how many."""
    stmt = (
        update(Scan)
        .where(
            Scan.uri == uri,
            Scan.kind == kind,
            Scan.status == ScanStatus.QUEUING,
            Scan.created_at < created_before,
        )
        .values(status=ScanStatus.FAILED, error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], session.execute(stmt)).rowcount)


def _upsert_statement(
    session: Session, table: type[Result | ScanObject]
) -> postgresql.Insert | sqlite.Insert:
    """The dialect's ``insert`` that knows ``ON CONFLICT`` (PostgreSQL and SQLite share the syntax)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upsert_result supports PostgreSQL and SQLite, not {dialect}")


def scan_has_object(session: Session, *, scan_id: int, uri: str) -> bool:
    """Whether scan ``scan_id`` has already accounted for ``uri`` (a row was written for it in this scan)."""
    stmt = select(ScanObject.uri).where(ScanObject.scan_id == scan_id, ScanObject.uri == uri)
    return session.execute(stmt).first() is not None


def _link_to_scan(session: Session, *, scan_id: int, uri: str) -> None:
    """Record that scan ``scan_id`` accounted for ``uri``; a second call for the pair changes nothing."""
    stmt = _upsert_statement(session, ScanObject).values(scan_id=scan_id, uri=uri, recorded_at=utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=[ScanObject.scan_id, ScanObject.uri]))


def upsert_result(
    session: Session, *, uri: str, fields: dict[str, Any], frames: list[dict[str, Any]] | None = None
) -> Result:
    """Write the verdict for ``uri``: insert its row, or replace the one already there.

    The row is replaced wholesale: columns missing from ``fields`` go back to NULL (``details`` to ``{}``)
    so a stale score or reason never survives a re-analysis; ``created_at`` is kept. ``frames`` (dicts of
    FrameResult columns: second, t_s, n_faces, ...) replace the previous per-second rows; None means none.
    Safe to run twice and under concurrent writers: a single ``INSERT ... ON CONFLICT (uri) DO UPDATE``,
    whose row lock serialises the frame replacement too. A ``scan_id`` in ``fields`` also links the object
    to that scan (``ScanObject``), which is what the scan's completion counts. Raises ``ValueError`` for
    unknown columns.
    """
    unknown = set(fields) - VERDICT_COLUMNS
    if unknown:
        raise ValueError(f"not settable through upsert_result: {sorted(unknown)}")
    now = utcnow()
    values: dict[str, Any] = {column: None for column in VERDICT_COLUMNS}
    values.update(details={}, media_type="unknown")
    values.update(fields)
    values.update(updated_at=now)

    stmt = _upsert_statement(session, Result).values(uri=uri, created_at=now, **values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Result.uri], set_={column: stmt.excluded[column] for column in values}
    )
    result_id: int = session.execute(stmt.returning(Result.id)).scalar_one()

    session.execute(delete(FrameResult).where(FrameResult.result_id == result_id))
    if frames:
        session.execute(insert(FrameResult), [{**frame, "result_id": result_id} for frame in frames])
    if values["scan_id"] is not None:
        _link_to_scan(session, scan_id=values["scan_id"], uri=uri)
    # populate_existing: a Result of this id already in the session must show what was just written.
    return session.get_one(Result, result_id, populate_existing=True)


def find_result(session: Session, *, uri: str) -> Result | None:
    """The current row for ``uri``, or None."""
    return session.execute(select(Result).where(Result.uri == uri)).scalar_one_or_none()


def find_upload(session: Session, *, job_id: str) -> Result | None:
    """The row of ``deepscan serve``'s upload job ``job_id`` (uri ``upload://JOB/NAME``), or None."""
    stmt = select(Result).where(Result.uri.startswith(f"upload://{job_id}/", autoescape=True))
    return session.execute(stmt.limit(1)).scalar_one_or_none()


def already_analysed(
    session: Session,
    *,
    uri: str,
    etag: str | None = None,
    content_sha256: str | None = None,
    model_version: str,
) -> bool:
    """Whether ``uri`` has a verdict worth keeping: same content (etag or sha256) and same model version.

    Rows with status 'error' (a failure of ours, not of the media) are never worth keeping. Without an
    etag or a digest there is no way to tell the content is unchanged, so the answer is False.
    """
    same_content: list[ColumnElement[bool]] = []
    if etag is not None:
        same_content.append(Result.etag == etag)
    if content_sha256 is not None:
        same_content.append(Result.content_sha256 == content_sha256)
    if not same_content:
        return False
    stmt = select(Result.id).where(
        Result.uri == uri,
        Result.status != ResultStatus.ERROR,
        Result.model_version == model_version,
        or_(*same_content),
    )
    return session.execute(stmt.limit(1)).first() is not None


def list_results(
    session: Session,
    *,
    scan_id: int | None = None,
    label: str | None = None,
    status: str | None = None,
    min_probability: float | None = None,
    provenance: str | None = None,
    after_id: int | None = None,
    limit: int | None = None,
) -> list[Result]:
    """Rows matching every filter given, in id order; ``min_probability`` bounds ``fake_probability``;
    ``provenance`` is the summary of what a file says of its origin (ai, camera, none: rows whose
    provenance was read and found nothing; rows never read have none).

    ``after_id`` keeps rows whose id is greater (a page cursor: the last id of the previous page).
    """
    stmt = select(Result).order_by(Result.id)
    if after_id is not None:
        stmt = stmt.where(Result.id > after_id)
    if scan_id is not None:  # every object the scan accounted for, whichever scan wrote its row last
        stmt = stmt.where(Result.uri.in_(select(ScanObject.uri).where(ScanObject.scan_id == scan_id)))
    if label is not None:
        stmt = stmt.where(Result.label == label)
    if status is not None:
        stmt = stmt.where(Result.status == status)
    if min_probability is not None:
        stmt = stmt.where(Result.fake_probability >= min_probability)
    if provenance is not None:
        stmt = stmt.where(Result.provenance == provenance)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.execute(stmt).scalars())


def scan_counts(session: Session, *, scan_id: int | None = None) -> list[dict[str, Any]]:
    """Progress of every run (or only of ``scan_id``), in id order.

    Each dict has id, uri, kind, status, created_at, finished_at, total (objects queued), skipped (listed
    but already analysed), done (objects the scan accounted for), and of their current rows ok, fake, real,
    expanded (archives: their members have rows of their own) and errors (every other status).
    """

    def count_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count(case((condition, 1)))

    stmt = (
        select(
            Scan.id,
            Scan.uri,
            Scan.kind,
            Scan.status,
            Scan.created_at,
            Scan.finished_at,
            Scan.total,
            Scan.skipped,
            func.count(ScanObject.uri).label("done"),
            count_where(Result.status == ResultStatus.OK).label("ok"),
            count_where(Result.label == "fake").label("fake"),
            count_where(Result.label == "real").label("real"),
            count_where(Result.status == ResultStatus.EXPANDED).label("expanded"),
            count_where(Result.status.not_in((ResultStatus.OK, ResultStatus.EXPANDED))).label("errors"),
        )
        .outerjoin(ScanObject, ScanObject.scan_id == Scan.id)
        .outerjoin(Result, Result.uri == ScanObject.uri)
        .group_by(Scan.id)
        .order_by(Scan.id)
    )
    if scan_id is not None:
        stmt = stmt.where(Scan.id == scan_id)
    return [dict(row._mapping) for row in session.execute(stmt)]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def result_to_dict(result: Result) -> dict[str, Any]:
    """A stored row in the JSON shape of a fresh result (``MediaResult.to_dict``: what ``deepscan detect``
    prints), plus the row's storage columns: id, uri, scan_id, bucket, key, etag, content_sha256,
    size_bytes, model_name, model_version and ISO 8601 ``created_at`` / ``updated_at``.

    ``faces``, ``audio``, ``provenance`` and ``path`` come back out of ``details``; ``timeline`` is the
    per-second rows.
    """
    details = dict(result.details or {})
    has_confidence = result.confidence_real is not None or result.confidence_fake is not None
    model = f"{result.model_name}@{result.model_version}" if result.model_name else None
    return {
        "path": details.pop("path", None) or result.uri,
        "media_type": result.media_type,
        "status": result.status,
        "reason": result.reason,
        "label": result.label,
        "fake_probability": result.fake_probability,
        "confidence": (
            {"real": result.confidence_real, "fake": result.confidence_fake} if has_confidence else None
        ),
        "model": model,
        "faces": details.pop("faces", None) or [],
        "timeline": [
            {
                "second": frame.second,
                "t_s": frame.t_s,
                "n_faces": frame.n_faces,
                "fake_probability": frame.fake_probability,
                "label": frame.label,
                "faces": (frame.details or {}).get("faces", []),
            }
            for frame in result.frames
        ],
        "audio": details.pop("audio", None),
        "provenance": details.pop("provenance", None),
        "details": details,
        "elapsed_s": result.elapsed_s,
        "id": result.id,
        "uri": result.uri,
        "scan_id": result.scan_id,
        "bucket": result.bucket,
        "key": result.key,
        "etag": result.etag,
        "content_sha256": result.content_sha256,
        "size_bytes": result.size_bytes,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "created_at": _iso(result.created_at),
        "updated_at": _iso(result.updated_at),
    }
