"""Declarative models: one ``Scan`` per run, one current ``Result`` per object, ``FrameResult`` per second,
and ``ScanObject`` linking a scan to each object it accounted for.

Portable across SQLite and PostgreSQL: ``sqlalchemy.JSON`` for documents, bounded ``String`` for indexed
columns, and ``UTCDateTime`` so both backends hand back timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so migrations can address them on every backend (SQLite batch mode
# recreates tables and needs names to drop or alter constraints).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

URI_LENGTH = 2048  # S3 keys are at most 1024 bytes; room for the bucket and an archive member path


class ScanStatus(str, Enum):
    """A scan's lifecycle: queuing (the producer is still listing) -> running -> complete, or failed."""

    QUEUING = "queuing"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"

    def __str__(self) -> str:  # the value, on every Python version
        return self.value


class ScanKind(str, Enum):
    """What started a scan: an ad-hoc ``detect``, a ``scan`` of a folder or prefix, a scheduled ``beat``,
    or files uploaded to ``deepscan serve``."""

    DETECT = "detect"
    SCAN = "scan"
    BEAT = "beat"
    UPLOAD = "upload"

    def __str__(self) -> str:
        return self.value


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always stores and returns aware UTC datetimes.

    SQLite keeps no offset and returns naive values; PostgreSQL returns the session's time zone. Naive
    values passed in are taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is Alembic's target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Scan(Base):
    """One run: an ad-hoc ``detect`` (uri 'cli'), a folder or S3 prefix ``scan``, or a scheduled ``beat``."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(String(URI_LENGTH))
    kind: Mapped[str] = mapped_column(String(16))  # a ScanKind
    status: Mapped[str] = mapped_column(String(16), default=ScanStatus.RUNNING.value)  # a ScanStatus
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer, default=0)  # objects queued
    skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # already analysed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)

    results: Mapped[list[Result]] = relationship(back_populates="scan")


class ScanObject(Base):
    """An object a scan accounted for: written with the object's row, once per scan and object.

    A row carries the scan of its last writer; two scans of one prefix at once each count their own
    links, so both complete, and a redelivered task adds no second link.
    """

    __tablename__ = "scan_objects"

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    uri: Mapped[str] = mapped_column(String(URI_LENGTH), primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Result(Base):
    """The current verdict for one object, keyed by its URI.

    ``uri`` is ``file:///abs/path``, ``s3://bucket/key`` or ``s3://bucket/key.zip#member/path``.
    ``status`` is 'ok' or a machine-readable code (no_face, decode_error, ...) with ``reason`` saying why;
    ``fake_probability`` is NULL whenever there is no verdict, never a made-up 0.5.
    """

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(String(URI_LENGTH), unique=True)
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"), index=True)
    bucket: Mapped[str | None] = mapped_column(String(255))
    key: Mapped[str | None] = mapped_column(String(1024))
    etag: Mapped[str | None] = mapped_column(String(128))
    content_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(16), default="unknown")  # image | video | audio | unknown
    status: Mapped[str] = mapped_column(String(32), index=True)  # a pipeline.errors.ResultStatus
    reason: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(16))  # fake | real
    fake_probability: Mapped[float | None] = mapped_column(Float)
    confidence_real: Mapped[float | None] = mapped_column(Float)
    confidence_fake: Mapped[float | None] = mapped_column(Float)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64), index=True)
    # What the file says of its origin (pipeline.provenance): ai | camera | none, NULL when not read; the
    # findings are in details["provenance"]. The credential state: absent, trusted, untrusted, invalid, ...
    provenance: Mapped[str | None] = mapped_column(String(16), index=True)
    provenance_credentials: Mapped[str | None] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    elapsed_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    scan: Mapped[Scan | None] = relationship(back_populates="results")
    # selectin: result_to_dict always wants the frames, also after the session has closed.
    frames: Mapped[list[FrameResult]] = relationship(
        back_populates="result",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="FrameResult.second",
        lazy="selectin",
    )


class FrameResult(Base):
    """Per-second scores of a video: faces found in that second and their aggregated probability."""

    __tablename__ = "frame_results"
    __table_args__ = (UniqueConstraint("result_id", "second"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    second: Mapped[int] = mapped_column(Integer)
    t_s: Mapped[float] = mapped_column(Float)
    n_faces: Mapped[int] = mapped_column(Integer, default=0)
    fake_probability: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    result: Mapped[Result] = relationship(back_populates="frames")
