"""Engine set-up: driver normalisation and the SQLite pragmas."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from db.session import make_engine, normalise_url


def test_postgres_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u:p%40ss@db:5432/x") == "postgresql+psycopg://u:p%40ss@db:5432/x"
    assert normalise_url("postgres://db/x") == "postgresql+psycopg://db/x"
    assert normalise_url("postgresql+psycopg://db/x") == "postgresql+psycopg://db/x"
    assert normalise_url("sqlite:///a.db") == "sqlite:///a.db"


def test_sqlite_file_has_foreign_keys_and_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        engine.dispose()


def test_sqlite_memory_has_foreign_keys() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        engine.dispose()
