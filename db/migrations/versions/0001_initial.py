"""Initial schema: scans, results (one row per object URI) and per-second frame_results.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
    )
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=True),
        sa.Column("bucket", sa.String(length=255), nullable=True),
        sa.Column("key", sa.String(length=1024), nullable=True),
        sa.Column("etag", sa.String(length=128), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("media_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("label", sa.String(length=16), nullable=True),
        sa.Column("fake_probability", sa.Float(), nullable=True),
        sa.Column("confidence_real", sa.Float(), nullable=True),
        sa.Column("confidence_fake", sa.Float(), nullable=True),
        sa.Column("model_name", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("elapsed_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_results_scan_id_scans"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("uri", name=op.f("uq_results_uri")),
    )
    op.create_index(op.f("ix_results_content_sha256"), "results", ["content_sha256"])
    op.create_index(op.f("ix_results_model_version"), "results", ["model_version"])
    op.create_index(op.f("ix_results_scan_id"), "results", ["scan_id"])
    op.create_index(op.f("ix_results_status"), "results", ["status"])
    op.create_table(
        "frame_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("second", sa.Integer(), nullable=False),
        sa.Column("t_s", sa.Float(), nullable=False),
        sa.Column("n_faces", sa.Integer(), nullable=False),
        sa.Column("fake_probability", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=16), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["results.id"],
            name=op.f("fk_frame_results_result_id_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_frame_results")),
        sa.UniqueConstraint("result_id", "second", name=op.f("uq_frame_results_result_id_second")),
    )
    op.create_index(op.f("ix_frame_results_result_id"), "frame_results", ["result_id"])


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it, on every backend.
    op.drop_table("frame_results")
    op.drop_table("results")
    op.drop_table("scans")
