"""The REST API of ``deepscan serve`` through FastAPI's TestClient: every endpoint, auth and limits.

The app runs with the untrained ``random_pack`` (the same code paths in seconds) and a SQLite file.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pipeline.analyze import Analyzer, MediaResult
from tests.conftest import REPO
from tests.provenance_media import EXPECTED_PROVENANCE, assert_provenance
from workers.cli.web import is_loopback
from workers.resources import shared_pack
from workers.settings import DEFAULT_EXPLAIN_SAMPLES, Settings
from workers.web.app import create_app, decode_cursor, encode_cursor, safe_filename
from workers.web.figures import video_caption

JOB_TIMEOUT_S = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKEN = "correct-horse-battery-staple"


def make_settings(random_pack: Path, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models_dir": random_pack,
        "database_url": f"sqlite:///{tmp_path / 'api.db'}",
        "explain_samples": 16,
        "broker_url": None,
        "api_token": None,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def make_client(random_pack: Path, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Clients of apps made with ``make_settings(**overrides)``; each app's lifespan ends with the test."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(random_pack, tmp_path, **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def upload(client: TestClient, *paths: Path, explain: str = "never", **kwargs: Any) -> Any:
    files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return client.post("/api/v1/jobs", files=files, data={"explain": explain}, **kwargs)


def wait_job(client: httpx.Client, url: str, **kwargs: Any) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job: dict[str, Any] = client.get(url, **kwargs).json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {JOB_TIMEOUT_S} s"
        time.sleep(0.2)


def test_an_uploaded_image_gets_the_json_of_deepscan_detect(
    client: TestClient, samples: Path, random_pack: Path
) -> None:
    response = upload(client, samples / "face.jpg")
    assert response.status_code == 202
    created = response.json()
    assert set(created) >= {"id", "status"} and created["status"] in ("queued", "running")
    assert response.headers["location"] == created["url"] == f"/api/v1/jobs/{created['id']}"

    job = wait_job(client, created["url"])
    assert job["status"] == "done", job
    result = job["result"]
    assert list(result) == [f.name for f in dataclasses.fields(MediaResult)]
    expected = Analyzer(shared_pack(random_pack)).analyze_file(samples / "face.jpg").to_dict()
    assert result["path"] == "face.jpg"  # the client's name, not the generated one on the server
    for key in ("media_type", "status", "label", "fake_probability", "confidence", "faces", "model"):
        assert result[key] == expected[key], key
    assert job["timeline_url"] is None
    assert job["explanation"]["status"] == "available"  # explain=never: computed only on request
    assert job["timings"]["total_s"] >= job["timings"]["analysis_s"] > 0

    png = client.get(job["explanation_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC)
    explained = client.get(created["url"]).json()["explanation"]
    assert explained["status"] == "ready" and explained["num_samples"] == 16
    assert 0.0 <= explained["fake_probability"] <= 1.0 and explained["t_s"] is None

    scraped = client.get("/metrics/")  # Prometheus, open like /healthz: the row just written is counted
    assert scraped.status_code == 200
    assert f'deepscan_objects_total{{label="{result["label"]}",status="ok"}}' in scraped.text


def test_several_files_give_one_job_each_in_upload_order(client: TestClient, samples: Path) -> None:
    names = ["talking_face.mp4", "notes.txt", "corrupt.jpg", "no_face.png"]
    response = upload(client, *(samples / n for n in names), explain="always")
    assert response.status_code == 202
    created = response.json()
    assert [j["filename"] for j in created] == names
    jobs = {j["filename"]: wait_job(client, j["url"]) for j in created}
    assert {n: j["status"] for n, j in jobs.items()} == dict.fromkeys(names, "done")

    video = jobs["talking_face.mp4"]
    assert video["result"]["media_type"] == "video" and video["result"]["status"] == "ok"
    timeline = client.get(video["timeline_url"])
    assert timeline.status_code == 200 and timeline.content.startswith(PNG_MAGIC)
    explanation = client.get(video["explanation_url"])  # the frame that drove the verdict
    assert explanation.status_code == 200 and explanation.content.startswith(PNG_MAGIC)
    assert client.get(video["url"]).json()["explanation"]["t_s"] is not None

    expected = {"notes.txt": "unsupported", "corrupt.jpg": "decode_error", "no_face.png": "no_face"}
    for name, status in expected.items():
        result = jobs[name]["result"]
        assert result["status"] == status and result["reason"] and result["fake_probability"] is None
        assert jobs[name]["explanation"]["status"] == "none" and jobs[name]["explanation_url"] is None
    job_url = jobs["notes.txt"]["url"]
    assert client.get(f"{job_url}/explanation.png").status_code == 404
    assert client.get(f"{job_url}/timeline.png").status_code == 404
    # analysed uploads are gone from the server's temporary directory
    assert list(client.app.state.uploads.iterdir()) == []  # type: ignore[attr-defined]


def test_uploads_carry_their_provenance_under_the_configured_policy(
    make_client: Callable[..., TestClient], provenance_media: dict[str, Path]
) -> None:
    """The server reads provenance with the settings' trust anchors and policy, as ``detect`` does; the
    results API filters by it."""
    client = make_client(c2pa_trust_anchors=provenance_media["anchors.pem"])
    created = upload(client, *(provenance_media[name] for name in EXPECTED_PROVENANCE)).json()
    for name, job in zip(EXPECTED_PROVENANCE, created, strict=True):
        done = wait_job(client, job["url"])
        assert done["status"] == "done", done
        assert_provenance(name, done["result"])
    for summary in ("ai", "camera", "none"):
        found = client.get("/api/v1/results", params={"provenance": summary}).json()["items"]
        expected = sorted(n for n, (_, s, _, _) in EXPECTED_PROVENANCE.items() if s == summary)
        assert sorted(r["path"] for r in found) == expected, summary
    assert client.get("/api/v1/results", params={"provenance": "maybe"}).status_code == 422


def test_a_job_the_server_no_longer_holds_points_to_its_stored_row(
    make_client: Callable[..., TestClient], samples: Path
) -> None:
    """Jobs live in memory; after a restart (a new app on the same database) the job's URL answers 303
    with its row in the results table. A job id with LIKE's wildcards matches nothing."""
    before = make_client()
    job = wait_job(before, upload(before, samples / "face.jpg").json()["url"])
    assert job["status"] == "done", job
    after = make_client()
    moved = after.get(job["url"], follow_redirects=False)
    assert moved.status_code == 303
    row = after.get(moved.headers["location"]).json()
    assert (row["uri"], row["status"]) == (f"upload://{job['id']}/face.jpg", job["result"]["status"])
    assert row["fake_probability"] == pytest.approx(job["result"]["fake_probability"], abs=1e-6)
    assert after.get("/api/v1/jobs/%25", follow_redirects=False).status_code == 404


