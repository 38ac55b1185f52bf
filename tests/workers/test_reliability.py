"""Faults injected with real processes: S3 failing under a video's chord, a poison message, bad inputs,
refused serialisations, secrets. Every time the scan completes with exactly one row per object."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import redis

from db import queries
from pipeline.pack import Manifest, MemberSpec
from tests.conftest import REPO
from tests.workers.conftest import (
    REDIS_DBS,
    FaultyProxy,
    OutageProxy,
    PrivateRedis,
    Stack,
    wait_for,
    zip_bytes,
)
from tests.workers.test_distributed import details, mixed_bucket, queue_video_chord
from workers.celery_app import make_app
from workers.settings import Settings
from workers.tasks import count_delivery

pytestmark = [pytest.mark.services, pytest.mark.slow]

SCAN_TIMEOUT_S = 240


def send_video_chord(stack: Stack, key: str, video: Path) -> tuple[str, int]:
    """Put ``video`` at ``key`` and queue its chord straight away (no analyze_object, no split_video:
    every GET of the object is then a chord part's). Returns (uri, scan id)."""
    etag = stack.put(key, video)
    uri = stack.uri(key)
    return uri, queue_video_chord(stack, uri, etag, video)


def scan_video_through(stack: Stack, proxy: FaultyProxy, video: Path, *, visibility_s: int) -> str:
    """A worker whose S3 is behind ``proxy`` scores ``video`` as a chord queued straight away; returns its
    URI once the scan is complete, and closes the proxy however it ends."""
    try:
        stack.env.update(DEEPSCAN_VISIBILITY_TIMEOUT_S=str(visibility_s), DEEPSCAN_S3_ENDPOINT_URL=proxy.url)
        stack.worker()
        uri, scan_id = send_video_chord(stack, "media/clip.mp4", video)
        wait_for(lambda: stack.scan(scan_id)["status"] == "complete", timeout_s=SCAN_TIMEOUT_S, what="scan")
    finally:
        proxy.close()
    return uri


@pytest.mark.parametrize(("mode", "faults"), [("slowdown", 8), ("error500", 8), ("reset", 8), ("slow", None)])
def test_a_chord_part_retries_through_transient_s3_faults(
    stack_factory: Any, tmp_path: Path, samples: Path, mode: str, faults: int | None
) -> None:
    """More faults than botocore's own attempts (5): the part fails once at task level, retries with
    backoff inside the chord, and the video ends with a verdict. A body that drips (every download slow)
    just takes longer."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'faults.db'}")
    proxy = FaultyProxy(stack.s3_endpoint, marker="clip.mp4", faults=faults, mode=mode)
    # visibility 60 s: retry delays capped at 15 s, so the test waits seconds, not minutes; the soft time
    # limit (48 s) leaves room for botocore's own backoff on 503 SlowDown (up to 1+2+4+8 s within one
    # try: at 20 s, a soft limit of 16 s, it was met once)
    uri = scan_video_through(stack, proxy, samples / "talking_face.mp4", visibility_s=60)
    rows = stack.rows()
    assert list(rows) == [uri] and rows[uri]["status"] == "ok", rows[uri]["reason"]
    assert stack.frames(uri) == [0, 1, 2, 3, 4, 5]
    assert details(rows[uri])["parts"]["failed_segments"] == []
    if faults is None:  # slowed, never failed: nothing to retry
        assert proxy.failed and not proxy.passed and "Retry in" not in stack.log("worker")
    else:
        assert len(proxy.failed) == faults and proxy.passed  # every fault was met, then the download passed
        assert "Retry in" in stack.log("worker")


def test_a_chord_part_that_never_reaches_s3_gives_the_video_an_error_row(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """S3 refuses every GET of the video: the parts' retries run out, the chord's error callback writes
    the video's error row, and the scan completes instead of waiting for the missing parts."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'outage.db'}")
    proxy = FaultyProxy(stack.s3_endpoint, marker="clip.mp4", faults=None, mode="reset")
    uri = scan_video_through(stack, proxy, samples / "talking_face.mp4", visibility_s=20)
    rows = stack.rows()
    assert list(rows) == [uri]
    assert (rows[uri]["status"], rows[uri]["fake_probability"]) == ("error", None)
    assert "unreachable" in rows[uri]["reason"] or "unavailable" in rows[uri]["reason"], rows[uri]["reason"]
    assert len(proxy.failed) > 5  # botocore's attempts, then the task's retries


HOOKS = Path(__file__).resolve().parent / "hooks"  # sitecustomize.py: the test-only crash hook


def test_a_poison_message_is_given_up_after_max_deliveries(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """A file whose analysis kills the pool process every time: Celery hands its task straight back
    (reject on worker lost); after ``DEEPSCAN_MAX_DELIVERIES`` the task is given up with an error row,
    the scan completes, and the worker goes on with the next object."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'poison.db'}")
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "a-CRASHME.jpg").write_bytes((samples / "face.jpg").read_bytes())
    (folder / "b-face.jpg").write_bytes((samples / "face.jpg").read_bytes())
    # one delivery: each crash costs a pool restart (TensorFlow and the pack load again), half a minute here
    stack.env["DEEPSCAN_MAX_DELIVERIES"] = "1"
    stack.worker(PYTHONPATH=f"{HOOKS}{os.pathsep}{REPO}", DEEPSCAN_TEST_CRASH_ON="CRASHME")
    proc = stack.cli(
        "scan", str(folder), "--wait", "--timeout", str(SCAN_TIMEOUT_S), timeout_s=SCAN_TIMEOUT_S + 60
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + stack.log("worker")[-3000:]
    final = json.loads(proc.stdout.splitlines()[-1])
    assert final["status"] == "complete" and final["total"] == final["done"] == 2

    rows = stack.rows(folder.as_uri())
    poison, face = rows[(folder / "a-CRASHME.jpg").as_uri()], rows[(folder / "b-face.jpg").as_uri()]
    assert (poison["status"], poison["fake_probability"], face["status"]) == ("error", None, "ok")
    assert "given up after 1 delivery" in poison["reason"]
    assert stack.log("worker").count("exited with 'exitcode 70'") == 1  # killed once, then never run again


# -- a corpus of bad inputs --------------------------------------------------------------------------------

PEAK_RSS_LIMIT_KB = 3 * 2**20  # 3 GiB, in the kilobytes getrusage and /proc report
CORPUS_SCAN_LIMIT_S = 420  # generous: two shared cores; the scan itself takes about a minute alone
# The CLI in a process that reports its own peak resident memory: VmHWM, which starts afresh at exec.
# (getrusage's ru_maxrss does not: Linux carries it across exec, so a child of a 4 GB pytest process
# reported 4.3 GB in a full-suite run, the parent's size, not the scan's.)
MEASURED_CLI = """
import json, sys
from pathlib import Path
from workers.cli import main
code = main(sys.argv[1:])
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(json.dumps({"VmHWM": int(status["VmHWM"].split()[0])}), file=sys.stderr)
sys.exit(code)
"""


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True, timeout=120)


def wav_header(n_samples: int, rate_hz: int = 16_000) -> bytes:
    data_bytes = 2 * n_samples
    return (
        b"RIFF"
        + (36 + data_bytes).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + struct.pack("<HHIIHH", 1, 1, rate_hz, 2 * rate_hz, 2, 16)
        + b"data"
        + data_bytes.to_bytes(4, "little")
    )


def claim_absurd_duration(mp4: bytes) -> bytes:
    """Rewrite every mvhd/mdhd duration (version 0 boxes) to 2**32 - 1 ticks: days of claimed video."""
    data = bytearray(mp4)
    for box in (b"mvhd", b"mdhd"):
        start = 0
        while (at := data.find(box, start)) != -1:
            if data[at + 4] == 0:  # version 0: 4-byte times, timescale, duration
                data[at + 20 : at + 24] = b"\xff\xff\xff\xff"
            start = at + 4
    return bytes(data)


def deflated_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tar_entry(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, target
    return info


def write_bad_inputs(folder: Path, samples: Path) -> list[Path]:
    """Files that must each end with one row, a non-ok status and a reason. Returns them."""
    from tests.pipeline.test_media import png_claiming

    folder.mkdir()
    rng = np.random.default_rng(7)
    jpeg, png = (samples / "face.jpg").read_bytes(), (samples / "no_face.png").read_bytes()
    mp4, wav = (samples / "talking_face.mp4").read_bytes(), (samples / "speech.wav").read_bytes()
    files: dict[str, bytes] = {
        "empty.jpg": b"",
        "empty.mp4": b"",
        "random.bin": rng.bytes(65536),
        "random.mp4": rng.bytes(65536),
        "text.jpg": b"this is not a photo\n" * 50,
        "text.wav": b"nor a recording\n" * 50,
        "text.mp4": b"nor a film\n" * 50,
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": png[: len(png) // 3],
        "truncated.mp4": mp4[: len(mp4) // 3],
        "truncated.wav": wav[:30],
        "header_only.wav": wav_header(0),
        "50ms.wav": wav_header(800) + (0.3 * 32767 * np.sin(np.arange(800) / 5)).astype("<i2").tobytes(),
        "silent.wav": wav_header(48_000) + bytes(96_000),
        "one_pixel.png": cv2.imencode(".png", np.full((1, 1, 3), 128, np.uint8))[1].tobytes(),
        "bomb_40000x40000.png": png_claiming(40_000, 40_000),
        "absurd_duration.mp4": claim_absurd_duration(mp4),
        "zip_bomb.zip": deflated_zip({"zeros.jpg": bytes(64 * 2**20)}),
        "tar_bomb.tar.gz": tar_bytes([(tar_entry("zeros.jpg", 64 * 2**20), bytes(64 * 2**20))], "w:gz"),
        "escapes.zip": zip_bytes({"../escape.jpg": jpeg, "/etc/absolute.jpg": jpeg}),
        "escapes.tar": tar_bytes(
            [
                (tar_entry("../escape.jpg", len(jpeg)), jpeg),
                (tar_entry("/etc/absolute.jpg", len(jpeg)), jpeg),
                (tar_entry("link.jpg", kind=tarfile.SYMTYPE, target="/etc/passwd"), None),
                (tar_entry("hard.jpg", kind=tarfile.LNKTYPE, target="/etc/shadow"), None),
            ]
        ),
        "nested.zip": zip_bytes({"inner.zip": zip_bytes({"bad.jpg": b"not a jpeg"})}),
        "control\x07chars\n\x1b[31m.jpg": rng.bytes(1024),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "face.jpg").symlink_to(samples / "face.jpg")  # a link in the folder: never followed
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(folder / "audio_only.mp4")
    )
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=0.2:size=64x48:rate=25", str(folder / "0.2s.mp4"))
    return sorted(path for path in folder.iterdir() if not path.is_symlink())


# Two files of the corpus are readable after all, and must be read right: an MP4 holding only a second
# of tone is audio by its content, and scored; the MP4 whose movie header claims 49 days has streams of
# 6 s, which is what probe_video trusts (3 segments, not two million).
READABLE = {"audio_only.mp4": ("audio", "ok"), "absurd_duration.mp4": ("video", "ok")}


def assert_one_bad_row_each(stack: Stack, folder: Path, files: list[Path]) -> dict[str, dict[str, Any]]:
    rows = stack.rows(folder.as_uri() + "/")
    containers = {uri.split("#")[0] for uri in rows}
    assert containers == {path.as_uri() for path in files}  # one row each (plus members), the link none
    for uri, row in rows.items():
        name = Path(uri.removeprefix(folder.as_uri() + "/")).name
        if name in READABLE:
            assert (row["media_type"], row["status"]) == READABLE[name], (uri, row)
            continue
        assert row["status"] != "ok" and row["fake_probability"] is None and row["reason"], (uri, row)
    assert stack.frames((folder / "absurd_duration.mp4").as_uri()) == [0, 1, 2, 3, 4, 5]
    return rows


@pytest.fixture
def bad_inputs(tmp_path: Path, samples: Path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "bad"
    return folder, write_bad_inputs(folder, samples)


def test_bad_inputs_in_process_each_get_a_row_in_bounded_memory(
    stack_factory: Any, tmp_path: Path, bad_inputs: tuple[Path, list[Path]]
) -> None:
    """``deepscan scan DIR`` without a broker: the same tasks, in the scanning process."""
    folder, files = bad_inputs
    stack = stack_factory(f"sqlite:///{tmp_path / 'bad.db'}")
    started = time.monotonic()
    proc = stack.python(
        MEASURED_CLI, "scan", str(folder), unset=("DEEPSCAN_BROKER_URL",), timeout_s=CORPUS_SCAN_LIMIT_S
    )
    elapsed_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = json.loads(proc.stdout.splitlines()[-1])
    assert final["status"] == "complete" and final["total"] == final["done"], final
    rows = assert_one_bad_row_each(stack, folder, files)
    peaks = json.loads(proc.stderr.strip().splitlines()[-1])
    print(f"in process: {len(files)} files, {len(rows)} rows, {elapsed_s:.0f} s, peak RSS {peaks} kB")
    assert max(peaks.values()) < PEAK_RSS_LIMIT_KB, peaks


def test_bad_inputs_on_a_worker_each_get_a_row_in_bounded_memory(
    stack_factory: Any, tmp_path: Path, bad_inputs: tuple[Path, list[Path]]
) -> None:
    folder, files = bad_inputs
    stack = stack_factory(f"sqlite:///{tmp_path / 'bad.db'}")
    worker = stack.worker()
    proc = stack.cli(
        "scan",
        str(folder),
        "--wait",
        "--timeout",
        str(CORPUS_SCAN_LIMIT_S),
        timeout_s=CORPUS_SCAN_LIMIT_S + 60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + stack.log("worker")[-3000:]
    final = json.loads(proc.stdout.splitlines()[-1])
    assert final["status"] == "complete" and final["total"] == final["done"], final
    rows = assert_one_bad_row_each(stack, folder, files)
    peaks = {pid: peak_rss_kb(pid) for pid in [worker.pid, *stack.pool_children(worker)]}
    print(f"on a worker: {len(files)} files, {len(rows)} rows, peak RSS {peaks} kB")
    assert max(peaks.values()) < PEAK_RSS_LIMIT_KB, peaks
    assert worker.poll() is None and "exited with" not in stack.log("worker")  # no pool process died


def peak_rss_kb(pid: int) -> int:
    """VmHWM, the high-water mark of a live process's resident memory, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


# -- security ----------------------------------------------------------------------------------------------

SEND_PICKLE = """
import os, sys
from workers.celery_app import GPU_QUEUE, app

class Payload:  # unpickling it would create the marker directory: proof that pickle was accepted
    def __reduce__(self):
        return (os.mkdir, (sys.argv[1],))

ref = {"uri": sys.argv[2]}
app.send_task(
    "deepscan.analyze_object", kwargs={"ref": ref, "scan_id": None, "payload": Payload()},
    serializer="pickle", queue=GPU_QUEUE,
)
"""
AWS_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzzSECRETzz"
DB_PASSWORD = "pg-Pa55word-that-must-not-leak"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_pickle_is_refused_and_secrets_never_logged_or_stored(
    db_url: str, stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """A pickled message on the queue is refused and nothing runs; the AWS secret key and the database
    password appear in no log, no CLI output and no row. (The test server trusts loopback connections,
    so the password in the URL is carried everywhere but never checked.)"""
    from sqlalchemy.engine import make_url

    url = make_url(db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    stack = stack_factory(url)
    stack.env.update(AWS_SECRET_ACCESS_KEY=AWS_SECRET, DEEPSCAN_LOG_LEVEL="DEBUG")
    stack.put("media/face.jpg", samples / "face.jpg")
    stack.put("media/corrupt.jpg", samples / "corrupt.jpg")
    worker = stack.worker()

    marker, target = tmp_path / "unpickled", stack.uri("media/face.jpg")
    sent = stack.python(SEND_PICKLE, str(marker), target)
    assert sent.returncode == 0, sent.stderr[-3000:]
    wait_for(lambda: "untrusted content" in stack.log("worker"), timeout_s=SCAN_TIMEOUT_S, what="refusal")
    assert not marker.exists() and stack.rows() == {}  # nothing unpickled, nothing ran

    # the worker is still up and takes JSON tasks; a missing object gives an error row on the way
    proc = stack.cli("scan", stack.uri("media/"), "--wait", "--timeout", str(SCAN_TIMEOUT_S))
    assert proc.returncode == 0, proc.stderr[-3000:] + stack.log("worker")[-3000:]
    assert worker.poll() is None
    assert {row["status"] for row in stack.rows().values()} == {"ok", "decode_error"}

    texts = {path.name: path.read_text(errors="replace") for path in stack.work.glob("*.log")}
    texts["cli stdout"], texts["cli stderr"] = proc.stdout, proc.stderr
    texts["results"] = repr(stack.query("SELECT * FROM results"))
    texts["frames"] = repr(stack.query("SELECT * FROM frame_results"))
    texts["scans"] = repr(stack.query("SELECT * FROM scans"))
    for where, text in texts.items():
        assert AWS_SECRET not in text and DB_PASSWORD not in text, where


# -- duplicate delivery --------------------------------------------------------------------------------

SEND_TWICE = """
import sys
from db import queries
from db.session import session_scope
from workers.resources import open_sessions
from workers.storage import ObjectRef
from workers.tasks import analyze_object, split_video

image, video = (ObjectRef(uri=uri, etag=etag) for uri, etag in (sys.argv[1:3], sys.argv[3:5]))
with session_scope(open_sessions()) as session:
    scan_id = queries.create_scan(
        session, uri="s3://dup/", kind="scan", model_name="test-pack", model_version="0.0.1", total=2
    ).id
for _ in range(2):  # every message delivered twice, as at-least-once delivery allows
    analyze_object.apply_async(kwargs={"ref": image.to_dict(), "scan_id": scan_id})
    split_video.apply_async(kwargs={"ref": video.to_dict(), "scan_id": scan_id})
print(scan_id)
"""


def test_duplicate_deliveries_leave_one_row_per_object_and_no_temp_files(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'dup.db'}")
    image_etag = stack.put("media/face.jpg", samples / "face.jpg")
    video_etag = stack.put("media/clip.mp4", samples / "talking_face.mp4")
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    worker = stack.worker(TMPDIR=str(worker_tmp))
    image, video = stack.uri("media/face.jpg"), stack.uri("media/clip.mp4")
    proc = stack.python(SEND_TWICE, image, image_etag, video, video_etag)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scan_id = int(proc.stdout.split()[-1])
    wait_for(lambda: stack.scan(scan_id)["status"] == "complete", timeout_s=SCAN_TIMEOUT_S, what="scan")
    # let the duplicates drain: both chords of the video finish, each writing the same row
    wait_for(
        lambda: stack.log("worker").count("finish_video[") >= 4, timeout_s=SCAN_TIMEOUT_S, what="two chords"
    )
    rows = stack.rows()
    assert sorted(rows) == [video, image] and {r["status"] for r in rows.values()} == {"ok"}
    assert stack.frames(video) == [0, 1, 2, 3, 4, 5]  # each second once, not twice
    assert stack.scan(scan_id)["total"] == 2
    assert stack.query("SELECT COUNT(*) AS n FROM scans WHERE status = 'running'")[0]["n"] == 0
    stack.stop(worker)
    assert list(worker_tmp.iterdir()) == []  # the fetched copies went with the pool process


# -- the database away -----------------------------------------------------------------------------------

OUTAGE_S = 30


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_outage_mid_scan_loses_nothing(
    db_url: str, stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """PostgreSQL stops answering for 30 s mid-scan (a proxy in front of it cuts and refuses connections;
    the shared server is never stopped): the workers' retries and the waiting producer ride it out, and
    the scan completes with one row per object."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    proxy = OutageProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        stack = stack_factory(
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        )
        keys = ["media/a-clip.mp4", "media/b-clip.mp4"] + [f"media/face{i}.jpg" for i in range(6)]
        for key in keys:
            stack.put(key, samples / ("talking_face.mp4" if key.endswith(".mp4") else "face.jpg"))
        stack.worker()
        waiting = stack.cli_in_background("scan", stack.uri("media/"), "--wait", "--timeout", "400")
        # the first task done: the pack is loaded and the rest of the scan still to come
        wait_for(lambda: "succeeded in" in stack.log("worker"), timeout_s=SCAN_TIMEOUT_S, what="a task")
        proxy.down()
        time.sleep(OUTAGE_S)
        proxy.up()
        out, err = waiting.communicate(timeout=460)
        assert waiting.returncode == 0, err[-3000:] + stack.log("worker")[-3000:]
        assert proxy.refused > 0  # someone knocked while it was down
        final = json.loads(out.splitlines()[-1])
        assert final["status"] == "complete" and final["total"] == final["done"] == len(keys)
        rows = stack.rows()
        assert sorted(rows) == sorted(stack.uri(key) for key in keys)
        assert {row["status"] for row in rows.values()} == {"ok"}
        assert stack.query("SELECT COUNT(*) AS n FROM scans WHERE status = 'running'")[0]["n"] == 0
        print(f"database away {OUTAGE_S} s: {proxy.refused} connections refused, {len(rows)} rows")
    finally:
        proxy.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_producer_waits_out_a_database_outage_after_queuing(db_url: str, monkeypatch: Any) -> None:
    """The producer's last steps (mark the scan running, complete it if the tasks are done) meet the database
    away: they are tried again until it answers, and give up with a message after the grace period."""
    import threading

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from workers import producer
    from workers.errors import ScanError

    url = make_url(db_url)
    proxy = OutageProxy(url.host or "127.0.0.1", url.port or 5432)
    engine = create_engine(url.set(host="127.0.0.1", port=proxy.port), pool_pre_ping=True)
    calls = 0

    def step() -> None:
        nonlocal calls
        calls += 1
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    try:
        step()  # a pooled connection that the outage will cut
        proxy.down()
        threading.Timer(2.5, proxy.up).start()
        started = time.monotonic()
        producer._through_database_outage(step, "scan 1")
        assert time.monotonic() - started >= 2.0 and calls >= 3 and proxy.refused > 0

        proxy.down()
        monkeypatch.setattr(producer, "DATABASE_OUTAGE_GRACE_S", 2.0)
        with pytest.raises(ScanError, match="scan 1: the database has not answered for 2 s"):
            producer._through_database_outage(step, "scan 1")
    finally:
        proxy.close()
        engine.dispose()


def producer_without_broker(tmp_path: Path, monkeypatch: Any, *, n_objects: int) -> tuple[Path, list[str]]:
    """A folder of ``n_objects`` files and a producer that publishes nothing: what it would queue is
    appended to the list returned. A manifest-only pack (the producer reads its name and version)."""
    from workers import producer
    from workers.settings import get_settings

    folder = tmp_path / "media"
    folder.mkdir()
    for i in range(n_objects):
        (folder / f"face{i}.jpg").write_bytes(f"object {i}".encode())
    pack = tmp_path / "pack"
    pack.mkdir()
    members = (MemberSpec("spectral", "image", "spectral.keras", (64, 64), "spectral"),)
    (pack / "manifest.json").write_text(json.dumps(Manifest("test-pack", "0.0.1", members).to_dict()))
    monkeypatch.setenv("DEEPSCAN_BROKER_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("DEEPSCAN_MODELS_DIR", str(pack))
    get_settings.cache_clear()
    queued: list[str] = []
    monkeypatch.setattr(producer, "check_broker", lambda: None)
    monkeypatch.setattr(producer, "queue_object", lambda ref, scan_id: queued.append(ref.uri))
    return folder, queued


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_outage_while_queuing_is_waited_out_page_by_page(
    db_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """PostgreSQL stops answering after the first object of a six-object folder is queued (pages of two):
    the producer waits at the next page's bookkeeping until it answers, then queues the rest, each object
    once, and counts each page once. Away for longer than the grace period, the scan stops with a
    ScanError that says why, not with the driver's error."""
    import threading

    from sqlalchemy.engine import make_url

    from db.session import make_engine, migrate, session_factory, session_scope
    from workers import producer
    from workers.errors import ScanError
    from workers.settings import get_settings

    migrate(db_url)
    url = make_url(db_url)
    proxy = OutageProxy(url.host or "127.0.0.1", url.port or 5432)
    engine = make_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    sessions = session_factory(engine)
    folder, queued = producer_without_broker(tmp_path, monkeypatch, n_objects=6)
    monkeypatch.setattr(producer, "PAGE_SIZE", 2)

    def outage_after_the_first_object(progress: Any) -> None:
        if len(queued) == 1:
            proxy.down()
            threading.Timer(2.5, proxy.up).start()

    try:
        started = time.monotonic()
        scan = producer.start_scan(str(folder), sessions=sessions, on_progress=outage_after_the_first_object)
        assert scan is not None and (scan.queued, scan.skipped) == (6, 0)
        assert time.monotonic() - started >= 2.0 and proxy.refused > 0
        assert sorted(queued) == sorted((folder / f"face{i}.jpg").as_uri() for i in range(6))
        with session_scope(sessions) as session:
            row = session.get_one(queries.Scan, scan.scan_id)
            assert (row.status, row.total, row.skipped) == ("running", 6, 0)

        queued.clear()
        monkeypatch.setattr(producer, "DATABASE_OUTAGE_GRACE_S", 2.0)
        monkeypatch.setattr(
            producer, "queue_object", lambda ref, scan_id: (queued.append(ref.uri), proxy.down())
        )
        with pytest.raises(ScanError, match="the database has not answered for 2 s"):
            producer.start_scan(str(folder), sessions=sessions, force=True)
        assert len(queued) == 2  # the first page went out; the second waited, then the scan stopped
    finally:
        proxy.close()
        engine.dispose()
        get_settings.cache_clear()


def test_a_scan_left_queuing_by_a_killed_producer_does_not_hold_back_scheduled_scans(
    db_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A scheduled scan's worker is killed while listing (no exception handler runs): its scan stays
    'queuing', and the task handed out again must not take that scan for one under way for a day. The
    task's hard time limit bounds a live producer: a scheduled scan queuing for longer is marked failed
    with the reason and the run goes ahead; a younger one is under way (the run skips). A scan queued by
    hand has no such bound and is left alone."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Scan, ScanKind, ScanStatus, utcnow
    from db.session import make_engine, migrate, session_factory, session_scope
    from workers import producer
    from workers.settings import get_settings
    from workers.storage import canonical_source

    migrate(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    folder, queued = producer_without_broker(tmp_path, monkeypatch, n_objects=3)
    monkeypatch.setenv("DEEPSCAN_VISIBILITY_TIMEOUT_S", "600")  # hard time limit 540 s
    get_settings.cache_clear()
    source = canonical_source(str(folder))

    def left_queuing(kind: ScanKind, minutes_ago: float) -> int:
        with session_scope(sessions) as session:
            scan_id = queries.create_scan(
                session, uri=source, kind=kind, model_name="test-pack", model_version="0.0.1",
                status=ScanStatus.QUEUING,
            ).id  # fmt: skip
            created = utcnow() - timedelta(minutes=minutes_ago)
            session.execute(update(Scan).where(Scan.id == scan_id).values(created_at=created))
        return scan_id

    def status(scan_id: int) -> tuple[str, str | None]:
        with session_scope(sessions) as session:
            scan = session.get_one(Scan, scan_id)
            return scan.status, scan.error

    def scheduled_run() -> Any:
        return producer.start_scan(str(folder), kind=ScanKind.BEAT, skip_if_active=True, sessions=sessions)

    try:
        by_hand = left_queuing(ScanKind.SCAN, minutes_ago=120)
        assert scheduled_run() is None and status(by_hand) == ("queuing", None)
        with session_scope(sessions) as session:
            queries.finish_scan(session, scan_id=by_hand)

        killed = left_queuing(ScanKind.BEAT, minutes_ago=5)  # 300 s: its producer may still be at it
        assert scheduled_run() is None and queued == [] and status(killed) == ("queuing", None)

        with session_scope(sessions) as session:  # 540 s of hard limit and 5 min of margin have passed
            created = utcnow() - timedelta(seconds=540) - producer.ABANDONED_MARGIN - timedelta(seconds=5)
            session.execute(update(Scan).where(Scan.id == killed).values(created_at=created))
        scan = scheduled_run()
        assert scan is not None and scan.queued == 3 and len(queued) == 3
        left, error = status(killed)
        assert (
            left == "failed"
            and "its producer stopped while queuing" in (error or "")
            and "540 s" in (error or "")
        )
        assert status(scan.scan_id)[0] == "running"
    finally:
        engine.dispose()
        get_settings.cache_clear()


# -- the broker away -------------------------------------------------------------------------------------

REDIS_DOWN_S = 12  # longer than the waiting producer's broker check interval (10 s): it meets the outage


def test_a_delivery_count_waits_out_a_redis_restart(private_redis: PrivateRedis) -> None:
    """A task's delivery is counted in Redis before the task runs, where no autoretry reaches: with Redis
    away, the count waits for it, as the result store does, instead of failing the task (a chord part that
    failed there failed its whole video; a two-process run of this suite met it)."""
    backend = make_app(Settings(broker_url=private_redis.url)).backend
    request = SimpleNamespace(is_eager=False, id="a-task", retries=0)
    assert count_delivery(request, backend) == 1
    restart = threading.Thread(target=private_redis.restart, kwargs={"down_s": 3})
    restart.start()
    probe = redis.Redis.from_url(private_redis.url, socket_connect_timeout=1)

    def down() -> bool:
        try:
            probe.ping()
        except redis.ConnectionError:
            return True
        return False

    wait_for(down, timeout_s=10, poll_s=0.05, what="Redis to go away")
    assert count_delivery(request, backend) == 2  # waited for the restarted Redis, which kept the first
    restart.join()
    assert private_redis.restarts == 1


class ReplyLostOnce:
    """A result backend whose first write Redis applies but whose reply never arrives, so ``ensure`` runs
    the write again (as it does after a ConnectionError that met that instant)."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.client = backend, backend.client

    def ensure(self, fn: Callable[..., Any], args: tuple[Any, ...], **policy: Any) -> Any:
        fn(*args)  # applied; the reply is lost
        return self.backend.ensure(fn, args, **policy)


def test_a_delivery_is_counted_once_when_its_count_is_retried(redis_base: str) -> None:
    """A retry of the count after Redis applied it adds nothing (an increment counted the delivery twice,
    giving a task up one delivery early); the next delivery still counts."""
    backend = make_app(Settings(broker_url=f"{redis_base}/{next(REDIS_DBS)}")).backend
    request = SimpleNamespace(is_eager=False, id=f"a-task-{uuid.uuid4().hex}", retries=0)
    assert count_delivery(request, ReplyLostOnce(backend)) == 1
    assert count_delivery(request, ReplyLostOnce(backend)) == 2
    assert count_delivery(SimpleNamespace(is_eager=False, id=request.id, retries=1), backend) == 1


def test_a_redis_restart_mid_scan_loses_nothing(
    private_redis: PrivateRedis, stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """The broker and result backend (a Redis of the test's own, persisting as a broker should) is killed
    mid-scan and comes back 12 s later: the worker reconnects, the task it was running finishes, the
    waiting `deepscan scan --wait` rides the outage out, and the scan completes with one row per object,
    the video's chord included."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'restart.db'}", redis_url=private_redis.url)
    stack.env.update(DEEPSCAN_VISIBILITY_TIMEOUT_S="30", DEEPSCAN_VIDEO_SEGMENT_S="1")
    mixed_bucket(stack, samples)
    worker = stack.worker()
    waiting = stack.cli_in_background("scan", stack.uri("media/"), "--wait", "--timeout", str(SCAN_TIMEOUT_S))
    # killed with the video's chord under way: a segment taken, parts of the chord stored in Redis
    wait_for(
        lambda: "score_segment[" in stack.log("worker"),
        timeout_s=SCAN_TIMEOUT_S,
        poll_s=0.05,
        what="the chord",
    )
    private_redis.restart(down_s=REDIS_DOWN_S)
    out, err = waiting.communicate(timeout=SCAN_TIMEOUT_S + 30)
    assert waiting.returncode == 0, err[-3000:] + stack.log("worker")[-3000:]
    final = json.loads(out.splitlines()[-1])
    assert final["status"] == "complete" and final["total"] == final["done"] == 7, final
    rows = stack.rows()
    assert len(rows) == 7 and {row["status"] for row in rows.values()} == {
        "ok",
        "decode_error",
        "expanded",
        "no_face",
    }
    video = stack.uri("media/talking_face.mp4")
    assert rows[video]["status"] == "ok" and stack.frames(video) == [0, 1, 2, 3, 4, 5]
    assert stack.query("SELECT COUNT(*) AS n FROM scans WHERE status = 'running'")[0]["n"] == 0
    assert worker.poll() is None  # it rode the outage out
    print(f"Redis killed and back after {REDIS_DOWN_S} s: {len(rows)} rows, one per object")


def test_overlapping_scans_of_one_prefix_both_complete_with_one_row_per_object(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """Two `deepscan scan` of the same prefix at once: each queues what it listed, the rows are upserted
    once per object, and neither scan is left running."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'overlap.db'}")
    etags = mixed_bucket(stack, samples)
    stack.worker()
    scans = [
        stack.cli_in_background("scan", stack.uri("media/"), "--wait", "--timeout", str(SCAN_TIMEOUT_S))
        for _ in range(2)
    ]
    finals = []
    for waiting in scans:
        out, err = waiting.communicate(timeout=SCAN_TIMEOUT_S + 30)
        assert waiting.returncode == 0, err[-3000:] + stack.log("worker")[-3000:]
        finals.append(json.loads(out.splitlines()[-1]))
    assert all(final["status"] == "complete" for final in finals), finals
    rows = stack.rows()
    assert len(rows) == 7 and {uri.split("#")[0] for uri in rows} == {stack.uri(key) for key in etags}
    assert stack.frames(stack.uri("media/talking_face.mp4")) == [0, 1, 2, 3, 4, 5]  # each second once
    assert stack.query("SELECT COUNT(*) AS n FROM scans WHERE status != 'complete'")[0]["n"] == 0
