"""Model packs in S3 (``workers.modelstore``, ``deepscan models push|pull``), against moto's S3 server on
loopback: a pull is verified file by file, cached once, and the pulled pack's version is in every row."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ModelPackError
from pipeline.pack import MANIFEST_FILE
from tests.conftest import REPO
from tests.workers.conftest import AWS_ENV, s3_client
from workers.modelstore import pull_pack, push_pack

pytestmark = pytest.mark.services


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def cli(
    *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``deepscan ARGS...`` on the embedded default (no broker), with ``env`` over the AWS test keys."""
    merged = {**os.environ, **AWS_ENV, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    merged.pop("DEEPSCAN_BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env=merged,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_a_pushed_pack_is_pulled_verified_and_cached_once(
    s3_endpoint: str, bucket: str, random_pack: Path, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/packs/test-pack/0.0.1"
    trained = tmp_path / "trained"  # the pack as training leaves it: its working folders beside it
    shutil.copytree(random_pack, trained)
    for leftover in ("checkpoints/member.best.keras", "cache/logmel_inputs-0123.npz"):
        (trained / leftover).parent.mkdir(exist_ok=True)
        (trained / leftover).write_bytes(b"\0" * 1024)
    manifest = push_pack(trained, uri, endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"packs/test-pack/0.0.1/{p.name}" for p in random_pack.iterdir() if p.is_file()}
    assert {f"packs/test-pack/0.0.1/{m.file}" for m in manifest.members} | {
        f"packs/test-pack/0.0.1/{MANIFEST_FILE}"
    } <= keys

    cache = tmp_path / "cache"
    pulled = pull_pack(uri, cache_dir=cache, endpoint_url=s3_endpoint)
    assert pulled.parent == cache and pulled.name.startswith("test-pack-0.0.1-")
    for member in manifest.members:
        assert (pulled / member.file).read_bytes() == (random_pack / member.file).read_bytes()
    assert json.loads((pulled / MANIFEST_FILE).read_text()) == json.loads(
        (random_pack / MANIFEST_FILE).read_text()
    )

    # cached: a second pull reads the manifest only, the members are not fetched again
    s3_client(s3_endpoint).delete_object(
        Bucket=bucket, Key=f"packs/test-pack/0.0.1/{manifest.members[0].file}"
    )
    assert pull_pack(uri, cache_dir=cache, endpoint_url=s3_endpoint) == pulled
    assert [p.name for p in cache.iterdir()] == [pulled.name]  # no staging directory left behind


def test_a_member_that_does_not_match_its_checksum_is_refused(
    s3_endpoint: str, bucket: str, random_pack: Path, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/tampered"
    manifest = push_pack(random_pack, uri, endpoint_url=s3_endpoint)
    member = manifest.members[0].file
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key=f"tampered/{member}", Body=b"not the model")
    cache = tmp_path / "cache"
    with pytest.raises(ModelPackError, match=f"checksum mismatch for {member}"):
        pull_pack(uri, cache_dir=cache, endpoint_url=s3_endpoint)
    assert list(cache.iterdir()) == []  # nothing half-pulled is left to be taken for a pack


def test_models_push_and_pull_commands_and_the_rows_record_the_pulled_version(
    s3_endpoint: str, bucket: str, random_pack_v2: Path, samples: Path, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/packs/v2"
    env = {
        "DEEPSCAN_S3_ENDPOINT_URL": s3_endpoint,
        "DEEPSCAN_MODELS_URI": uri,
        "DEEPSCAN_MODELS_CACHE_DIR": str(tmp_path / "cache"),
        "DEEPSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'rows.db'}",
    }
    pushed = cli("models", "push", "--models", str(random_pack_v2), env=env, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["pushed"] == "test-pack@0.0.2"
    pulled = cli("models", "pull", env=env, cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    directory = Path(pulled.stdout.strip())
    assert directory.parent == tmp_path / "cache" and (directory / MANIFEST_FILE).is_file()

    s3_client(s3_endpoint).upload_file(str(samples / "face.jpg"), bucket, "media/face.jpg")
    scanned = cli("scan", f"s3://{bucket}/media/", env=env, cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr[-3000:]
    with sqlite3.connect(tmp_path / "rows.db") as db:
        rows: list[Any] = db.execute("SELECT uri, model_name, model_version FROM results").fetchall()
    assert rows == [(f"s3://{bucket}/media/face.jpg", "test-pack", "0.0.2")]

    missing = cli("models", "pull", "--uri", f"s3://{bucket}/nothing-here", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "nothing-here" in missing.stderr
