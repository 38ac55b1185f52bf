"""Write-back (``workers.writeback``) against moto's S3 server on loopback: a scan tags what it analysed and
copies the fakes to quarantine; the next scan analyses neither the tagged originals nor the copies."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from pipeline.analyze import MediaResult
from pipeline.errors import ResultStatus
from tests.workers.conftest import AWS_ENV, s3_client
from tests.workers.test_modelstore import cli
from workers.settings import Settings
from workers.storage import ObjectRef
from workers.writeback import write_back

pytestmark = pytest.mark.services


def tags_of(client: object, bucket: str, key: str) -> dict[str, str]:
    tag_set = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]  # type: ignore[attr-defined]
    return {t["Key"]: t["Value"] for t in tag_set}


@pytest.fixture
def always_fake_pack(random_pack: Path, tmp_path: Path) -> Path:
    """The random pack with thresholds of 0: everything that gets a score is labelled fake."""
    directory = tmp_path / "always-fake"
    directory.mkdir()
    for path in random_pack.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["thresholds"] = {"image": 0.0, "audio": 0.0, "video_vote": 0.0}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_write_back_keeps_other_tags_and_replaces_its_own(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    client, bucket = s3_client(s3_endpoint), f"wb-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    etag = client.put_object(Bucket=bucket, Key="a.jpg", Body=b"x", Tagging="owner=team-a")["ETag"].strip('"')
    ref = ObjectRef(uri=f"s3://{bucket}/a.jpg", etag=etag, size_bytes=1)
    settings = Settings(s3_endpoint_url=s3_endpoint, tag_objects=True, quarantine_prefix="quarantine/")

    fake = MediaResult(path=ref.uri, media_type="image", model="test-pack@0.0.1")
    fake.label, fake.fake_probability = "fake", 0.912345
    write_back(ref, fake, settings=settings)
    assert tags_of(client, bucket, "a.jpg") == {
        "owner": "team-a",
        "deepscan-status": "ok",
        "deepscan-label": "fake",
        "deepscan-fake-probability": "0.9123",
        "deepscan-model": "test-pack@0.0.1",
    }
    assert client.get_object(Bucket=bucket, Key="quarantine/a.jpg")["Body"].read() == b"x"
    assert client.head_object(Bucket=bucket, Key="a.jpg")["ETag"].strip('"') == etag  # tags leave the ETag

    unscored = MediaResult(path=ref.uri, media_type="image", model="test-pack@0.0.1")
    unscored.status = ResultStatus.NO_FACE
    write_back(ref, unscored, settings=settings)  # a later verdict replaces ours, keeps theirs
    assert tags_of(client, bucket, "a.jpg") == {
        "owner": "team-a",
        "deepscan-status": "no_face",
        "deepscan-model": "test-pack@0.0.1",
    }


def test_a_scan_tags_its_objects_quarantines_the_fakes_and_the_next_scan_skips_both(
    s3_endpoint: str, always_fake_pack: Path, samples: Path, tmp_path: Path
) -> None:
    client, bucket = s3_client(s3_endpoint), f"wb-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for name in ("face.jpg", "no_face.png", "speech.wav"):
        client.upload_file(str(samples / name), bucket, f"media/{name}")
    env = {
        "DEEPSCAN_S3_ENDPOINT_URL": s3_endpoint,
        "DEEPSCAN_MODELS_DIR": str(always_fake_pack),
        "DEEPSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'rows.db'}",
        "DEEPSCAN_TAG_OBJECTS": "true",
        "DEEPSCAN_QUARANTINE_PREFIX": "media/quarantine",  # below the scanned prefix: must not be listed
    }
    etags = {name: client.head_object(Bucket=bucket, Key=f"media/{name}")["ETag"] for name in ("face.jpg",)}

    first = cli("scan", f"s3://{bucket}/media/", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    with sqlite3.connect(tmp_path / "rows.db") as db:
        rows = {
            key: (status, label)
            for key, status, label in db.execute("SELECT key, status, label FROM results")
        }
    assert rows == {
        "media/face.jpg": ("ok", "fake"),
        "media/no_face.png": ("no_face", None),
        "media/speech.wav": ("ok", "fake"),
    }
    for key, (status, label) in rows.items():
        tags = tags_of(client, bucket, key)
        assert tags["deepscan-status"] == status and tags.get("deepscan-label") == label, (key, tags)
        assert tags["deepscan-model"] == "test-pack@0.0.1"
        assert ("deepscan-fake-probability" in tags) == (label is not None)
    quarantined = {
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="media/quarantine/")["Contents"]
    }
    assert quarantined == {"media/quarantine/media/face.jpg", "media/quarantine/media/speech.wav"}
    assert client.head_object(Bucket=bucket, Key="media/face.jpg")["ETag"] == etags["face.jpg"]

    second = cli("scan", f"s3://{bucket}/media/", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    queued = json.loads(second.stdout.splitlines()[0])
    assert (queued["queued"], queued["skipped"]) == (0, 3)  # originals unchanged, copies not listed
