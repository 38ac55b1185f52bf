"""Query functions against a migrated database, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import FrameResult, Result
from db.queries import (
    already_analysed,
    complete_scan_if_done,
    create_scan,
    find_result,
    finish_scan,
    list_results,
    result_to_dict,
    scan_counts,
    upsert_result,
)
from db.session import session_scope

URI = "s3://media/clips/a.mp4"


def _frames(n: int, probability: float) -> list[dict[str, object]]:
    return [{"second": s, "t_s": s + 0.5, "n_faces": 1, "fake_probability": probability} for s in range(n)]


def _count(session: Session, model: type[Result] | type[FrameResult]) -> int:
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_upsert_twice_keeps_one_row_and_replaces_frames(session: Session) -> None:
    first = upsert_result(
        session,
        uri=URI,
        fields={
            "status": "ok",
            "media_type": "video",
            "label": "fake",
            "fake_probability": 0.9,
            "reason": None,
            "etag": "e1",
            "model_version": "v1",
        },
        frames=_frames(3, 0.9),
    )
    session.commit()
    created_at = first.created_at

    second = upsert_result(
        session,
        uri=URI,
        fields={
            "status": "ok",
            "media_type": "video",
            "label": "real",
            "fake_probability": 0.1,
            "etag": "e2",
            "model_version": "v1",
            "details": {"faces": 2},
        },
        frames=_frames(2, 0.1),
    )
    session.commit()

    assert second.id == first.id
    assert _count(session, Result) == 1
    assert _count(session, FrameResult) == 2
    row = find_result(session, uri=URI)
    assert row is not None
    assert (row.label, row.fake_probability, row.etag, row.details) == ("real", 0.1, "e2", {"faces": 2})
    assert [f.fake_probability for f in row.frames] == [0.1, 0.1]
    assert row.created_at == created_at
    assert row.updated_at >= created_at
    assert row.created_at.tzinfo is not None


def test_upsert_replaces_the_whole_verdict(session: Session) -> None:
    upsert_result(
        session,
        uri=URI,
        fields={"status": "ok", "label": "fake", "fake_probability": 0.8},
        frames=_frames(4, 0.8),
    )
    upsert_result(session, uri=URI, fields={"status": "decode_error", "reason": "truncated moov atom"})
    session.commit()
    row = find_result(session, uri=URI)
    assert row is not None
    assert (row.status, row.reason, row.label, row.fake_probability) == (
        "decode_error",
        "truncated moov atom",
        None,
        None,
    )
    assert row.frames == []
    assert row.details == {}


def test_upsert_rejects_unknown_columns(session: Session) -> None:
    with pytest.raises(ValueError, match="colour"):
        upsert_result(session, uri=URI, fields={"status": "ok", "colour": "red"})
    with pytest.raises(ValueError, match="created_at"):
        upsert_result(session, uri=URI, fields={"status": "ok", "created_at": datetime.now(timezone.utc)})


def test_null_probability_is_stored_as_null(session: Session) -> None:
    upsert_result(
        session,
        uri="file:///data/x.jpg",
        fields={
            "status": "no_face",
            "reason": "no face found",
            "media_type": "image",
            "fake_probability": None,
        },
    )
    session.commit()
    stored = session.execute(select(Result.fake_probability).where(Result.uri == "file:///data/x.jpg"))
    assert stored.scalar_one() is None
    row = find_result(session, uri="file:///data/x.jpg")
    assert row is not None
    as_dict = result_to_dict(row)
    assert as_dict["fake_probability"] is None
    assert as_dict["confidence"] is None
    json.dumps(as_dict)


def test_result_to_dict(session: Session) -> None:
    row = upsert_result(
        session,
        uri="s3://media/set.zip#a/b.png",
        fields={
            "status": "ok",
            "media_type": "image",
            "label": "fake",
            "fake_probability": 0.7,
            "confidence_real": 0.3,
            "confidence_fake": 0.7,
            "bucket": "media",
            "key": "set.zip",
            "size_bytes": 5_000_000_000,
        },
        frames=_frames(1, 0.7),
    )
    session.commit()
    as_dict = result_to_dict(row)
    assert as_dict["confidence"] == {"real": 0.3, "fake": 0.7}
    assert as_dict["size_bytes"] == 5_000_000_000
    assert datetime.fromisoformat(as_dict["created_at"]).tzinfo is not None
    assert as_dict["timeline"] == [
        {"second": 0, "t_s": 0.5, "n_faces": 1, "fake_probability": 0.7, "label": None, "faces": []}
    ]
    assert as_dict["path"] == as_dict["uri"] == "s3://media/set.zip#a/b.png"
    assert as_dict["faces"] == [] and as_dict["audio"] is None and as_dict["details"] == {}
    json.dumps(as_dict)


def test_list_results_filters(session: Session) -> None:
    scan = create_scan(session, uri="s3://media/", kind="scan", model_name="m", model_version="v1", total=4)
    other = create_scan(session, uri="cli", kind="detect", model_name="m", model_version="v1")
    rows: list[tuple[str, int, dict[str, Any]]] = [
        ("file:///1.jpg", scan.id, {"status": "ok", "label": "fake", "fake_probability": 0.95}),
        ("file:///2.jpg", scan.id, {"status": "ok", "label": "real", "fake_probability": 0.2}),
        ("file:///3.jpg", scan.id, {"status": "no_face", "fake_probability": None}),
        ("file:///4.jpg", other.id, {"status": "ok", "label": "fake", "fake_probability": 0.6}),
    ]
    for uri, scan_id, fields in rows:
        upsert_result(session, uri=uri, fields={**fields, "scan_id": scan_id})
    session.commit()

    def uris(results: list[Result]) -> list[str]:
        return [r.uri for r in results]

    assert uris(list_results(session)) == [uri for uri, _, _ in rows]
    assert uris(list_results(session, scan_id=scan.id)) == ["file:///1.jpg", "file:///2.jpg", "file:///3.jpg"]
    assert uris(list_results(session, label="fake")) == ["file:///1.jpg", "file:///4.jpg"]
    assert uris(list_results(session, status="no_face")) == ["file:///3.jpg"]
    assert uris(list_results(session, min_probability=0.6)) == ["file:///1.jpg", "file:///4.jpg"]
    assert uris(list_results(session, scan_id=scan.id, label="fake", min_probability=0.9)) == [
        "file:///1.jpg"
    ]
    assert uris(list_results(session, limit=2)) == ["file:///1.jpg", "file:///2.jpg"]


def test_scan_counts(session: Session) -> None:
    scan = create_scan(session, uri="/data/batch", kind="scan", model_name="m", model_version="v1", total=5)
    empty = create_scan(session, uri="cli", kind="detect", model_name="m", model_version="v1", total=1)
    verdicts: list[dict[str, Any]] = [
        {"status": "ok", "label": "fake", "fake_probability": 0.9},
        {"status": "ok", "label": "fake", "fake_probability": 0.8},
        {"status": "ok", "label": "real", "fake_probability": 0.1},
        {"status": "decode_error", "reason": "corrupt"},
        {"status": "expanded", "media_type": "archive"},  # its members are rows of their own: no error
    ]
    for i, fields in enumerate(verdicts):
        upsert_result(session, uri=f"file:///data/batch/{i}", fields={**fields, "scan_id": scan.id})
    finish_scan(session, scan_id=scan.id)
    finish_scan(session, scan_id=empty.id, status="failed", error="model pack missing")
    session.commit()

    counts = {c["id"]: c for c in scan_counts(session)}
    assert counts[scan.id] | {"created_at": None, "finished_at": None} == {
        "id": scan.id,
        "uri": "/data/batch",
        "kind": "scan",
        "status": "complete",
        "created_at": None,
        "finished_at": None,
        "total": 5,
        "skipped": 0,
        "done": 5,
        "ok": 3,
        "fake": 2,
        "real": 1,
        "expanded": 1,
        "errors": 1,
    }
    assert counts[scan.id]["finished_at"] >= counts[scan.id]["created_at"]
    assert counts[empty.id]["status"] == "failed"
    assert (counts[empty.id]["done"], counts[empty.id]["errors"]) == (0, 0)
    with pytest.raises(LookupError):
        finish_scan(session, scan_id=10_000)


def test_overlapping_scans_each_count_the_objects_they_accounted_for(session: Session) -> None:
    first, second = (
        create_scan(session, uri="s3://media/", kind="scan", model_name="m", model_version="v1", total=2)
        for _ in range(2)
    )
    for scan in (first, second, first):  # the second scan rewrites both rows; the first's task redelivered
        for name in ("a.jpg", "b.jpg"):
            upsert_result(session, uri=f"s3://media/{name}", fields={"status": "ok", "scan_id": scan.id})
    session.commit()

    assert complete_scan_if_done(session, scan_id=first.id)
    assert complete_scan_if_done(session, scan_id=second.id)
    counts = {c["id"]: c for c in scan_counts(session)}
    assert [(counts[s.id]["done"], counts[s.id]["ok"]) for s in (first, second)] == [(2, 2), (2, 2)]
    for scan in (first, second):  # a scan's results are its objects, whichever scan wrote them last
        assert [r.uri for r in list_results(session, scan_id=scan.id)] == [
            "s3://media/a.jpg",
            "s3://media/b.jpg",
        ]
    assert {r.scan_id for r in list_results(session)} == {first.id}


def test_already_analysed(session: Session) -> None:
    upsert_result(
        session,
        uri=URI,
        fields={"status": "ok", "etag": "e1", "content_sha256": "ab" * 32, "model_version": "v1"},
    )
    session.commit()

    assert already_analysed(session, uri=URI, etag="e1", model_version="v1")
    assert already_analysed(session, uri=URI, content_sha256="ab" * 32, model_version="v1")
    assert already_analysed(session, uri=URI, etag="changed", content_sha256="ab" * 32, model_version="v1")
    assert not already_analysed(session, uri=URI, etag="e2", model_version="v1")
    assert not already_analysed(session, uri=URI, etag="e1", model_version="v2")
    assert not already_analysed(session, uri=URI, model_version="v1")
    assert not already_analysed(session, uri="s3://media/other", etag="e1", model_version="v1")

    upsert_result(
        session,
        uri=URI,
        fields={"status": "error", "reason": "worker lost", "etag": "e1", "model_version": "v1"},
    )
    session.commit()
    assert not already_analysed(session, uri=URI, etag="e1", model_version="v1")


def test_session_scope_commits_or_rolls_back(factory: sessionmaker[Session]) -> None:
    with session_scope(factory) as session:
        upsert_result(session, uri="file:///kept", fields={"status": "ok"})
    with pytest.raises(RuntimeError), session_scope(factory) as session:
        upsert_result(session, uri="file:///dropped", fields={"status": "ok"})
        raise RuntimeError("boom")
    with session_scope(factory) as session:
        assert [r.uri for r in list_results(session)] == ["file:///kept"]


def test_deleting_a_result_deletes_its_frames(session: Session) -> None:
    upsert_result(session, uri=URI, fields={"status": "ok"}, frames=_frames(3, 0.5))
    session.commit()
    row = find_result(session, uri=URI)
    session.delete(row)
    session.commit()
    assert _count(session, FrameResult) == 0


# Concurrent writers are the PostgreSQL deployment (Celery workers); SQLite serialises writers by design.
@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.services)], indirect=True)
def test_concurrent_upserts_leave_one_row(factory: sessionmaker[Session]) -> None:
    writers = 4
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            barrier.wait()
            with session_scope(factory) as session:
                upsert_result(
                    session,
                    uri=URI,
                    fields={"status": "ok", "fake_probability": i / 10},
                    frames=_frames(i + 1, i / 10),
                )
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    with session_scope(factory) as session:
        assert _count(session, Result) == 1
        row = find_result(session, uri=URI)
        assert row is not None
        # Row and frames come from the same writer, whichever committed last.
        assert row.fake_probability is not None
        winner = round(row.fake_probability * 10)
        assert [f.fake_probability for f in row.frames] == [winner / 10] * (winner + 1)


def test_list_results_by_provenance(session: Session) -> None:
    rows = {
        "file:///generated.png": {"provenance": "ai", "provenance_credentials": "absent"},
        "file:///signed.jpg": {"provenance": "ai", "provenance_credentials": "trusted"},
        "file:///camera.jpg": {"provenance": "camera", "provenance_credentials": "absent"},
        "file:///plain.jpg": {"provenance": "none", "provenance_credentials": "absent"},
        "file:///unread.txt": {},  # never read (not media, or an older row): NULL, in no filter
    }
    for uri, fields in rows.items():
        upsert_result(session, uri=uri, fields={"status": "ok", **fields})
    session.commit()

    def uris(provenance: str) -> list[str]:
        return [r.uri for r in list_results(session, provenance=provenance)]

    assert uris("ai") == ["file:///generated.png", "file:///signed.jpg"]
    assert uris("camera") == ["file:///camera.jpg"]
    assert uris("none") == ["file:///plain.jpg"]
    assert [r.uri for r in list_results(session, provenance="ai", limit=1)] == ["file:///generated.png"]


def test_result_to_dict_gives_provenance_back_from_details(session: Session) -> None:
    provenance = {"summary": "ai", "verified": True, "credentials": "trusted", "findings": []}
    row = upsert_result(
        session,
        uri="file:///signed.jpg",
        fields={
            "status": "ok",
            "provenance": "ai",
            "details": {"provenance": provenance, "aggregation": "x"},
        },
    )
    session.commit()
    as_dict = result_to_dict(row)
    assert as_dict["provenance"] == provenance and as_dict["details"] == {"aggregation": "x"}
    assert (
        result_to_dict(upsert_result(session, uri="file:///old.jpg", fields={"status": "ok"}))["provenance"]
        is None
    )
