"""The embedded default: no broker, everything in this process, results in the configured database.

``deepscan detect`` uses it, for local files and ``s3://`` objects. It writes rows through
``workers.rows``, as the Celery tasks do. (``deepscan scan`` without a broker runs the tasks themselves
in process: see ``workers.celery_app``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ScanKind, ScanStatus
from db.session import session_scope
from pipeline.analyze import Analyzer, MediaResult
from pipeline.errors import DeepscanError
from pipeline.faces import FaceDetector
from pipeline.media import sha256_file
from workers import resources, rows
from workers.resources import detector_options, load_pack, open_sessions, provenance_options
from workers.settings import get_settings
from workers.storage import ObjectRef


@dataclass
class EmbeddedRunner:
    analyzer: Analyzer
    sessions: sessionmaker[Session]

    @classmethod
    def create(cls, *, models: str | Path | None = None, database_url: str | None = None) -> EmbeddedRunner:
        analyzer = Analyzer(
            load_pack(models),
            FaceDetector(detector_options()),
            score_soundtrack=get_settings().score_soundtrack,
            provenance=provenance_options(),
        )
        return cls(analyzer, open_sessions(database_url))

    @property
    def model(self) -> rows.ModelIdentity:
        manifest = self.analyzer.pack.manifest
        return manifest.name, manifest.version

    @contextmanager
    def scan(self, *, uri: str, kind: ScanKind, total: int) -> Iterator[ScanSession]:
        name, version = self.model
        with session_scope(self.sessions) as session:
            scan_id = queries.create_scan(
                session, uri=uri, kind=kind, model_name=name, model_version=version, total=total
            ).id
        status, error = ScanStatus.COMPLETE, None
        try:
            yield ScanSession(self, scan_id)
        except BaseException as e:
            status, error = ScanStatus.FAILED, f"{type(e).__name__}: {e}"
            raise
        finally:
            with session_scope(self.sessions) as session:
                queries.finish_scan(session, scan_id=scan_id, status=status, error=error)


@dataclass
class ScanSession:
    runner: EmbeddedRunner
    scan_id: int

    def analyze(self, path: Path) -> dict[str, Any]:
        """Analyse one local file, upsert its row, and return the result as a JSON-ready dict."""
        ref = ObjectRef.for_local_file(path)
        return self._write(ref, self.runner.analyzer.analyze_file(path), content_sha256=ref.sha256)

    def analyze_object(self, ref: ObjectRef) -> dict[str, Any]:
        """Fetch an S3 object (the ETag it was listed with), analyse it, upsert its row; as ``analyze``."""
        try:
            path = resources.local_copies().path(ref)
        except DeepscanError as e:
            return self._write(ref, MediaResult(path=ref.uri).fail(e), content_sha256=None)
        result = self.runner.analyzer.analyze_file(path)
        result.path = ref.uri
        return self._write(ref, result, content_sha256=sha256_file(path))

    def _write(self, ref: ObjectRef, result: MediaResult, *, content_sha256: str | None) -> dict[str, Any]:
        rows.write_row(
            ref,
            self.scan_id,
            result,
            content_sha256=content_sha256,
            sessions=self.runner.sessions,
            model=self.runner.model,
        )
        return result.to_dict()
