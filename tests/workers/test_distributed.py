"""The distributed scanner end to end: real ``deepscan worker`` processes on the running Redis, moto's S3
server on loopback, SQLite and PostgreSQL, and ``deepscan scan`` / ``deepscan beat`` as a user runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.provenance_media import EXPECTED_PROVENANCE
from tests.workers.conftest import Stack, StallingProxy, wait_for, zip_bytes

pytestmark = [pytest.mark.services, pytest.mark.slow]

SCAN_TIMEOUT_S = 180
STEP_RUN_S, STEP_SETTLE_S = 0.05, 0.1  # how a worker is single-stepped: run, then frozen and looked at
WEEK_S = 7 * 24 * 3600


def details(row: dict[str, Any]) -> dict[str, Any]:
    value = row["details"]
    return json.loads(value) if isinstance(value, str) else value  # SQLite hands back the JSON text


def scan(
    stack: Stack, source: str | None = None, *options: str, **env: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``deepscan scan SOURCE --wait`` (default: s3://bucket/media/): (the queued line, the final line)."""
    source = source or stack.uri("media/")
    proc = stack.cli("scan", source, "--wait", "--timeout", str(SCAN_TIMEOUT_S), *options, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:] + stack.log("worker")[-3000:]
    queued, final = (json.loads(line) for line in proc.stdout.splitlines())
    return queued, final


def mixed_bucket(stack: Stack, samples: Path) -> dict[str, str]:
    """An image, a video with speech, speech, a corrupt JPEG and a zip of two images: {key: ETag}."""
    etags = {
        f"media/{name}": stack.put(f"media/{name}", samples / name)
        for name in ("face.jpg", "talking_face.mp4", "speech.wav", "corrupt.jpg")
    }
    archive = zip_bytes(
        {
            "faces/face.jpg": (samples / "face.jpg").read_bytes(),
            "no_face.png": (samples / "no_face.png").read_bytes(),
        }
    )
    etags["media/bundle.zip"] = stack.put("media/bundle.zip", archive)
    return etags


def test_mixed_bucket_scans_to_one_correct_row_per_object(
    db_url: str, stack_factory: Any, samples: Path
) -> None:
    stack = stack_factory(db_url)
    etags = mixed_bucket(stack, samples)
    stack.worker()

    queued, final = scan(stack)
    assert (queued["queued"], queued["skipped"]) == (5, 0)
    # the archive counts for its two members once expanded: 5 objects + 2 members, all with their row
    assert final["status"] == "complete" and final["total"] == final["done"] == 7, final

    rows = stack.rows()
    zipped = stack.uri("media/bundle.zip")
    assert {uri: (row["media_type"], row["status"]) for uri, row in rows.items()} == {
        stack.uri("media/face.jpg"): ("image", "ok"),
        stack.uri("media/talking_face.mp4"): ("video", "ok"),
        stack.uri("media/speech.wav"): ("audio", "ok"),
        stack.uri("media/corrupt.jpg"): ("image", "decode_error"),
        zipped: ("archive", "expanded"),
        f"{zipped}#faces/face.jpg": ("image", "ok"),
        f"{zipped}#no_face.png": ("image", "no_face"),
    }
    for uri, row in rows.items():
        key = uri.removeprefix(f"s3://{stack.bucket}/").split("#")[0]
        assert (row["bucket"], row["key"], row["etag"]) == (stack.bucket, key, etags[key]), uri
        assert row["scan_id"] == queued["scan_id"] and row["model_version"] == "0.0.1"
        assert row["content_sha256"] and row["size_bytes"] > 0
        if row["status"] == "ok":
            assert row["label"] in ("fake", "real") and 0.0 <= row["fake_probability"] <= 1.0, uri
        else:
            assert row["fake_probability"] is None and row["reason"], uri
    assert details(rows[zipped])["archive"]["members"] == 2

    video_uri = stack.uri("media/talking_face.mp4")
    video = details(rows[video_uri])
    assert stack.frames(video_uri) == [0, 1, 2, 3, 4, 5]  # 3 segments of 2 s, one row per second
    assert video["parts"]["count"] == 4 and video["parts"]["failed_segments"] == []  # + the soundtrack
    assert video["audio"]["label"] in ("fake", "real") and video["verdict_driven_by"] in ("faces", "audio")

    # The chord parts' results live in Redis, and expire: nothing stays for ever, nothing too early.
    redis = stack.redis()
    results = redis.keys("celery-task-meta-*")
    assert len(results) >= 4
    assert all(0 < redis.ttl(key) <= WEEK_S for key in results)

    # A second scan finds every object analysed with this ETag and model version: it queues nothing.
    updated = {uri: row["updated_at"] for uri, row in rows.items()}
    again, final = scan(stack)
    assert (again["queued"], again["skipped"]) == (0, 5)
    assert final["status"] == "complete" and final["total"] == 0
    assert {uri: row["updated_at"] for uri, row in stack.rows().items()} == updated


