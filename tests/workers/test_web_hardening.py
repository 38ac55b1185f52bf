"""What a hostile or careless client can send ``deepscan serve``: file names that climb out of the upload
folder, request bodies without end, ids beyond what the database holds, requests that wait on a busy pool.
Each gets a 4xx with a reason or a harmless name; none writes outside the upload folder, fills the memory,
starves the server of threads or ends in a 500.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.workers.conftest import wait_for
from tests.workers.serving import serve
from tests.workers.test_api import PNG_MAGIC, TOKEN, make_settings, upload, wait_job
from workers.web import app as web_app
from workers.web.app import create_app, encode_cursor, safe_filename
from workers.web.jobs import Job, JobPool, PoolBusyError, Upload

BEYOND_INT32 = 2**31  # ids are INTEGER: PostgreSQL's int4 ends below this
BEYOND_INT64 = 2**63  # and SQLite's below this
# more requests waiting for one explanation than AnyIO has worker threads (40), which every sync route and
# sync dependency of the app shares
EXPLANATION_WAITERS = 48
PROMPT_S = 10.0  # a request the server is free to answer gets its answer within this, on two busy cores


@contextmanager
def api_client(random_pack: Path, tmp_path: Path, **overrides: Any) -> Iterator[TestClient]:
    """The app with a token, answering a failure of ours as the 500 a client would get, not raising it."""
    app = create_app(make_settings(random_pack, tmp_path, api_token=TOKEN, **overrides))
    with TestClient(
        app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


@pytest.fixture
def api(random_pack: Path, tmp_path: Path) -> Iterator[TestClient]:
    with api_client(random_pack, tmp_path) as client:
        yield client


def test_a_file_name_cannot_steer_the_stored_upload_out_of_the_upload_folder(
    stack_factory: Any, tmp_path: Path
) -> None:
    """With ``DEEPSCAN_UPLOAD_URI`` a folder, an upload is stored at ``FOLDER/JOB/NAME``: a name whose
    percent-escapes decode to ``../..`` (a legal file name on Linux) must not put it, or overwrite a
    file, anywhere else; nor may a name of ``..`` fail the job."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'uploads.db'}")  # a broker, and no worker to take the jobs
    shared = tmp_path / "shared"
    folder = shared / "uploads"
    env = {**stack.env, "DEEPSCAN_UPLOAD_URI": f"{folder.as_uri()}/"}
    names = ["..%2f..%2fescaped.jpg", ".."]
    with serve(env, stack.work) as base:
        files = [("file", (name, b"not media", "application/octet-stream")) for name in names]
        response = httpx.post(f"{base}/api/v1/jobs", files=files, data={"explain": "never"}, timeout=60)
        assert response.status_code == 202, response.text
        created = response.json()

        def settled() -> tuple[list[Path], list[str]] | None:
            """The files stored so far and the jobs failed, once every upload is one or the other."""
            jobs = [httpx.get(f"{base}{job['url']}", timeout=10).json() for job in created]
            failed = [f"{job['filename']}: {job['error']}" for job in jobs if job["status"] == "failed"]
            stored = sorted(p for p in shared.rglob("*") if p.is_file())
            return (stored, failed) if len(stored) + len(failed) == len(names) else None

        stored, failed = wait_for(settled, timeout_s=60, what="both uploads stored for the workers")
    assert all(p.is_relative_to(folder) for p in stored), f"stored outside {folder}: {stored}"
    assert not failed, failed
    assert {p.relative_to(folder).parent.name for p in stored} == {job["id"] for job in created}
    assert sorted(p.name for p in stored) == sorted(job["filename"] for job in created)


def test_a_safe_file_name_is_one_storable_path_component() -> None:
    assert safe_filename("..") == safe_filename(".") == safe_filename(" .. ") == "upload"
    assert safe_filename("...jpg") == "...jpg"
    long = safe_filename("视频" * 100 + ".mp4")  # 606 bytes of UTF-8: over a file system's 255
    assert len(long.encode()) <= 255 and long.startswith("视频")


