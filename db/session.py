"""Engines, sessions and migrations.

One engine per process (``make_engine``), sessions from ``session_factory``, units of work in
``session_scope``. The schema is created and changed only by Alembic, through ``migrate``.
"""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30  # how long a writer waits for another writer's lock before "database is locked"
# The PostgreSQL advisory lock that serialises migrations: one per database, whatever the schema, so two
# deepscan databases on one server (or two test schemas) migrate one after the other, never together.
MIGRATION_LOCK_KEY = zlib.crc32(b"deepscan.db.migrate")


def normalise_url(url: str) -> str:
    """Return ``url`` with bare ``postgresql://`` (or ``postgres://``) mapped to the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """Create the engine for ``url``.

    SQLite: foreign keys on (needed for ON DELETE CASCADE), a 30 s busy timeout, and WAL journaling for
    file databases so a reader and a writer do not block each other. PostgreSQL: connections are pinged
    before use, so a restarted server costs no failed task.
    """
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite":
        if parsed.get_backend_name() == "postgresql":
            return create_engine(parsed, pool_pre_ping=True)
        return create_engine(parsed)

    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    file_database = parsed.database not in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            if file_database:
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    return engine


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` for ``url`` whose script location is this package's ``migrations``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': escape it (percent-encoded passwords, query options).
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (``alembic upgrade head``); a no-op when current.

    Safe to run from several processes at once (workers and a producer starting on a fresh database):
    the migration environment holds ``migration_lock`` while it reads the revision and upgrades, so the
    first process migrates and the others then find the schema at head.
    """
    command.upgrade(alembic_config(url), "head")


@contextmanager
def sqlite_migration_lock(url: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<database>.migrate.lock`` for a SQLite file database (nothing for
    ``:memory:``, which no other process can see).

    SQLite's own locks do not help: Alembic reads the revision and creates tables in separate
    statements, and pysqlite does not run DDL inside the transaction that read it.
    """
    database = make_url(normalise_url(url)).database
    if database in (None, "", ":memory:"):
        yield
        return
    lock_path = Path(f"{database}.migrate.lock")
    with lock_path.open("a") as lock_file:  # the file stays: deleting it would let two holders coexist
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def lock_postgresql_migrations(connection: Connection) -> None:
    """Take the migration advisory lock in ``connection``'s transaction; it is released at commit or
    rollback, after the new revision is visible to the next holder."""
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``; objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a transaction: committed when the block ends, rolled back if it raises, then closed."""
    with factory.begin() as session:
        yield session
