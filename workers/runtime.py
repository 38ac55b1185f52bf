"""What a worker process holds on to between tasks, and the one way tasks write a result row.

Each prefork child builds these lazily, after the fork (an engine or a TensorFlow runtime must never cross
a fork): the analyzer with its loaded models (once per process, keyed by the pack directory), a
verdict-only analyzer for the light queue (thresholds, no models), the database session factory, and
the cache of fetched objects.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.session import make_engine, session_factory, session_scope
from pipeline.analyze import Analyzer, MediaResult
from pipeline.errors import DeepscanError
from pipeline.pack import ModelPack, read_manifest
from workers.archives import ArchiveListing
from workers.settings import get_settings
from workers.storage import LocalCopies, ObjectRef
from workers.store import save_result

logger = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _analyzer(models_dir: Path, score_soundtrack: bool) -> Analyzer:
    logger.info("loading the model pack in %s", models_dir)
    return Analyzer(ModelPack.load(models_dir), score_soundtrack=score_soundtrack)


def analyzer() -> Analyzer:
    """The analyzer of this process, its models loaded on first use (inference tasks)."""
    settings = get_settings()
    return _analyzer(settings.models_dir, settings.score_soundtrack)


@lru_cache(maxsize=2)
def _verdict_analyzer(models_dir: Path) -> Analyzer:
    return Analyzer(ModelPack(models_dir, read_manifest(models_dir), {}))


def verdict_analyzer() -> Analyzer:
    """An analyzer with the pack's manifest only: enough for ``video_verdict``, no model in memory.

    A worker that already loaded the models uses those.
    """
    settings = get_settings()
    if _analyzer.cache_info().currsize:
        return analyzer()
    return _verdict_analyzer(settings.models_dir)


@lru_cache(maxsize=2)
def _sessions(database_url: str) -> sessionmaker[Session]:
    return session_factory(make_engine(database_url))


def process_sessions() -> sessionmaker[Session]:
    """The session factory of this process. The schema is migrated by ``deepscan worker`` / ``scan``."""
    return _sessions(get_settings().database_url)


@lru_cache(maxsize=1)
def local_copies() -> LocalCopies:
    return LocalCopies(endpoint_url=get_settings().s3_endpoint_url)


@lru_cache(maxsize=2)
def _identity(models_dir: Path) -> tuple[str, str]:
    manifest = read_manifest(models_dir)
    return manifest.name, manifest.version


def model_identity() -> tuple[str, str]:
    """(name, version) of the configured pack, read from its manifest once per process."""
    return _identity(get_settings().models_dir)


def _save(
    session: Session, ref: ObjectRef, scan_id: int | None, result: MediaResult, content_sha256: str | None
) -> None:
    """Upsert the row of ``ref`` under the configured pack's name and version."""
    name, version = model_identity()
    save_result(
        session,
        result,
        uri=ref.result_uri,
        scan_id=scan_id,
        model_name=name,
        model_version=version,
        extra=ref.row_extra(content_sha256=content_sha256),
    )


def write_row(
    ref: ObjectRef, scan_id: int | None, result: MediaResult, *, content_sha256: str | None = None
) -> None:
    """Upsert the row of ``ref`` (idempotent), then complete the scan if this was its last object."""
    name, version = model_identity()
    result.path = ref.result_uri
    result.model = f"{name}@{version}"
    with session_scope(process_sessions()) as session:
        _save(session, ref, scan_id, result, content_sha256)
    complete_if_done(scan_id)


def complete_if_done(scan_id: int | None, *, sessions: sessionmaker[Session] | None = None) -> None:
    """Mark the scan complete if every object has its row; in a transaction of its own (see queries)."""
    if scan_id is None:
        return
    with session_scope(sessions or process_sessions()) as session:
        if queries.complete_scan_if_done(session, scan_id=scan_id):
            logger.info("scan %d is complete", scan_id)


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


def record_expansion(
    ref: ObjectRef, scan_id: int | None, listing: ArchiveListing, *, content_sha256: str | None
) -> None:
    """Give an expanded archive its row (status 'expanded') and count its members into the scan, once.

    Under the scan's row lock: a redelivered ``expand_archive`` finds the row it wrote for this scan and
    this version, and adds nothing, so the scan's ``total`` stays exact.
    """
    name, version = model_identity()
    n = len(listing.members)
    result = MediaResult(
        path=ref.result_uri,
        media_type="archive",
        status="expanded",
        reason=f"a {listing.kind} archive of {n} members, each with a row of its own",
        model=f"{name}@{version}",
    )
    result.details["archive"] = {
        "kind": listing.kind,
        "members": n,
        "total_bytes": listing.total_bytes,
        "rejected": [{"name": raw, "reason": why} for raw, why in listing.rejected],
    }
    with session_scope(process_sessions()) as session:
        if scan_id is not None:
            queries.lock_scan(session, scan_id=scan_id)
        current = queries.find_result(session, uri=ref.result_uri)
        counted = (
            current is not None
            and current.scan_id == scan_id
            and current.status == "expanded"
            and (current.etag, current.content_sha256) == (ref.etag, content_sha256)
        )
        _save(session, ref, scan_id, result, content_sha256)
        if scan_id is not None and not counted:
            queries.add_to_scan(session, scan_id=scan_id, queued=n)
