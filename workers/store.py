"""Writing pipeline results to the results table: the one mapping from ``MediaResult`` to a row."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import queries
from pipeline.analyze import MediaResult


def file_uri(path: str | Path) -> str:
    return Path(path).resolve().as_uri()


def sha256_of(path: str | Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def row_fields(
    result: MediaResult, *, model_name: str, model_version: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Columns of the results row and its per-second frame rows for one ``MediaResult``."""
    details = {
        **result.details,
        "path": result.path,
        "faces": result.faces,
        "audio": result.audio,
    }
    fields = {
        "media_type": result.media_type,
        "status": result.status,
        "reason": result.reason,
        "label": result.label,
        "fake_probability": result.fake_probability,
        "confidence_real": result.confidence["real"] if result.confidence else None,
        "confidence_fake": result.confidence["fake"] if result.confidence else None,
        "model_name": model_name,
        "model_version": model_version,
        "details": details,
        "elapsed_s": result.elapsed_s,
    }
    frames = [
        {
            "second": entry["second"],
            "t_s": entry["t_s"],
            "n_faces": entry["n_faces"],
            "fake_probability": entry["fake_probability"],
            "label": entry["label"],
            "details": {"faces": entry["faces"]},
        }
        for entry in result.timeline
    ]
    return fields, frames


def save_result(
    session: Session,
    result: MediaResult,
    *,
    uri: str,
    scan_id: int | None,
    model_name: str,
    model_version: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Upsert the one current row for ``uri`` (idempotent: running it twice leaves one row)."""
    fields, frames = row_fields(result, model_name=model_name, model_version=model_version)
    fields.update(scan_id=scan_id, **(extra or {}))
    queries.upsert_result(session, uri=uri, fields=fields, frames=frames)
