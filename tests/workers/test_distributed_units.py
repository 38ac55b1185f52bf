"""The distributed scanner's parts in-process: Celery configuration, storage keys and errors, and the
scan bookkeeping (completion, archive counting, idempotent video aggregation) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import FrameResult, Result
from db.session import make_engine, migrate, session_factory, session_scope
from pipeline.analyze import AudioVerdict, TimelineSecond
from pipeline.pack import Manifest, MemberSpec
from workers.archives import ArchiveListing, ArchiveMember
from workers.celery_app import GPU_QUEUE, beat_schedule, make_app, require_broker, retry_delay_cap_s
from workers.errors import (
    ObjectChangedError,
    ObjectMissingError,
    StorageError,
    StorageUnavailableError,
    UsageError,
)
from workers.settings import ScheduleSpec, Settings, get_settings
from workers.storage import LocalCopies, ObjectRef, _s3_error, canonical_source, list_folder

# -- configuration ----------------------------------------------------------------------------------------


def test_celery_app_is_configured_for_at_least_once_delivery() -> None:
    conf = make_app(Settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout_s=100)).conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 100
    assert conf.task_soft_time_limit < conf.task_time_limit < 100  # never redelivered while running
    assert retry_delay_cap_s(100) < 100 and retry_delay_cap_s(3600) <= 600
    assert conf.result_backend == conf.broker_url  # chords need a backend: the broker's Redis by default
    assert conf.result_expires >= 100
    for task in ("deepscan.analyze_object", "deepscan.score_segment", "deepscan.score_soundtrack"):
        assert conf.task_routes[task]["queue"] == GPU_QUEUE
    assert conf.task_default_queue == "light"


def test_a_misconfigured_app_refuses_to_start() -> None:
    with pytest.raises(UsageError, match="DEEPSCAN_BROKER_URL"):
        require_broker(Settings(broker_url=None))
    with pytest.raises(UsageError, match="RESULT_EXPIRES"):
        make_app(Settings(broker_url="redis://x/0", visibility_timeout_s=600, result_expires_s=60))


def test_schedules_come_from_json_and_become_beat_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [{"uri": "s3://media/uploads/", "every_s": 30}, {"uri": "/srv/media", "crontab": "0 3 * * 1"}]
    monkeypatch.setenv("DEEPSCAN_SCHEDULES", json.dumps(specs))
    entries = beat_schedule(Settings().schedules)
    every = entries["scan s3://media/uploads/"]
    assert every["schedule"].total_seconds() == 30 and every["kwargs"] == {"uri": "s3://media/uploads/"}
    assert every["options"] == {"queue": "light", "expires": 30}
    nightly = entries["scan /srv/media"]["schedule"]
    assert nightly.hour == {3} and nightly.minute == {0} and nightly.day_of_week == {1}
    for bad in (
        {"uri": "x"},
        {"uri": "x", "every_s": 5, "crontab": "* * * * *"},
        {"uri": "x", "crontab": "* *"},
    ):
        with pytest.raises(ValidationError):
            ScheduleSpec(**bad)


# -- storage ----------------------------------------------------------------------------------------------


def test_object_refs_round_trip_and_name_their_rows() -> None:
    ref = ObjectRef(uri="s3://media/in/a.zip", etag="abc", size_bytes=10)
    member = ref.for_member("photos/x.jpg", 3)
    assert ObjectRef.from_dict(json.loads(json.dumps(member.to_dict()))) == member
    assert member.result_uri == "s3://media/in/a.zip#photos/x.jpg" and ref.result_uri == ref.uri
    assert (member.bucket, member.key, member.etag, member.size_bytes) == ("media", "in/a.zip", "abc", 3)
    assert member.row_extra(content_sha256="d") == {
        "bucket": "media",
        "key": "in/a.zip",
        "etag": "abc",
        "content_sha256": "d",
        "size_bytes": 3,
    }


def test_scan_sources(tmp_path: Path) -> None:
    assert canonical_source("s3://media/in/") == "s3://media/in/"
    assert canonical_source(str(tmp_path)) == tmp_path.resolve().as_uri()
    for bad in ("s3://", "gs://bucket/x", str(tmp_path / "missing"), "relative/nowhere"):
        with pytest.raises(UsageError):
            canonical_source(bad)


@pytest.mark.parametrize(
    ("code", "http", "error"),
    [
        ("NoSuchKey", 404, ObjectMissingError),
        ("PreconditionFailed", 412, ObjectChangedError),
        ("SlowDown", 503, StorageUnavailableError),
        ("InternalError", 500, StorageUnavailableError),
        ("AccessDenied", 403, StorageError),
    ],
)
def test_s3_errors_map_to_the_hierarchy(code: str, http: int, error: type[StorageError]) -> None:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": http}}
    mapped = _s3_error(ClientError(response, "GetObject"), "s3://media/a.jpg")
    assert type(mapped) is error and mapped.status == "error" and "s3://media/a.jpg" in mapped.reason
    assert isinstance(
        _s3_error(EndpointConnectionError(endpoint_url="http://x"), "x"), StorageUnavailableError
    )


def test_local_copies_read_files_in_place_and_extract_members_once(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.jpg").write_bytes(b"\xff\xd8\xff" + b"a" * 100)
    with zipfile.ZipFile(folder / "b.zip", "w") as archive:
        archive.writestr("x/y.jpg", b"member bytes")
    (folder / "link.jpg").symlink_to(folder / "sub" / "a.jpg")
    refs = list(list_folder(folder.as_uri()))
    assert [Path(r.uri).name for r in refs] == ["b.zip", "a.jpg"] and all(r.sha256 for r in refs)

    copies = LocalCopies(endpoint_url=None)
    assert copies.path(refs[1]) == folder / "sub" / "a.jpg"
    member = refs[0].for_member("x/y.jpg", 12)
    extracted = copies.path(member)
    assert extracted.read_bytes() == b"member bytes" and copies.path(member) == extracted
    assert not extracted.is_relative_to(folder)
    with pytest.raises(ObjectMissingError):
        copies.path(ObjectRef(uri=(folder / "gone.jpg").as_uri()))
    copies.close()
    assert not extracted.exists()


# -- scan bookkeeping -------------------------------------------------------------------------------------


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def worker_env(
    db_url: str, sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Settings of a worker process on ``db_url`` with a manifest-only pack (no model is loaded here)."""
    pack = tmp_path / "pack"
    pack.mkdir()
    members = (MemberSpec("spectral", "image", "spectral.keras", (64, 64), "spectral"),)
    manifest = Manifest(name="test-pack", version="0.0.1", members=members)
    (pack / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    monkeypatch.setenv("DEEPSCAN_BROKER_URL", "redis://127.0.0.1:9/0")  # never contacted here
    monkeypatch.setenv("DEEPSCAN_DATABASE_URL", db_url)
    monkeypatch.setenv("DEEPSCAN_MODELS_DIR", str(pack))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def new_scan(sessions: sessionmaker[Session], *, total: int, status: str = "running") -> int:
    with session_scope(sessions) as session:
        scan = queries.create_scan(
            session,
            uri="s3://media/",
            kind="scan",
            model_name="m",
            model_version="1",
            total=total,
            status=status,
        )
        return scan.id


def test_a_scan_completes_once_with_its_last_row_and_never_while_queuing(
    sessions: sessionmaker[Session],
) -> None:
    scan_id = new_scan(sessions, total=1, status="queuing")
    with session_scope(sessions) as session:
        queries.add_to_scan(session, scan_id=scan_id, queued=1, skipped=3)
        queries.upsert_result(session, uri="s3://media/a.jpg", fields={"status": "ok", "scan_id": scan_id})
    with session_scope(sessions) as session:
        assert not queries.complete_scan_if_done(session, scan_id=scan_id)  # 1 row, total 2, and queuing
        queries.upsert_result(session, uri="s3://media/b.jpg", fields={"status": "ok", "scan_id": scan_id})
    with session_scope(sessions) as session:
        assert not queries.complete_scan_if_done(session, scan_id=scan_id)  # the producer is still listing
        queries.mark_scan_running(session, scan_id=scan_id)
    with session_scope(sessions) as session:
        assert queries.complete_scan_if_done(session, scan_id=scan_id)
        assert not queries.complete_scan_if_done(session, scan_id=scan_id)  # exactly one caller wins
        (counts,) = queries.scan_counts(session, scan_id=scan_id)
    assert (counts["status"], counts["total"], counts["skipped"], counts["done"]) == ("complete", 2, 3, 2)


def test_expanding_an_archive_twice_counts_its_members_once(
    worker_env: None, sessions: sessionmaker[Session]
) -> None:
    from workers import rows

    scan_id = new_scan(sessions, total=1)
    ref = ObjectRef(uri="s3://media/a.zip", etag="e1", size_bytes=100)
    listing = ArchiveListing(
        "zip", (ArchiveMember("a.jpg", 10), ArchiveMember("b.wav", 20)), (("../c", "no"),), 30
    )
    for _ in range(2):  # a redelivered expand_archive
        rows.record_expansion(ref, scan_id, listing, content_sha256="d1")
    with session_scope(sessions) as session:
        assert session.get_one(queries.Scan, scan_id).total == 3
        row = queries.find_result(session, uri=ref.uri)
        assert row is not None and (row.status, row.media_type, row.etag) == ("expanded", "archive", "e1")
        assert row.details["archive"]["members"] == 2
    rows.record_expansion(ref, new_scan(sessions, total=1), listing, content_sha256="d1")  # a new scan
    with session_scope(sessions) as session:
        assert queries.find_result(session, uri=ref.uri).scan_id == scan_id + 1  # type: ignore[union-attr]
        assert session.get_one(queries.Scan, scan_id + 1).total == 3


def entry(second: int, p: float | None) -> dict[str, Any]:
    """A chord part's timeline entry, as ``score_segment`` returns it."""
    label = None if p is None else ("fake" if p >= 0.5 else "real")
    return TimelineSecond(second, float(second), int(p is not None), p, label).to_dict()


def test_video_aggregation_is_idempotent_under_duplicate_and_reordered_parts(
    worker_env: None, sessions: sessionmaker[Session]
) -> None:
    from workers.tasks import finish_video

    scan_id = new_scan(sessions, total=1)
    parts = [
        {"start_s": 0.0, "timeline": [entry(0, 0.9), entry(1, 0.8)], "elapsed_s": 1.0},
        {"start_s": 2.0, "timeline": [entry(2, 0.7), entry(3, None)], "elapsed_s": 1.0},
        {
            "audio": AudioVerdict(
                label="real", fake_probability=0.2, confidence={"real": 0.8, "fake": 0.2}
            ).to_dict()
        },
    ]
    info = {"duration_s": 4.0, "width": 64, "height": 64, "fps": 25.0, "has_audio": True}
    ref = ObjectRef(uri="s3://media/v.mp4", etag="e").to_dict()
    verdicts = []
    for delivered in (parts, [*parts, parts[0]], random.Random(0).sample(parts + parts, 6)):
        finish_video(delivered, ref=ref, scan_id=scan_id, info=info, started_s=0.0)
        with session_scope(sessions) as session:
            row = queries.find_result(session, uri=ref["uri"])
            assert row is not None
            verdicts.append((row.status, row.label, row.fake_probability, [f.second for f in row.frames]))
            n_rows = session.query(Result).count()
            n_frames = session.query(FrameResult).count()
    assert verdicts[0] == verdicts[1] == verdicts[2] == ("ok", "fake", pytest.approx(0.8), [0, 1, 2, 3])
    assert (n_rows, n_frames) == (1, 4)
    with session_scope(sessions) as session:
        assert session.get_one(queries.Scan, scan_id).status == "complete"


def test_an_unreachable_store_is_transient_and_retried(tmp_path: Path) -> None:
    from workers.storage import download_s3
    from workers.tasks import analyze_object, finish_video, score_segment

    with pytest.raises(StorageUnavailableError):
        download_s3(ObjectRef(uri="s3://media/a.jpg"), tmp_path / "a", endpoint_url="http://127.0.0.1:9")
    for task in (analyze_object, score_segment, finish_video):
        assert StorageUnavailableError in task.autoretry_for and task.max_retries


def test_an_object_that_fails_for_good_still_gets_its_row(
    worker_env: None, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from workers.tasks import analyze_object

    scan_id = new_scan(sessions, total=1)
    ref = ObjectRef(uri=(tmp_path / "deleted.jpg").as_uri(), sha256="0" * 64)
    outcome = analyze_object.apply(kwargs={"ref": ref.to_dict(), "scan_id": scan_id})
    assert isinstance(outcome.result, ObjectMissingError)
    with session_scope(sessions) as session:
        row = queries.find_result(session, uri=ref.uri)
        assert row is not None and row.status == "error" and "no longer exists" in (row.reason or "")
        assert session.get_one(queries.Scan, scan_id).status == "complete"


def test_an_object_over_its_time_limit_gets_a_timeout_row(
    worker_env: None, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The soft limit raises inside the task; the hard one kills its process and Celery calls the same
    ``on_failure`` in the worker's main process (the end-to-end case is in test_distributed)."""
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    from workers.celery_app import app
    from workers.tasks import analyze_object, timed_out

    soft_s, hard_s = app.conf.task_soft_time_limit, app.conf.task_time_limit
    scan_id = new_scan(sessions, total=2)
    for name, exc, limit in (
        ("soft.jpg", SoftTimeLimitExceeded(), soft_s),
        ("hard.jpg", TimeLimitExceeded(9), hard_s),
    ):
        ref = ObjectRef(uri=(tmp_path / name).as_uri(), sha256="0" * 64)
        analyze_object.on_failure(exc, "task-id", (), {"ref": ref.to_dict(), "scan_id": scan_id}, None)
        with session_scope(sessions) as session:
            row = queries.find_result(session, uri=ref.uri)
            assert row is not None and (row.status, row.fake_probability) == ("timeout", None)
            assert f"time limit of {limit:g} s" in (row.reason or "")
    assert timed_out(ValueError("not a time limit"), "the analysis") is None
    with session_scope(sessions) as session:
        assert session.get_one(queries.Scan, scan_id).status == "complete"


def test_a_chord_failure_that_cannot_be_written_now_is_written_later(
    worker_env: None, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chord's error callback runs once: a database error then must not lose the video's row."""
    from celery.exceptions import TimeLimitExceeded
    from sqlalchemy.exc import OperationalError

    from workers import rows, tasks

    scan_id = new_scan(sessions, total=1)
    ref = ObjectRef(uri="s3://media/clip.mp4", etag="e1")
    write_failure, attempts = rows.write_failure, []

    def database_down_once(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        if len(attempts) == 1:
            raise OperationalError("INSERT INTO results", {}, Exception("connection refused"))
        write_failure(*args, **kwargs)

    queued: list[dict[str, Any]] = []
    monkeypatch.setattr(rows, "write_failure", database_down_once)
    monkeypatch.setattr(tasks.record_failure, "apply_async", lambda kwargs: queued.append(kwargs))
    tasks.video_failed(None, TimeLimitExceeded(9), None, ref=ref.to_dict(), scan_id=scan_id)
    assert len(queued) == 1 and queued[0]["status"] == "timeout"

    tasks.record_failure.apply(kwargs=queued[0])
    with session_scope(sessions) as session:
        row = queries.find_result(session, uri=ref.uri)
        assert row is not None and (row.status, row.media_type) == ("timeout", "video")
        assert "hard time limit" in (row.reason or "")
        assert session.get_one(queries.Scan, scan_id).status == "complete"


def test_retries_wait_at_least_half_their_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Task

    from workers.tasks import RETRY_JITTER_FLOOR, RETRYING, score_segment

    waited: list[float] = []
    monkeypatch.setattr(Task, "retry", lambda self, *a, countdown=None, **o: waited.append(countdown))
    for _ in range(200):
        score_segment.retry(exc=RuntimeError(), countdown=8.0)
    assert min(waited) >= RETRY_JITTER_FLOOR * 8.0 and max(waited) <= 8.0
    assert RETRYING["retry_jitter"] is False  # Celery's own full jitter would draw from [0, 8]


@pytest.mark.parametrize(
    "data",
    [
        {"uri": "http://example.com/a.jpg"},
        {"uri": "file://host/etc/passwd"},
        {"uri": "s3://bucket/"},
        {"uri": "s3://bucket/" + "k" * 1025},
        {"uri": "s3://bucket/a\x00.jpg"},
        {"uri": "s3://bucket/a.zip", "member": "../../etc/passwd"},
        {"uri": "s3://bucket/a.zip", "member": "/etc/passwd"},
        {"uri": "s3://bucket/a.jpg", "size_bytes": "12"},
        {"uri": "s3://bucket/a.jpg", "command": "rm -rf /"},
        {"etag": "e"},
    ],
)
def test_refs_off_the_broker_are_validated(data: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        ObjectRef.from_dict(data)


def test_valid_refs_pass_validation() -> None:
    for ref in (
        ObjectRef(uri="s3://bucket/dir/a b.zip", etag="e", size_bytes=3, member="inner/c.jpg"),
        ObjectRef(uri="file:///srv/media/x.jpg", sha256="0" * 64),
    ):
        assert ObjectRef.from_dict(ref.to_dict()) == ref


@pytest.mark.parametrize(("face_search", "halved"), [("thorough", False), ("fast", True)])
def test_the_face_search_setting_reaches_the_workers_and_the_embedded_runner(
    face_search: str, halved: bool, random_pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEEPSCAN_FACE_SEARCH picks the first Haar pass of the workers' analyzers and the embedded runner's."""
    from workers import resources
    from workers.embedded import EmbeddedRunner

    monkeypatch.setenv("DEEPSCAN_MODELS_DIR", str(random_pack))
    monkeypatch.setenv("DEEPSCAN_FACE_SEARCH", face_search)
    get_settings.cache_clear()
    try:
        assert resources.analyzer().detector.options.halved_pyramid is halved
        runner = EmbeddedRunner.create(database_url=f"sqlite:///{tmp_path / 'rows.db'}")
        assert runner.analyzer.detector.options.halved_pyramid is halved
    finally:
        get_settings.cache_clear()


def test_an_unknown_face_search_is_refused() -> None:
    with pytest.raises(ValidationError, match="face_search"):
        Settings(face_search="quick")  # type: ignore[arg-type]
