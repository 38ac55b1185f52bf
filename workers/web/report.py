"""``deepscan report``: a static HTML triage report of one scan, in a folder that stands on its own.

Rows come sorted for triage: the most suspicious first (P(fake) descending, then the confidence of the
verdict), rows without a verdict last. The first ``MEDIA_ROWS`` get a thumbnail (the frame of the face
that drove the verdict, its box drawn) and, for videos, the P(fake)-per-second plot; the first
``max_explanations`` flagged images (label fake) get a LIME explanation. Media is read where the row says
it is (``file://`` in place, ``s3://`` downloaded once); a row whose media is gone still gets its line.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape

from db import queries
from db.session import session_scope
from pipeline.analyze import Analyzer
from pipeline.errors import DeepscanError
from pipeline.pack import read_manifest
from workers.resources import load_pack, open_sessions
from workers.settings import get_settings
from workers.storage import LocalCopies, ObjectRef
from workers.web.explanations import ExplainTarget, driving_face, frame_at, seconds_of
from workers.web.figures import FAKE_RGB, REAL_RGB, explanation_png, thumbnail_png, timeline_png

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
MEDIA_ROWS = 200  # rows (in triage order) whose media is fetched for a thumbnail and whose plot is drawn
ASSETS = "assets"


@dataclass
class ReportRow:
    """One result row as the template shows it."""

    row: dict[str, Any]
    thumbnail: str | None = None  # path relative to the report folder
    timeline: str | None = None
    explanation: str | None = None
    media_note: str | None = None  # why there is no thumbnail

    @property
    def confidence(self) -> float | None:
        confidence, label = self.row.get("confidence"), self.row.get("label")
        return confidence[label] if confidence and label else None


def triage_key(row: dict[str, Any]) -> tuple[bool, float, float, int]:
    """Most suspicious first: P(fake) descending, then the verdict's confidence; no verdict last."""
    p = row.get("fake_probability")
    confidence = row.get("confidence") or {}
    sure = confidence.get(row.get("label") or "", 0.0) or 0.0
    return (p is None, -(p or 0.0), -sure, row["id"])


def _with_box(frame: np.ndarray, target: ExplainTarget | None, label: str | None) -> np.ndarray:
    if target is None:
        return frame
    out = frame.copy()
    box = target.box
    colour = FAKE_RGB if label == "fake" else REAL_RGB
    thickness = max(2, max(frame.shape[:2]) // 160)
    cv2.rectangle(out, (box.x, box.y), (box.x + box.w, box.y + box.h), colour, thickness)
    return out


class _Explainer:
    """The pack, loaded on the first explanation a report needs."""

    def __init__(self, models: str | Path | None, samples: int) -> None:
        self.models, self.samples = models, samples
        self._analyzer: Analyzer | None = None

    def png(self, frame: np.ndarray, target: ExplainTarget, threshold: float) -> bytes:
        if self._analyzer is None:
            self._analyzer = Analyzer(load_pack(self.models), score_soundtrack=False)
        explanation = self._analyzer.explain_face(frame, target.box, num_samples=self.samples)
        return explanation_png(explanation, threshold=threshold)


def write_report(
    scan_id: int,
    out: Path,
    *,
    database_url: str | None = None,
    models: str | Path | None = None,
    max_explanations: int = 20,
    explain_samples: int | None = None,
) -> dict[str, Any]:
    """Write ``out/index.html`` and its figures under ``out/assets`` for scan ``scan_id``.

    Returns a summary (paths and counts). Raises ``LookupError`` when there is no such scan.
    """
    settings = get_settings()
    with session_scope(open_sessions(database_url)) as session:
        scans = queries.scan_counts(session, scan_id=scan_id)
        if not scans:
            raise LookupError(f"there is no scan {scan_id}")
        rows = [queries.result_to_dict(r) for r in queries.list_results(session, scan_id=scan_id)]
    rows.sort(key=triage_key)
    threshold = read_manifest(models or settings.models_dir).threshold("image")
    assets = out / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    explainer = _Explainer(models, explain_samples or settings.explain_samples)
    copies = LocalCopies(endpoint_url=settings.s3_endpoint_url)
    report_rows, explained = [], 0
    try:
        for rank, row in enumerate(rows):
            item = ReportRow(row)
            report_rows.append(item)
            if rank >= MEDIA_ROWS:
                item.media_note = f"beyond the first {MEDIA_ROWS} rows: no figures"
                continue
            seconds = seconds_of(row)
            if seconds:
                name = f"{row['id']}_timeline.png"
                (assets / name).write_bytes(timeline_png(row, threshold=threshold))
                item.timeline = f"{ASSETS}/{name}"
            if row["media_type"] not in ("image", "video"):
                continue
            ref = ObjectRef.of_result_row(row)
            if ref is None:
                item.media_note = "the media is not kept (an upload, deleted once analysed)"
                continue
            target = driving_face(row)
            try:
                frame = frame_at(copies.path(ref), row["media_type"], target.t_s if target else None)
            except DeepscanError as e:
                item.media_note = f"media unavailable: {e.reason}"
                continue
            name = f"{row['id']}_thumb.png"
            (assets / name).write_bytes(thumbnail_png(_with_box(frame, target, row.get("label"))))
            item.thumbnail = f"{ASSETS}/{name}"
            flagged = row["media_type"] == "image" and row.get("label") == "fake"
            if flagged and target is not None and explained < max_explanations:
                name = f"{row['id']}_explanation.png"
                (assets / name).write_bytes(explainer.png(frame, target, threshold))
                item.explanation = f"{ASSETS}/{name}"
                explained += 1
    finally:
        copies.close()

    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    html = environment.get_template("report.html").render(
        scan=scans[0],
        rows=report_rows,
        statuses=sorted(Counter(r["status"] for r in rows).items(), key=lambda kv: (-kv[1], kv[0])),
        labels=Counter(r["label"] for r in rows if r.get("label")),
        threshold=threshold,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    index = out / "index.html"
    index.write_text(html)
    return {
        "report": str(index),
        "scan_id": scan_id,
        "rows": len(rows),
        "thumbnails": sum(r.thumbnail is not None for r in report_rows),
        "timelines": sum(r.timeline is not None for r in report_rows),
        "explanations": explained,
    }
