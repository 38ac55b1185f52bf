"""``deepscan report``: a static triage report of a scan, in a folder of its own, that opens in a browser."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from db import queries
from pipeline.media import sha256_file
from tests.conftest import REPO
from tests.workers.conftest import AWS_ENV, s3_client, zip_bytes
from workers import rows
from workers.embedded import EmbeddedRunner
from workers.resources import open_database
from workers.settings import get_settings
from workers.storage import LocalCopies, ObjectRef, list_s3
from workers.web.report import triage_key, write_report

INPUTS = ("face.jpg", "talking_face.mp4", "no_face.png", "corrupt.jpg", "notes.txt", "speech.wav")


@pytest.fixture(scope="module")
def flag_everything(random_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random pack with an image threshold of 0: every face is flagged fake, so gets explained."""
    directory = tmp_path_factory.mktemp("flag_everything")
    for path in random_pack.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["thresholds"] = {**manifest.get("thresholds", {}), "image": 0.0}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="module")
def scanned(
    samples: Path, flag_everything: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, int]:
    """A database with one detect scan of the sample inputs (read only by the tests); (its URL, the scan id)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('report_db') / 'report.db'}"
    runner = EmbeddedRunner.create(models=flag_everything, database_url=url)
    with runner.scan(uri="cli", kind="detect", total=len(INPUTS)) as scan:
        for name in INPUTS:
            scan.analyze(samples / name)
    return url, scan.scan_id


@pytest.fixture
def s3_settings(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's settings (and boto3's credentials) pointed at the loopback S3 server; its URL."""
    for name, value in {**AWS_ENV, "DEEPSCAN_S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield s3_endpoint
    get_settings.cache_clear()


def read_rows(url: str, scan_id: int) -> list[dict[str, Any]]:
    with open_database(url) as session:
        return [queries.result_to_dict(r) for r in queries.list_results(session, scan_id=scan_id)]


def test_the_report_sorts_for_triage_and_carries_its_figures(
    scanned: tuple[str, int], flag_everything: Path, tmp_path: Path
) -> None:
    url, scan_id = scanned
    out = tmp_path / "report"
    summary = write_report(
        scan_id, out, database_url=url, models=flag_everything, max_explanations=5, explain_samples=16
    )
    assert summary == {
        "report": str(out / "index.html"),
        "scan_id": scan_id,
        "rows": len(INPUTS),
        "thumbnails": 3,
        "timelines": 1,
        "explanations": 1,
    }
    html = (out / "index.html").read_text()
    rows = {r["id"]: r for r in read_rows(url, scan_id)}
    order = [int(i) for i in re.findall(r'<tr class="row row-[a-z]+" data-id="(\d+)"', html)]
    assert order == [r["id"] for r in sorted(rows.values(), key=triage_key)]
    probabilities = [rows[i]["fake_probability"] for i in order]
    scored = [p for p in probabilities if p is not None]
    assert scored == sorted(scored, reverse=True) and probabilities[len(scored) :] == [None] * 3

    for status in ("ok", "no_face", "decode_error", "unsupported"):
        assert f"<td>{status}</td>" in html
    for row in rows.values():
        assert f'href="{row["uri"]}"' in html  # every object links to its URI
    # self-contained: every picture is a file of the folder, nothing is fetched from elsewhere
    sources = re.findall(r'src="([^"]+)"', html)
    assert len(sources) == 3 + 1 + 1 and all((out / s).is_file() for s in sources)
    assert all(s.startswith("assets/") for s in sources) and "http://" not in html and "https://" not in html
    assert any(s.endswith("_explanation.png") for s in sources) and any(
        s.endswith("_timeline.png") for s in sources
    )


def test_the_report_opens_in_a_browser(
    scanned: tuple[str, int], flag_everything: Path, tmp_path: Path, browser: Any
) -> None:
    url, scan_id = scanned
    out = tmp_path / "report"
    write_report(scan_id, out, database_url=url, models=flag_everything, max_explanations=0)
    browser.get((out / "index.html").as_uri())
    assert browser.title == f"deepscan report: scan {scan_id}"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
    )
    assert images and all(loaded for _, loaded in images), images
    assert browser.execute_script("return document.querySelectorAll('#results tbody tr').length") == len(
        INPUTS
    )


def test_deepscan_report_on_the_command_line(scanned: tuple[str, int], tmp_path: Path) -> None:
    url, scan_id = scanned

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers.cli", "report", *args, "--database-url", url],
            env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    proc = report("--scan", str(scan_id), "--out", str(tmp_path / "cli"), "--no-explain")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["explanations"] == 0 and (tmp_path / "cli" / "index.html").is_file()
    missing = report("--scan", "999", "--out", str(tmp_path / "none"))
    assert missing.returncode == 2 and "there is no scan 999" in missing.stderr


def test_objects_and_archive_members_whose_names_hold_a_hash_get_their_thumbnails(
    samples: Path, random_pack: Path, s3_settings: str, tmp_path: Path
) -> None:
    """An S3 key may hold ``#`` ("Scan #3.jpg"), and so may an archive's key and its members' names. A
    member's row is ``ARCHIVE_URI#MEMBER``: its URI alone does not say where the archive's key ends, its
    row does (the key column). A file URI quotes a ``#`` of the path, so its first is the member's."""
    face = (samples / "face.jpg").read_bytes()
    bucket = f"report-{uuid.uuid4().hex[:12]}"
    s3 = s3_client(s3_settings)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="scans/Scan #3.jpg", Body=face)
    s3.put_object(Bucket=bucket, Key="scans/batch #2.zip", Body=zip_bytes({"a #1.jpg": face}))
    local_zip = tmp_path / "batch #4.zip"
    local_zip.write_bytes(zip_bytes({"b #1.jpg": face}))
    photo, s3_zip = list_s3(f"s3://{bucket}/scans/", endpoint_url=s3_settings)
    refs = [
        photo,
        s3_zip.for_member("a #1.jpg", len(face)),
        ObjectRef.for_local_file(local_zip).for_member("b #1.jpg", len(face)),
    ]

    url = f"sqlite:///{tmp_path / 'hash.db'}"
    runner = EmbeddedRunner.create(models=random_pack, database_url=url)
    copies = LocalCopies(endpoint_url=s3_settings)
    try:
        with runner.scan(uri=f"s3://{bucket}/scans/", kind="detect", total=len(refs)) as scan:
            for ref in refs:  # as the workers' analyze_object writes an object's or a member's row
                path = copies.path(ref)
                result = runner.analyzer.analyze_file(path)
                result.path = ref.result_uri
                rows.write_row(
                    ref,
                    scan.scan_id,
                    result,
                    content_sha256=sha256_file(path),
                    sessions=runner.sessions,
                    model=runner.model,
                )
    finally:
        copies.close()
    assert sorted(r["uri"] for r in read_rows(url, scan.scan_id)) == sorted(
        [
            f"{local_zip.as_uri()}#b #1.jpg",
            f"s3://{bucket}/scans/Scan #3.jpg",
            f"s3://{bucket}/scans/batch #2.zip#a #1.jpg",
        ]
    )

    out = tmp_path / "report"
    summary = write_report(scan.scan_id, out, database_url=url, models=random_pack, max_explanations=0)
    html = (out / "index.html").read_text()
    assert "media unavailable" not in html
    assert (summary["rows"], summary["thumbnails"]) == (3, 3)
