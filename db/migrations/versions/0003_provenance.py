"""Results record what a file says of its origin: the provenance summary and the C2PA credential state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table beyond adding a column; batch is a plain ALTER elsewhere.
    # NULL for the rows already there: their provenance was never read.
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("provenance", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("provenance_credentials", sa.String(length=16), nullable=True))
        batch.create_index("ix_results_provenance", ["provenance"])


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_index("ix_results_provenance")
        batch.drop_column("provenance_credentials")
        batch.drop_column("provenance")
