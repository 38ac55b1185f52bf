"""Migrations started at once by several processes (workers and a producer on a fresh database): every
process exits cleanly and the schema ends at head, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from db.session import alembic_config, make_engine
from tests.conftest import REPO

pytestmark = pytest.mark.slow

PROCESSES = 4
# Each process imports Alembic and SQLAlchemy (seconds on a loaded machine), then sleeps until this long
# after the test started them, so that their migrations really begin together.
START_DELAY_S = 10.0
MIGRATE_TIMEOUT_S = 120
RACE = (
    "import sys, time\n"
    "from db.session import migrate\n"
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
    "migrate(sys.argv[1])\n"
)


def test_concurrent_migrations_on_a_fresh_database_all_succeed(db_url: str) -> None:
    start_at = time.time() + START_DELAY_S
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, db_url, repr(start_at)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    outputs = [process.communicate(timeout=MIGRATE_TIMEOUT_S)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * PROCESSES, "\n".join(outputs)[-4000:]

    engine = make_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"scans", "results", "frame_results", "alembic_version"} <= tables
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
        assert revision == ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    finally:
        engine.dispose()
