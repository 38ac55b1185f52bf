"""The embedded default: no broker, everything in this process, results in the configured database.

``deepscan detect`` uses it. It writes rows through ``workers.rows``, as the Celery tasks do.
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
from pipeline.analyze import Analyzer
from workers import rows
from workers.resources import load_pack, open_sessions, provenance_options
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
        result = self.runner.analyzer.analyze_file(path)
        ref = ObjectRef.for_local_file(path)
        rows.write_row(
            ref,
            self.scan_id,
            result,
            content_sha256=ref.sha256,
            sessions=self.runner.sessions,
            model=self.runner.model,
        )
        return result.to_dict()