def test_a_threaded_worker_shares_forward_passes_across_tasks_and_writes_the_same_rows(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """``--pool threads`` with ``DEEPSCAN_BATCH_WAIT_MS``: the faces and windows of concurrent tasks go
    through the members together, and every row is what a one-task-at-a-time worker writes."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'threads.db'}")
    mixed_bucket(stack, samples)
    for i in range(6):
        stack.put(f"media/more/face_{i}.jpg", samples / "face.jpg")
    stack.worker("prefork")
    scan(stack)
    alone = stack.rows()
    stack.stop(stack.processes[-1])

    threaded = stack.on_database(f"sqlite:///{tmp_path / 'threads-batched.db'}")
    threaded.worker(
        "threads", pool="threads", concurrency=4, DEEPSCAN_BATCH_WAIT_MS="300", DEEPSCAN_LOG_LEVEL="DEBUG"
    )
    scan(threaded)
    together = threaded.rows()

    def verdicts(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {uri: (r["status"], r["label"], r["fake_probability"]) for uri, r in rows.items()}

    assert verdicts(together).keys() == verdicts(alone).keys(), (
        verdicts(together),
        stack.log("threads")[-5000:],
    )
    assert len(together) == 13
    for uri, (status, label, p) in verdicts(together).items():
        status_alone, label_alone, p_alone = verdicts(alone)[uri]
        assert (status, label) == (status_alone, label_alone), uri
        assert p == pytest.approx(p_alone, abs=1e-5), uri  # batch composition changes nothing of weight
    passes = [line for line in stack.log("threads").splitlines() if "one forward pass for" in line]
    shared = [line for line in passes if not line.rstrip().endswith("of 1 callers")]
    assert shared, "no forward pass was shared by two tasks:\n" + "\n".join(passes)


def test_a_local_folder_is_scanned_incrementally_and_a_new_model_version_re_analyses(
    stack_factory: Any, tmp_path: Path, samples: Path, random_pack_v2: Path
) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'versions.db'}")
    folder = tmp_path / "media"
    folder.mkdir()
    for name in ("face.jpg", "speech.wav"):
        shutil.copy(samples / name, folder / name)
    old = stack.worker("worker-v1")
    first, _ = scan(stack, str(folder))
    assert first["queued"] == 2
    rows = stack.rows(folder.as_uri())
    assert sorted(rows) == [(folder / "face.jpg").as_uri(), (folder / "speech.wav").as_uri()]
    assert all(
        row["etag"] is None and row["content_sha256"] and row["status"] == "ok" for row in rows.values()
    )
    stack.stop(old)

    v2 = {"DEEPSCAN_MODELS_DIR": str(random_pack_v2)}
    stack.worker("worker-v2", **v2)
    second, final = scan(stack, str(folder), **v2)
    assert (second["queued"], second["skipped"]) == (2, 0) and final["done"] == 2
    rows = stack.rows(folder.as_uri())
    assert {(row["model_version"], row["scan_id"]) for row in rows.values()} == {("0.0.2", second["scan_id"])}

    # Local files are versioned by content: an edited file is analysed again, the other is not.
    shutil.copy(samples / "no_face.png", folder / "face.jpg")
    third, _ = scan(stack, str(folder), **v2)
    assert (third["queued"], third["skipped"]) == (1, 1)
    assert stack.rows(folder.as_uri())[(folder / "face.jpg").as_uri()]["status"] == "no_face"
    forced, final = scan(stack, str(folder), "--force", **v2)
    assert (forced["queued"], forced["skipped"]) == (2, 0) and final["done"] == 2


def test_provenance_reaches_the_rows_of_a_distributed_scan(
    stack_factory: Any, tmp_path: Path, provenance_media: dict[str, Path]
) -> None:
    """Images read theirs in analyze_object; a video in split_video, handed to finish_video's verdict."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'provenance.db'}")
    for name in EXPECTED_PROVENANCE:
        stack.put(f"media/{name}", provenance_media[name])
    anchors = {"DEEPSCAN_C2PA_TRUST_ANCHORS": str(provenance_media["anchors.pem"])}
    stack.worker(**anchors)
    queued, final = scan(stack, None, **anchors)
    total = len(EXPECTED_PROVENANCE)
    assert queued["queued"] == total and final["status"] == "complete" and final["done"] == total, final

    rows = {uri.rsplit("/", 1)[-1]: row for uri, row in stack.rows().items()}
    assert sorted(rows) == sorted(EXPECTED_PROVENANCE)
    for name, (decided, summary, verified, credentials) in EXPECTED_PROVENANCE.items():
        row, found = rows[name], details(rows[name])
        assert (row["status"], row["provenance"], row["provenance_credentials"]) == (
            "ok",
            summary,
            credentials,
        )
        assert found["provenance"]["verified"] is verified, name
        if decided:
            assert (row["label"], row["fake_probability"]) == ("fake", 1.0), name
            assert found["verdict_driven_by"] == "provenance", name
        else:  # the detectors decide
            assert found.get("verdict_driven_by") != "provenance", name
            assert row["label"] in ("fake", "real") and "detector_label" not in found, name
    video = details(rows["c2pa_ai.mp4"])
    assert video["detector_verdict_driven_by"] == "faces" and video["parts"]["count"] == 1
    assert 0.0 <= video["detector_fake_probability"] <= 1.0
    assert [f["kind"] for f in details(rows["sd_webui.png"])["provenance"]["findings"]] == [
        "generator.parameters"
    ]


def test_scan_exits_non_zero_with_a_message_when_it_cannot_finish(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'unfinished.db'}")
    stack.put("media/face.jpg", samples / "face.jpg")
    down = stack.cli(
        "scan", stack.uri("media/"), "--wait", env={"DEEPSCAN_BROKER_URL": "redis://127.0.0.1:9/0"}
    )
    assert down.returncode == 1 and "broker" in down.stderr and "unreachable" in down.stderr
    assert stack.query("SELECT * FROM scans") == []  # refused before recording anything

    no_worker = stack.cli("scan", stack.uri("media/"), "--wait", "--timeout", "2")
    assert no_worker.returncode == 1 and "did not finish within 2 s: 0 of 1" in no_worker.stderr
    assert json.loads(no_worker.stdout.splitlines()[0])["queued"] == 1
    assert stack.cli("scan", "gs://elsewhere/x").returncode == 2


def _unacked_segments(redis: Any) -> set[str]:
    """Ids of the segment tasks a worker took and has not acknowledged (kombu keeps them in ``unacked``)."""
    headers = [json.loads(raw)[0]["headers"] for raw in redis.hvals("unacked")]
    return {h["id"] for h in headers if h["task"] == "deepscan.score_segment"}


def test_a_worker_killed_mid_video_loses_nothing(stack_factory: Any, tmp_path: Path, samples: Path) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'kill.db'}")
    # Redelivery after 30 s; the time limits (24 s / 27 s) leave a first call's tracing room on a loaded
    # machine. 1 s segments: six parts and the soundtrack.
    stack.env.update(DEEPSCAN_VISIBILITY_TIMEOUT_S="30", DEEPSCAN_VIDEO_SEGMENT_S="1")
    stack.put("media/talking_face.mp4", samples / "talking_face.mp4")
    stack.put("media/face.jpg", samples / "face.jpg")
    first = stack.worker("first")
    waiting = stack.cli_in_background("scan", stack.uri("media/"), "--wait", "--timeout", str(SCAN_TIMEOUT_S))
    redis = stack.redis()

    def parts_returned() -> int:
        return sum(redis.zcard(key) for key in redis.keys("celery-taskset-meta-*.j"))

    def first_log() -> str:
        return stack.log("first")[-4000:]

    wait_for(
        parts_returned, timeout_s=120, poll_s=0.05, what="a part of the video's chord", context=first_log
    )

    def frozen_holding_a_segment() -> bool:
        # The worker runs in slices of STEP_RUN_S and is looked at only while it is frozen: a segment that
        # takes a fraction of a second cannot start and finish between two looks.
        stack.freeze(first, settle_s=STEP_SETTLE_S)
        if parts_returned() and _unacked_segments(redis):
            return True
        stack.thaw(first)
        return False

    wait_for(
        frozen_holding_a_segment,
        timeout_s=60,
        poll_s=STEP_RUN_S,
        what="a video segment in flight after a part returned",
        context=first_log,
    )
    owed = _unacked_segments(redis)  # taken by the worker, never acknowledged: owed, not lost
    stack.kill(first)

    stack.worker("second")
    out, err = waiting.communicate(timeout=SCAN_TIMEOUT_S + 30)
    assert waiting.returncode == 0, err[-3000:] + stack.log("second")[-3000:]
    final = json.loads(out.splitlines()[-1])
    assert final["status"] == "complete" and final["total"] == final["done"] == 2

    rows = stack.rows()
    video_uri = stack.uri("media/talking_face.mp4")
    assert len(rows) == 2 and rows[video_uri]["status"] == "ok"
    assert stack.frames(video_uri) == [0, 1, 2, 3, 4, 5]
    # The segment the first worker died on (mid-run, or run but not yet acknowledged) ran again on the
    # second one, and the chord counted it once: six segments and the soundtrack.
    assert all(f"score_segment[{task_id}] succeeded" in stack.log("second") for task_id in owed)
    assert details(rows[video_uri])["parts"]["count"] == 7


