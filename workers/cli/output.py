"""What the ``deepscan`` commands print: result rows as JSON lines, CSV or a table, scan progress, the
scans table, ``doctor``'s checks and a pack's members."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.pack import Manifest
    from workers.checks import Check
    from workers.producer import ScanProgress

CSV_FIELDS = (
    "path",
    "media_type",
    "status",
    "reason",
    "label",
    "fake_probability",
    "confidence_real",
    "confidence_fake",
    "model",
    "n_faces",
    "elapsed_s",
)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A result (fresh, or a stored row: one shape, ``MediaResult.to_dict``) as the CSV and table columns."""
    confidence = row.get("confidence") or {}
    n_faces = len(row["faces"]) or sum(entry["n_faces"] for entry in row["timeline"])
    return {
        **{k: row.get(k) for k in CSV_FIELDS},
        "confidence_real": confidence.get("real"),
        "confidence_fake": confidence.get("fake"),
        "n_faces": n_faces,
    }


class Writer:
    """Streams results as JSON lines or CSV; collects them for a table printed at the end."""

    def __init__(self, fmt: str, stream: Any = sys.stdout) -> None:
        self.fmt, self.stream = fmt, stream
        self.rows: list[dict[str, Any]] = []
        self._csv = csv.DictWriter(stream, fieldnames=CSV_FIELDS) if fmt == "csv" else None
        if self._csv:
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row, default=str) + "\n")
        elif self._csv:
            self._csv.writerow(_flat(row))
        else:
            self.rows.append(row)
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "table":
            self.stream.write(format_table([_flat(r) for r in self.rows]) + "\n")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ("path", "type", "status", "label", "P(fake)", "conf", "faces", "time", "reason")

    def cells(r: dict[str, Any]) -> tuple[str, ...]:
        p = r["fake_probability"]
        conf = r["confidence_fake"] if r["label"] == "fake" else r["confidence_real"]
        return (
            _shorten(str(r["path"]), 48),
            str(r["media_type"]),
            str(r["status"]),
            r["label"] or "-",
            "-" if p is None else f"{p:.3f}",
            "-" if conf is None else f"{conf:.0%}",
            str(r["n_faces"]),
            f"{r['elapsed_s']:.1f}s" if r.get("elapsed_s") is not None else "-",
            _shorten(r["reason"] or "", 60),
        )

    return _columns(headers, [cells(r) for r in rows])


def _columns(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A plain-text table: left-aligned columns two spaces apart, a rule under the headers."""
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.append(line("-" * w for w in widths))
    out += [line(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    return "\n".join(out)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


class ScanProgressReport:
    """Progress of a scan on stderr: a bar on a terminal, a line per change otherwise."""

    def __init__(self) -> None:
        self._last = -1
        self._bar: Any = None

    def __call__(self, progress: ScanProgress) -> None:
        if sys.stderr.isatty():
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(unit="object", file=sys.stderr, desc=f"scan {progress.scan_id}")
            self._bar.total = progress.total
            self._bar.n = progress.done
            self._bar.refresh()
        elif progress.done != self._last:
            print(
                f"scan {progress.scan_id}: {progress.done}/{progress.total} objects analysed", file=sys.stderr
            )
        self._last = progress.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


SCAN_COLUMNS = (
    "id", "uri", "kind", "status", "total", "skipped", "done", "ok", "fake", "real", "expanded", "errors"
)  # fmt: skip


def format_scans(scans: Sequence[dict[str, Any]]) -> str:
    """``deepscan scans --format table``: one line per scan, its counts."""
    return _columns(SCAN_COLUMNS, [[_shorten(str(scan[c]), 48) for c in SCAN_COLUMNS] for scan in scans])


def format_checks(checks: Sequence[Check]) -> str:
    """``deepscan doctor``: one line per check, its state (ok, MISSING when required, else warning)."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        mark = "ok" if check.ok else ("MISSING" if check.required else "warning")
        lines.append(f"{check.name.ljust(width)}  {mark:<7}  {check.detail}")
    return "\n".join(lines)


def format_pack(manifest: Manifest, directory: Path) -> str:
    """``deepscan models list``: the pack, its aggregation and thresholds, one line per member."""
    body = []
    for m in manifest.members:
        path = directory / m.file
        auc = m.metrics.get("test_auc")
        body.append(
            (
                m.name,
                m.kind,
                m.architecture,
                f"{m.input_size[0]}x{m.input_size[1]}",
                f"{path.stat().st_size / 1e6:.1f} MB" if path.exists() else "missing",
                "-" if auc is None else f"{auc:.3f}",
            )
        )
    headers = ("member", "kind", "architecture", "input", "size", "test AUC")
    return (
        f"{manifest.label}  ({directory})\n"
        f"aggregation: {manifest.aggregation.method}   thresholds: {dict(manifest.thresholds)}\n"
        + _columns(headers, body)
    )
