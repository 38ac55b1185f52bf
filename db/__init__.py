"""Results store for deepscan: SQLAlchemy models, Alembic migrations, engine setup and query functions.

Works on SQLite (a file next to a CLI run) and PostgreSQL (the batch workers). The schema changes only
through the migrations in ``db/migrations``; ``db.session.migrate`` applies them.
"""
