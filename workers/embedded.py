"""The embedded default: no broker, everything in this process, results in the configured database.

``deepscan detect`` uses it; the Celery tasks call the same ``Analyzer`` and ``save_result``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.session import make_engine, migrate, session_factory, session_scope
from pipeline.analyze import Analyzer
from pipeline.errors import ModelPackError
from pipeline.pack import ModelPack
from workers.errors import UsageError
from workers.settings import get_settings
from workers.store import file_uri, save_result, sha256_of


def load_pack(models: str | Path | None = None) -> ModelPack:
    """The pack in ``models`` (default: the configured one); a pack that will not load is a usage error."""
    directory = Path(models) if models else get_settings().models_dir
    try:
        return ModelPack.load(directory)
    except ModelPackError as e:
        raise UsageError(f"cannot load the model pack in {directory}: {e.reason}") from e


def open_sessions(database_url: str | None = None) -> sessionmaker[Session]:
    """Migrate the database to the latest schema and return a session factory for it."""
    url = database_url or get_settings().database_url
    migrate(url)
    return session_factory(make_engine(url))


@contextmanager
def open_database(database_url: str | None = None) -> Iterator[Session]:
    with session_scope(open_sessions(database_url)) as session:
        yield session


@dataclass
class EmbeddedRunner:
    analyzer: Analyzer
    sessions: sessionmaker[Session]

    @classmethod
    def create(cls, *, models: str | Path | None = None, database_url: str | None = None) -> EmbeddedRunner:
        analyzer = Analyzer(load_pack(models), score_soundtrack=get_settings().score_soundtrack)
        return cls(analyzer, open_sessions(database_url))

    @contextmanager
    def scan(self, *, uri: str, kind: str, total: int) -> Iterator[ScanSession]:
        manifest = self.analyzer.pack.manifest
        with session_scope(self.sessions) as session:
            scan_id = queries.create_scan(
                session,
                uri=uri,
                kind=kind,
                model_name=manifest.name,
                model_version=manifest.version,
                total=total,
            ).id
        status, error = "complete", None
        try:
            yield ScanSession(self, scan_id)
        except BaseException as e:
            status, error = "failed", f"{type(e).__name__}: {e}"
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
        manifest = self.runner.analyzer.pack.manifest
        result = self.runner.analyzer.analyze_file(path)
        extra = {
            "content_sha256": sha256_of(path),
            "size_bytes": path.stat().st_size if path.exists() else None,
        }
        with session_scope(self.runner.sessions) as session:
            save_result(
                session,
                result,
                uri=file_uri(path),
                scan_id=self.scan_id,
                model_name=manifest.name,
                model_version=manifest.version,
                extra=extra,
            )
        return result.to_dict()