SEND_STALE_CHORD = """
import sys
from db import queries
from db.session import session_scope
from pipeline.media import probe_video
from workers.resources import open_sessions
from workers.storage import ObjectRef
from workers.tasks import video_chord

uri, etag, size, local = sys.argv[1:]
with session_scope(open_sessions()) as session:
    scan_id = queries.create_scan(
        session, uri=uri, kind="scan", model_name="test-pack", model_version="0.0.1", total=1
    ).id
ref = ObjectRef(uri=uri, etag=etag, size_bytes=int(size))
video_chord(ref, scan_id, probe_video(local), segment_s=2, started_s=0.0, sha256="").delay()
print(scan_id)
"""


def queue_video_chord(stack: Stack, uri: str, etag: str, video: Path) -> int:
    """Queue the chord of the object at ``uri`` (version ``etag``; probed from the local copy ``video``)
    straight away: no analyze_object, no split_video. Returns the scan id."""
    proc = stack.python(SEND_STALE_CHORD, uri, etag, str(video.stat().st_size), str(video))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split()[-1])


def test_a_failed_chord_part_gives_the_video_an_error_row(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """A part that fails for good (here: the object was overwritten, If-Match fails) must not leave the
    chord waiting for ever: its error callback writes the video's row and the scan completes."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'chord.db'}")
    video = samples / "talking_face.mp4"
    etag = stack.put("media/clip.mp4", video)
    stack.put("media/clip.mp4", samples / "face.jpg")
    stack.worker()
    uri = stack.uri("media/clip.mp4")
    scan_id = queue_video_chord(stack, uri, etag, video)

    wait_for(lambda: stack.scan(scan_id)["status"] == "complete", timeout_s=SCAN_TIMEOUT_S, what="the scan")
    row = stack.rows()[uri]
    assert (row["media_type"], row["status"], row["fake_probability"]) == ("video", "error", None)
    assert "overwritten" in row["reason"] and row["scan_id"] == scan_id


def test_an_object_stuck_past_the_hard_time_limit_gets_a_timeout_row(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """A download hangs (a proxy holds it) and the pool process is frozen, as if stuck in C code: only the
    hard time limit ends it, by killing the process. The worker's main process must then write the row
    (Celery >= 5.7 calls ``on_failure`` there), acknowledge the task rather than hand it out again, and go
    on with the next object."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'stuck.db'}")
    proxy = StallingProxy(stack.s3_endpoint, marker="stuck")
    try:
        # hard limit 54 s, redelivery of unacknowledged tasks after 60 s. The scan starts once the pool
        # process has loaded the models: a task the worker took while it was still loading would spend
        # that time (up to 50 s on a loaded 2-core machine: TensorFlow, the pack, c2pa) on the 60 s too,
        # and be handed out a second time.
        stack.env.update(DEEPSCAN_VISIBILITY_TIMEOUT_S="60", DEEPSCAN_S3_ENDPOINT_URL=proxy.url)
        stack.put("media/a-stuck.jpg", samples / "face.jpg")
        stack.put("media/b-face.jpg", samples / "face.jpg")
        worker = stack.worker()
        wait_for(
            lambda: "models loaded and warmed" in stack.log("worker"),
            timeout_s=180,
            what="the pool process to load the models",
            context=lambda: stack.log("worker")[-3000:],
        )
        waiting = stack.cli_in_background(
            "scan", stack.uri("media/"), "--wait", "--timeout", str(SCAN_TIMEOUT_S)
        )
        wait_for(lambda: proxy.stalled, timeout_s=120, what="the download to hang")
        frozen = stack.pool_children(worker)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        out, err = waiting.communicate(timeout=SCAN_TIMEOUT_S + 30)
        assert waiting.returncode == 0, err[-3000:] + stack.log("worker")[-3000:]
    finally:
        proxy.close()
    assert json.loads(out.splitlines()[-1])["done"] == 2
    rows = stack.rows()
    stuck, face = rows[stack.uri("media/a-stuck.jpg")], rows[stack.uri("media/b-face.jpg")]
    assert (stuck["status"], stuck["fake_probability"], face["status"]) == ("timeout", None, "ok")
    assert "hard time limit of 54 s" in stuck["reason"]
    assert len(proxy.stalled) == 1  # acknowledged, not handed out again to hang the next process too
    assert not any(Path(f"/proc/{pid}").exists() for pid in frozen)  # the stuck process was killed