def test_every_request_body_is_bounded_before_it_is_read(api: TestClient) -> None:
    """A scan request is a URI and a flag: a body of megabytes is refused with a 413 that says so, declared
    or chunked, and without the token with a 401; an ordinary request still gets its answer."""
    padding = "x" * (8 << 20)
    body = f'{{"uri": "s3://bucket/", "padding": "{padding}"}}'.encode()
    declared = api.post("/api/v1/scans", content=body, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "bytes" in declared.json()["detail"]
    anonymous = api.post(
        "/api/v1/scans", content=body, headers={"Authorization": "", "Content-Type": "application/json"}
    )
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 1 << 16):
            yield body[i : i + (1 << 16)]

    streamed = api.post("/api/v1/scans", content=chunked(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and "bytes" in streamed.json()["detail"]
    ordinary = api.post("/api/v1/scans", json={"uri": "s3://bucket/"})
    assert ordinary.status_code == 503 and "DEEPSCAN_BROKER_URL" in ordinary.json()["detail"]


@contextmanager
def listening(app: Any, root_path: str = "") -> Iterator[int]:
    """``app`` served by uvicorn on a free loopback port (under ``root_path``), in a thread; yields the port."""
    import uvicorn

    from tests.workers.serving import free_port

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", root_path=root_path)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or None, timeout_s=60, what="uvicorn listening")
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.parametrize("root_path", ["", "/deepscan"])
def test_an_upload_without_the_token_is_refused_before_its_body_is_read(
    random_pack: Path, tmp_path: Path, root_path: str
) -> None:
    """FastAPI receives a body before a route's dependencies check the token: without the gate, anyone
    could make the server take in (and spool to disk) an upload of up to DEEPSCAN_UPLOAD_MAX_MB. A client
    that promises 10 MB and sends a few bytes without the token gets its 401 at once, also behind a
    proxy that strips a path prefix (``--root-path``: the app sees the prefix in the path)."""
    import socket

    app = create_app(make_settings(random_pack, tmp_path, api_token=TOKEN))
    with (
        listening(app, root_path) as port,
        socket.create_connection(("127.0.0.1", port), timeout=PROMPT_S) as sock,
    ):
        sock.sendall(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: deepscan\r\nAuthorization: Bearer wrong\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n--b\r\n"
        )
        answer = b""
        while chunk := sock.recv(1 << 16):  # a timeout here: the server waits for the other 10 MB
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"bearer token" in answer


def test_ids_beyond_the_database_get_a_4xx_not_a_500(random_pack: Path, tmp_path: Path, db_url: str) -> None:
    """An id is any integer to FastAPI and an INTEGER column to the database, which fails on one beyond
    its range (SQLite past 2**63, PostgreSQL past 2**31): a 500 for a typo'd or probing URL."""
    with api_client(random_pack, tmp_path, database_url=db_url) as api:
        for row_id in (BEYOND_INT32, BEYOND_INT64):
            for url, params in (
                (f"/api/v1/results/{row_id}", {}),
                (f"/api/v1/results/{row_id}/timeline.png", {}),
                (f"/api/v1/scans/{row_id}", {}),
                ("/api/v1/results", {"scan": row_id}),
                ("/api/v1/results", {"cursor": encode_cursor(row_id)}),
            ):
                response = api.get(url, params=params)
                assert response.status_code < 500, (url, params, response.status_code, response.text)


def test_requests_waiting_for_an_explanation_leave_the_server_free(
    random_pack: Path, tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explanation waits for the pool (minutes behind long videos): were each request waiting for one
    to hold a worker thread, a few dozen would leave none for /healthz, a job's poll or an upload. With the
    pool's one thread busy, many requests wait for the same explanation while the server answers the
    rest; one that stops waiting does not cancel the explanation the others wait for; all get the PNG
    once the pool is free."""
    with api_client(random_pack, tmp_path, web_workers=1) as api:
        job = wait_job(api, upload(api, samples / "face.jpg").json()["url"])
        assert job["explanation"]["status"] == "available", job
        pool: JobPool = api.app.state.pool  # type: ignore[attr-defined]
        release = threading.Event()
        pool._executor.submit(release.wait)  # the pool's one thread, on a long job until released
        with ThreadPoolExecutor(EXPLANATION_WAITERS + 8, thread_name_prefix="client") as clients:

            def promptly(send: Callable[[], Any], what: str) -> Any:
                try:
                    return clients.submit(send).result(timeout=PROMPT_S)
                except FutureTimeout:
                    pytest.fail(f"{what}: no answer within {PROMPT_S:g} s while explanations are awaited")

            try:
                waiting = [
                    clients.submit(api.get, job["explanation_url"]) for _ in range(EXPLANATION_WAITERS)
                ]

                def explanation_status() -> str:
                    polled = promptly(lambda: api.get(job["url"]), "a job's poll")
                    return str(polled.json()["explanation"]["status"])

                wait_for(
                    lambda: explanation_status() == "pending",
                    timeout_s=PROMPT_S,
                    what="the explanation queued",
                )
                for _ in range(3):  # while the waiting requests arrive, and after
                    health = promptly(lambda: api.get("/healthz"), "/healthz")
                    assert health.status_code == 200 and health.json()["active_jobs"] == 0
                    assert explanation_status() == "pending"
                    time.sleep(0.5)
                created = promptly(lambda: upload(api, samples / "short.wav"), "an upload")
                assert created.status_code == 202, created.text
                assert not any(request.done() for request in waiting)

                monkeypatch.setattr(web_app, "EXPLANATION_WAIT_S", 0.5)
                impatient = promptly(lambda: api.get(job["explanation_url"]), "an impatient request")
                assert impatient.status_code == 503 and "ask again later" in impatient.json()["detail"]
                assert explanation_status() == "pending"  # still queued for the others
            finally:
                release.set()
            for request in waiting:
                png = request.result(timeout=120)
                assert png.status_code == 200 and png.content.startswith(PNG_MAGIC), png.text
        assert api.get(job["url"]).json()["explanation"]["status"] == "ready"
        assert wait_job(api, created.json()["url"])["result"]["status"] == "too_short"  # queued behind it


class PausingJobs(OrderedDict[str, Job]):
    """A pool's jobs whose next iteration, once ``pause`` is set, stops after its first job until a job is
    added (or a second passes): an upload lands in the middle of it, every time."""

    def __init__(self) -> None:
        super().__init__()
        self.pause, self.paused, self.added = False, threading.Event(), threading.Event()

    def __setitem__(self, key: str, value: Job) -> None:
        super().__setitem__(key, value)
        self.added.set()

    def values(self) -> Iterator[Job]:  # type: ignore[override]
        for i, job in enumerate(super().values()):
            yield job
            if i == 0 and self.pause:
                self.pause = False
                self.paused.set()
                self.added.wait(timeout=1.0)


def test_counting_the_active_jobs_never_meets_an_upload_half_way(random_pack: Path, tmp_path: Path) -> None:
    """/healthz counts the pool's jobs while uploads add them (and forget old ones) on other threads: a
    count that met an upload half way would fail ("OrderedDict mutated during iteration"), a 500."""
    pool = JobPool(random_pack, workers=1, queue_max=4)
    jobs = pool._jobs = PausingJobs()

    def an_upload(name: str) -> list[Upload]:
        path = tmp_path / name
        path.write_bytes(b"not media")
        return [Upload(name, path, path.stat().st_size)]

    try:
        pool.submit(an_upload("first.txt") + an_upload("second.txt"))
        jobs.pause = True
        jobs.added.clear()
        with ThreadPoolExecutor(1) as health:
            counted = health.submit(pool.active)
            assert jobs.paused.wait(timeout=PROMPT_S)
            pool.submit(an_upload("third.txt"))  # on this thread, while the count holds the first job
            assert counted.result(timeout=PROMPT_S) in (0, 1, 2)
        assert len(jobs) == 3
    finally:
        pool.close()


def test_behind_a_path_prefix_an_upload_has_the_upload_limit(random_pack: Path, tmp_path: Path) -> None:
    """With ``--root-path`` the app sees the prefix in the path: the upload route must still be told
    from the JSON routes, or every upload over 64 KiB would be refused as a JSON body."""
    app = create_app(make_settings(random_pack, tmp_path, api_token=TOKEN))
    with listening(app, "/deepscan") as port:
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/jobs",
            files={"file": ("big.bin", b"\0" * (256 << 10), "application/octet-stream")},
            data={"explain": "never"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=PROMPT_S,
        )
    assert response.status_code == 202, response.text


class HeldAnalyzer:
    """A real analyzer whose analyses wait for ``release`` once they have started."""

    def __init__(self, analyzer: Any) -> None:
        self.analyzer, self.started, self.release = analyzer, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.analyzer, name)

    def analyze_file(self, path: Path) -> Any:
        self.started.set()
        assert self.release.wait(timeout=PROMPT_S)
        return self.analyzer.analyze_file(path)


@pytest.mark.parametrize("grace_s", [0.2, PROMPT_S], ids=["analysis-outlasts-grace", "analysis-in-grace"])
def test_at_shutdown_every_upload_keeps_one_row(random_pack: Path, tmp_path: Path, grace_s: float) -> None:
    """The server stops with one upload being analysed and one waiting: the waiting one is not started and
    the running one gets the grace period; each has exactly one row, its verdict or an error that says
    the server stopped (none lost, none invented)."""
    from db import queries
    from db.session import session_scope
    from pipeline.analyze import Analyzer
    from workers.resources import open_sessions

    sessions = open_sessions(f"sqlite:///{tmp_path / 'deepscan.db'}")  # rows on PostgreSQL: test_rows.py
    pool = JobPool(random_pack, workers=1, queue_max=4, sessions=sessions)
    held = HeldAnalyzer(Analyzer(pool.wait_ready(timeout_s=60)))
    pool._analyzer = lambda: held  # type: ignore[method-assign]
    uploads = []
    for name in ("running.txt", "waiting.txt"):
        path = tmp_path / name
        path.write_bytes(b"not media")
        uploads.append(Upload(name, path, path.stat().st_size))
    running, waiting = pool.submit(uploads)
    assert held.started.wait(timeout=PROMPT_S)
    if grace_s >= PROMPT_S:  # the analysis ends inside the grace period
        threading.Timer(0.3, held.release.set).start()
    started = time.monotonic()
    pool.close(grace_s=grace_s)
    assert time.monotonic() - started < PROMPT_S / 2  # it waits for the analysis, not the whole grace period
    with pytest.raises(PoolBusyError, match="shutting down"):
        pool.submit(uploads[:1])
    held.release.set()  # an analysis that outlasted the grace period ends now: it must not write again
    wait_for(
        lambda: running.analysis and running.analysis.done(), timeout_s=PROMPT_S, what="the held analysis"
    )

    with session_scope(sessions) as session:
        stored = {r.uri: (r.status, r.reason) for r in queries.list_results(session, scan_id=running.scan_id)}
    assert stored[waiting.uri] == (
        "error",
        "deepscan serve stopped before analysing this upload: upload it again",
    )
    if grace_s >= PROMPT_S:
        assert running.status.value == "done" and stored[running.uri][0] == "unsupported"
    else:
        assert running.status.value == "failed"
        assert stored[running.uri] == ("error", running.error) and "while analysing" in (running.error or "")
    assert len(stored) == 2 and waiting.status.value == "failed"


@pytest.mark.parametrize(("face_search", "halved"), [("thorough", False), ("fast", True)])
def test_the_servers_jobs_search_faces_as_the_setting_says(
    face_search: str, halved: bool, random_pack: Path, tmp_path: Path
) -> None:
    """DEEPSCAN_FACE_SEARCH reaches the analyzers of deepscan serve's job pool."""
    with api_client(random_pack, tmp_path, face_search=face_search) as client:
        pool = client.app.state.pool
        pool.wait_ready(timeout_s=120)  # the pack loads on the pool's thread
        assert pool._analyzer().detector.options.halved_pyramid is halved
