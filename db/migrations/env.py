"""Alembic environment for deepscan.

The URL comes from ``-x url=...``, else the ``sqlalchemy.url`` main option (set by ``db.session.migrate``),
else ``DEEPSCAN_DATABASE_URL``, else ``sqlite:///deepscan.db``.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from sqlalchemy import create_engine, pool

from db import models
from db.session import (
    SQLITE_BUSY_TIMEOUT_S,
    lock_postgresql_migrations,
    normalise_url,
    sqlite_migration_lock,
)

config = context.config
# Only the alembic CLI has an ini file with logging sections; programmatic runs keep the app's logging.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = models.Base.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render ``UTCDateTime`` as the plain column type, so migrations do not import the models."""
    if type_ == "type" and isinstance(obj, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def database_url() -> str:
    """The URL to migrate, in the order of precedence given in the module docstring."""
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("DEEPSCAN_DATABASE_URL")
        or "sqlite:///deepscan.db"
    )
    return normalise_url(url)


def run_migrations_offline() -> None:
    """Emit the SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations over a connection of their own, one process at a time.

    Several processes may start on a fresh database together: each reads the current revision only once
    it holds the migration lock (a file lock on SQLite, an advisory lock in the migration transaction on
    PostgreSQL), so whoever comes second finds the first one's tables and has nothing to do.
    """
    url = database_url()
    sqlite = url.startswith("sqlite")
    # A plain engine, not make_engine: SQLite batch migrations recreate tables, and with foreign keys on,
    # dropping the old parent table would cascade-delete the child rows.
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S} if sqlite else {}
    engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        with sqlite_migration_lock(url) if sqlite else nullcontext(), engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                render_item=render_item,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    lock_postgresql_migrations(connection)
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
