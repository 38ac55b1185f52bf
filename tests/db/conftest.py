"""Fixtures for the db tests: every test runs once on SQLite and once on PostgreSQL.

PostgreSQL is the server at ``DEEPSCAN_TEST_POSTGRES_URL`` (default: the local ``test`` database); each
test gets a schema of its own, dropped afterwards, so runs are repeatable and never see each other's
rows. A missing server is a skip locally and a failure in CI.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, migrate, session_factory


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed by the test (or rolled back when it leaves it uncommitted)."""
    with factory() as session:
        yield session
