"""Scans link to the objects they accounted for, so overlapping scans of one prefix each complete.

Rows written before this revision link to the scan that wrote them last, as ``scans`` counted them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scan_objects",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_scan_objects_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("scan_id", "uri", name=op.f("pk_scan_objects")),
    )
    op.execute(
        "INSERT INTO scan_objects (scan_id, uri, recorded_at) "
        "SELECT scan_id, uri, updated_at FROM results WHERE scan_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("scan_objects")