def test_beat_schedule_triggers_incremental_scans(stack_factory: Any, tmp_path: Path, samples: Path) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'beat.db'}")
    stack.put("media/face.jpg", samples / "face.jpg")
    stack.worker()
    stack.beat([{"uri": stack.uri("media/"), "every_s": 2}])

    def complete_beat_scans() -> list[dict[str, Any]]:
        return stack.query("SELECT * FROM scans WHERE kind = 'beat' AND status = 'complete' ORDER BY id")

    first = wait_for(
        lambda: [s for s in complete_beat_scans() if s["total"] == 1], timeout_s=120, what="a scheduled scan"
    )[0]
    stack.put("media/speech.wav", samples / "speech.wav")
    later = wait_for(
        lambda: [s for s in complete_beat_scans() if s["id"] > first["id"] and s["total"] == 1],
        timeout_s=120,
        what="a scheduled scan of the new object",
    )[0]
    assert later["skipped"] == 1  # the image, analysed by the first run, is not queued again
    rows = stack.rows()
    assert rows[stack.uri("media/face.jpg")]["scan_id"] == first["id"]
    assert rows[stack.uri("media/speech.wav")]["scan_id"] == later["id"]
    between = [s for s in complete_beat_scans() if first["id"] < s["id"] < later["id"]]
    assert all(s["total"] == 0 and s["skipped"] == 1 for s in between)  # runs with nothing new