def test_unknown_jobs_and_bad_requests(client: TestClient, samples: Path) -> None:
    assert client.get("/api/v1/jobs/nope").status_code == 404
    assert client.post("/api/v1/jobs").status_code == 422  # no file
    assert upload(client, samples / "face.jpg", explain="sometimes").status_code == 422


def test_stored_results_scans_and_pagination(client: TestClient, samples: Path) -> None:
    names = ["face.jpg", "talking_face.mp4", "notes.txt"]
    for job in upload(client, *(samples / n for n in names)).json():
        wait_job(client, job["url"])

    page = client.get("/api/v1/results").json()
    assert [r["uri"].rsplit("/", 1)[1] for r in page["items"]] == names and page["next_cursor"] is None
    assert all(r["uri"].startswith("upload://") for r in page["items"])
    scan_id = page["items"][0]["scan_id"]
    assert client.get("/api/v1/results", params={"status": "unsupported"}).json()["items"][0][
        "media_type"
    ] == ("unknown")
    label = page["items"][0]["label"]
    labelled = client.get("/api/v1/results", params={"label": label}).json()["items"]
    assert labelled and all(r["label"] == label for r in labelled)
    above = client.get("/api/v1/results", params={"min_probability": 0.0, "scan": scan_id}).json()["items"]
    assert {r["uri"] for r in above} == {r["uri"] for r in page["items"] if r["fake_probability"] is not None}

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        chunk = client.get("/api/v1/results", params=params).json()
        seen += [r["id"] for r in chunk["items"]]
        cursor = chunk["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in page["items"]]
    assert client.get("/api/v1/results", params={"cursor": "garbage!"}).status_code == 400
    assert client.get("/api/v1/results", params={"min_probability": 2}).status_code == 422

    video = next(r for r in page["items"] if r["media_type"] == "video")
    one = client.get(f"/api/v1/results/{video['id']}").json()
    assert one["timeline"] and one["uri"] == video["uri"]  # a stored row in the shape of a fresh result
    assert f"audio: {one['audio']['label']} " in video_caption(one)  # its plot reads the stored soundtrack
    assert client.get(f"/api/v1/results/{video['id']}/timeline.png").content.startswith(PNG_MAGIC)
    image = next(r for r in page["items"] if r["media_type"] == "image")
    assert client.get(f"/api/v1/results/{image['id']}/timeline.png").status_code == 404
    assert client.get("/api/v1/results/999999").status_code == 404

    scans = client.get("/api/v1/scans").json()
    upload_scan = next(s for s in scans if s["id"] == scan_id)
    assert (
        upload_scan["kind"] == "upload" and upload_scan["done"] == 3 and upload_scan["status"] == "complete"
    )
    assert client.get(f"/api/v1/scans/{scan_id}").json()["total"] == 3
    assert client.get("/api/v1/scans/999999").status_code == 404


def test_starting_a_scan_without_a_broker_says_a_broker_is_needed(client: TestClient, samples: Path) -> None:
    response = client.post("/api/v1/scans", json={"uri": str(samples)})
    assert response.status_code == 503
    assert "DEEPSCAN_BROKER_URL" in response.json()["detail"]


def test_the_token_guards_the_api_but_not_the_page(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.get("/api/v1/scans", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v1/scans", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.post("/api/v1/jobs").status_code == 401
    page = client.get("/")
    assert page.status_code == 200 and 'data-token-required="true"' in page.text
    assert client.get("/healthz").status_code == 200 and client.get("/docs").status_code == 200
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_uploads_over_the_limit_get_a_413_that_names_it(
    make_client: Callable[..., TestClient], samples: Path
) -> None:
    client = make_client(upload_max_mb=0.05)  # 52 kB: the sample portrait is larger
    assert (samples / "face.jpg").stat().st_size > 0.05 * (1 << 20)
    response = upload(client, samples / "face.jpg")
    assert response.status_code == 413
    assert "DEEPSCAN_UPLOAD_MAX_MB" in response.json()["detail"]

    boundary = "deepscanboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="face.jpg"\r\n\r\n'.encode()
        + (samples / "face.jpg").read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    response = client.post(
        "/api/v1/jobs",
        content=chunked(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413 and "DEEPSCAN_UPLOAD_MAX_MB" in response.json()["detail"]
    small = upload(client, samples / "short.wav")  # a small file still passes
    assert small.status_code == 202
    assert wait_job(client, small.json()["url"])["result"]["status"] == "too_short"
    assert list(client.app.state.uploads.iterdir()) == []  # type: ignore[attr-defined]


def test_a_full_pool_refuses_uploads_it_cannot_hold(
    make_client: Callable[..., TestClient], samples: Path
) -> None:
    client = make_client(web_workers=1, web_queue_max=1)
    response = upload(client, *(samples / n for n in ("face.jpg", "speech.wav", "short.wav")))
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "try again later" in response.json()["detail"]
    assert client.get("/api/v1/results").json()["items"] == []  # all or nothing
    assert upload(client, samples / "face.jpg", samples / "short.wav").status_code == 202


def test_helpers() -> None:
    assert safe_filename("../../etc/passwd") == "passwd" and safe_filename("C:\\x\\a.jpg") == "a.jpg"
    assert safe_filename("") == "upload" and safe_filename("a\x00b.png") == "a_b.png"
    assert decode_cursor(encode_cursor(41)) == 41
    assert [
        is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.2", "example.org")
    ] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    from pipeline.explain import LIME_SAMPLES

    assert DEFAULT_EXPLAIN_SAMPLES == LIME_SAMPLES


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DEEPSCAN_API_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "DEEPSCAN_API_TOKEN" in proc.stderr and "0.0.0.0" in proc.stderr


@pytest.mark.services
@pytest.mark.slow
def test_a_scan_started_through_the_api_is_done_by_the_workers(
    stack_factory: Any, samples: Path, tmp_path: Path
) -> None:
    """With a broker: POST /api/v1/scans queues the bucket for a real worker; the API reads the rows back."""
    import httpx

    from tests.workers.conftest import wait_for
    from tests.workers.serving import serve

    stack = stack_factory(f"sqlite:///{tmp_path / 'scan.db'}")
    for name in ("face.jpg", "notes.txt"):
        stack.put(f"media/{name}", samples / name)
    stack.worker()
    with serve({**stack.env, "DEEPSCAN_API_TOKEN": TOKEN}, stack.work) as base:
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        response = api.post("/api/v1/scans", json={"uri": stack.uri("media/")})
        assert response.status_code == 202, response.text
        started = response.json()
        assert started["queued"] == 2 and started["url"] == f"/api/v1/scans/{started['scan_id']}"
        done = wait_for(
            lambda: (s := api.get(started["url"]).json())["status"] == "complete" and s,
            timeout_s=300,
            what="the workers to finish the scan",
        )
        assert done["done"] == 2 and done["ok"] == 1
        rows = api.get("/api/v1/results", params={"scan": started["scan_id"]}).json()["items"]
        assert sorted(r["uri"] for r in rows) == [stack.uri("media/face.jpg"), stack.uri("media/notes.txt")]
        assert api.post("/api/v1/scans", json={"uri": "ftp://nowhere"}).status_code == 400


def test_with_a_broker_and_an_upload_bucket_the_workers_analyse_uploads(
    stack_factory: Any, samples: Path, tmp_path: Path
) -> None:
    """Uploads go to the bucket, a real worker analyses them, the API reads its rows: the same JSON as
    the server's own analysis; the stored uploads are gone once their rows are in."""
    from tests.workers.serving import serve

    stack = stack_factory(f"sqlite:///{tmp_path / 'uploads.db'}")
    worker = stack.worker()
    env = {**stack.env, "DEEPSCAN_UPLOAD_URI": stack.uri("uploads/")}
    names = ["face.jpg", "talking_face.mp4", "notes.txt"]
    with serve(env, stack.work) as base:
        api = httpx.Client(base_url=base, timeout=60)
        assert api.get("/healthz").json()["analysed_by"] == "workers"
        files = [("file", (n, (samples / n).read_bytes(), "application/octet-stream")) for n in names]
        created = api.post("/api/v1/jobs", files=files, data={"explain": "never"}).json()
        jobs = {j["filename"]: wait_job(api, j["url"]) for j in created}
        assert {n: j["status"] for n, j in jobs.items()} == dict.fromkeys(names, "done"), jobs
        timeline = api.get(jobs["talking_face.mp4"]["timeline_url"])
        assert timeline.status_code == 200 and timeline.content.startswith(PNG_MAGIC)
        assert api.get(jobs["face.jpg"]["explanation_url"]).content.startswith(PNG_MAGIC)  # by the server

    rows = stack.rows(stack.uri("uploads/"))
    for name in names:
        result = jobs[name]["result"]
        assert list(result) == [f.name for f in dataclasses.fields(MediaResult)]
        (row,) = (r for uri, r in rows.items() if uri.endswith(f"/{name}"))  # written by the worker
        assert (result["path"], result["status"], result["fake_probability"]) == (
            name,
            row["status"],
            row["fake_probability"],
        )
    assert [(n, jobs[n]["result"]["status"]) for n in names] == [
        ("face.jpg", "ok"),
        ("talking_face.mp4", "ok"),
        ("notes.txt", "unsupported"),
    ]
    assert jobs["talking_face.mp4"]["result"]["timeline"]  # the chord's seconds, through the row
    assert "analyze_object" in stack.log("worker") and worker.poll() is None
    assert stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="uploads/")["KeyCount"] == 0


def test_the_upload_location_is_an_s3_prefix_or_an_absolute_folder() -> None:
    from pydantic import ValidationError

    assert Settings(upload_uri="s3://media/uploads").upload_uri == "s3://media/uploads/"
    assert Settings(upload_uri="/srv/deepscan/uploads/").upload_uri == "file:///srv/deepscan/uploads/"
    assert Settings(upload_uri="file:///srv/up").upload_uri == "file:///srv/up/"
    assert Settings(upload_uri="").upload_uri is None
    with pytest.raises(ValidationError, match="absolute folder"):
        Settings(upload_uri="uploads")
