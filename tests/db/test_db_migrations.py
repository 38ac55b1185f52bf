"""Migrations: upgrade creates the schema, is idempotent, downgrades cleanly and matches the models."""

from __future__ import annotations

from datetime import datetime, timezone

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from db.models import Base
from db.session import alembic_config, make_engine, migrate

TABLES = {"scans", "results", "frame_results", "scan_objects"}


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_migrate_creates_tables_and_is_idempotent(db_url: str) -> None:
    migrate(db_url)
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        assert TABLES | {"alembic_version"} <= set(inspect(engine).get_table_names())
        assert _revision(engine) == ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    finally:
        engine.dispose()


def test_downgrade_to_base_drops_everything(db_url: str) -> None:
    migrate(db_url)
    command.downgrade(alembic_config(db_url), "base")
    engine = make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        assert _revision(engine) is None
    finally:
        engine.dispose()
    migrate(db_url)  # and back up again


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diffs == []


def test_rows_from_before_provenance_keep_a_null_provenance(db_url: str) -> None:
    config = alembic_config(db_url)
    command.upgrade(config, "0002")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO results (uri, media_type, status, details, created_at, updated_at) "
                    "VALUES ('file:///old.jpg', 'image', 'ok', '{}', :now, :now)"
                ),
                {"now": datetime.now(timezone.utc)},
            )
        migrate(db_url)
        with engine.connect() as connection:
            row = connection.execute(text("SELECT provenance, provenance_credentials FROM results")).one()
        assert tuple(row) == (None, None)
        assert "ix_results_provenance" in {i["name"] for i in inspect(engine).get_indexes("results")}
        command.downgrade(config, "0002")
        assert "provenance" not in {c["name"] for c in inspect(engine).get_columns("results")}
    finally:
        engine.dispose()
    migrate(db_url)


def test_rows_from_before_scan_objects_link_to_the_scan_that_wrote_them(db_url: str) -> None:
    config = alembic_config(db_url)
    command.upgrade(config, "0003")
    engine = make_engine(db_url)
    now = {"now": datetime.now(timezone.utc)}
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO scans (uri, kind, status, model_name, model_version, total, created_at) "
                    "VALUES ('s3://media/', 'scan', 'running', 'm', 'v1', 2, :now)"
                ),
                now,
            )
            scan_id = connection.execute(text("SELECT id FROM scans")).scalar_one()
            for uri, scan in (("s3://media/a.jpg", scan_id), ("s3://media/b.jpg", None)):
                connection.execute(
                    text(
                        "INSERT INTO results (uri, scan_id, media_type, status, details, created_at, "
                        "updated_at) VALUES (:uri, :scan, 'image', 'ok', '{}', :now, :now)"
                    ),
                    {"uri": uri, "scan": scan, **now},
                )
        migrate(db_url)
        with engine.connect() as connection:
            links = connection.execute(text("SELECT scan_id, uri FROM scan_objects")).all()
        assert [tuple(link) for link in links] == [(scan_id, "s3://media/a.jpg")]
        command.downgrade(config, "0003")
        assert "scan_objects" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    migrate(db_url)
