"""Every way a result row is written: the one mapping from a ``MediaResult`` to the results table.

The embedded path (``deepscan detect``) and the Celery tasks call the same functions. Every write is an
upsert on the object's URI (idempotent: a redelivered task leaves one row), and is followed by a check
whether the object was its scan's last.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.session import session_scope
from pipeline.analyze import MediaResult
from pipeline.errors import DeepscanError, ResultStatus
from workers import metrics, resources, writeback
from workers.archives import ArchiveListing
from workers.storage import ObjectRef

logger = logging.getLogger(__name__)

ModelIdentity = tuple[str, str]  # (pack name, pack version), as the row records them


def row_fields(result: MediaResult, *, model: ModelIdentity) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Columns of the results row and its per-second frame rows for one ``MediaResult``.

    ``db.queries.result_to_dict`` reads them back into the shape of ``MediaResult.to_dict``.
    """
    fresh = result.to_dict()
    details = {
        **result.details,
        "path": result.path,
        "faces": fresh["faces"],
        "audio": fresh["audio"],
        "provenance": fresh["provenance"],
    }
    provenance = result.provenance
    name, version = model
    fields = {
        "media_type": result.media_type,
        "status": ResultStatus(result.status).value,
        "reason": result.reason,
        "label": result.label,
        "fake_probability": result.fake_probability,
        "confidence_real": result.confidence["real"] if result.confidence else None,
        "confidence_fake": result.confidence["fake"] if result.confidence else None,
        "model_name": name,
        "model_version": version,
        "provenance": provenance.summary.value if provenance is not None else None,
        "provenance_credentials": provenance.credentials.value if provenance is not None else None,
        "details": details,
        "elapsed_s": result.elapsed_s,
    }
    frames = [
        {
            "second": entry.second,
            "t_s": entry.t_s,
            "n_faces": entry.n_faces,
            "fake_probability": entry.fake_probability,
            "label": entry.label,
            "details": {"faces": entry.faces},
        }
        for entry in result.timeline
    ]
    return fields, frames


def _upsert(
    session: Session,
    ref: ObjectRef,
    scan_id: int | None,
    result: MediaResult,
    *,
    content_sha256: str | None,
    model: ModelIdentity,
) -> None:
    fields, frames = row_fields(result, model=model)
    fields.update(scan_id=scan_id, **ref.row_extra(content_sha256=content_sha256))
    queries.upsert_result(session, uri=ref.result_uri, fields=fields, frames=frames)


def write_row(
    ref: ObjectRef,
    scan_id: int | None,
    result: MediaResult,
    *,
    content_sha256: str | None = None,
    sessions: sessionmaker[Session] | None = None,
    model: ModelIdentity | None = None,
) -> None:
    """Upsert the row of ``ref`` (idempotent), count it, write the verdict back to the bucket when that is
    configured (``workers.writeback``), then complete the scan if this was its last object.

    ``sessions`` and ``model`` default to this process's database and configured pack.
    """
    sessions = sessions or resources.process_sessions()
    model = model or resources.model_identity()
    result.model = "@".join(model)
    with session_scope(sessions) as session:
        _upsert(session, ref, scan_id, result, content_sha256=content_sha256, model=model)
    metrics.count_row(status=ResultStatus(result.status).value, label=result.label)
    writeback.write_back(ref, result)
    complete_if_done(scan_id, sessions=sessions)


def write_failure(
    ref: ObjectRef, scan_id: int | None, error: BaseException, *, media_type: str = "unknown"
) -> None:
    """The row of an object whose analysis failed for good: status and reason, no verdict."""
    result = MediaResult(path=ref.result_uri, media_type=media_type)
    if isinstance(error, DeepscanError):
        result.fail(error)
    else:
        result.fail(DeepscanError(f"{type(error).__name__}: {error}"))
    write_row(ref, scan_id, result)


def complete_if_done(scan_id: int | None, *, sessions: sessionmaker[Session] | None = None) -> None:
    """Mark the scan complete if every object has its row; in a transaction of its own (see queries)."""
    if scan_id is None:
        return
    with session_scope(sessions or resources.process_sessions()) as session:
        if queries.complete_scan_if_done(session, scan_id=scan_id):
            logger.info("scan %d is complete", scan_id)


def record_expansion(
    ref: ObjectRef, scan_id: int | None, listing: ArchiveListing, *, content_sha256: str | None
) -> None:
    """Give an expanded archive its row (status 'expanded') and count its members into the scan, once.

    Under the scan's row lock: a redelivered ``expand_archive`` finds the row it wrote for this scan and
    this version, and adds nothing, so the scan's ``total`` stays exact.
    """
    model = resources.model_identity()
    n = len(listing.members)
    result = MediaResult(
        path=ref.result_uri,
        media_type="archive",
        status=ResultStatus.EXPANDED,
        reason=f"a {listing.kind} archive of {n} members, each with a row of its own",
        model="@".join(model),
    )
    result.details["archive"] = {
        "kind": listing.kind,
        "members": n,
        "total_bytes": listing.total_bytes,
        "rejected": [{"name": raw, "reason": why} for raw, why in listing.rejected],
    }
    with session_scope(resources.process_sessions()) as session:
        if scan_id is not None:
            queries.lock_scan(session, scan_id=scan_id)
        current = queries.find_result(session, uri=ref.result_uri)
        counted = (
            current is not None
            and scan_id is not None
            and queries.scan_has_object(session, scan_id=scan_id, uri=ref.result_uri)
            and current.status == ResultStatus.EXPANDED
            and (current.etag, current.content_sha256) == (ref.etag, content_sha256)
        )
        _upsert(session, ref, scan_id, result, content_sha256=content_sha256, model=model)
        if scan_id is not None and not counted:
            queries.add_to_scan(session, scan_id=scan_id, queued=n)
