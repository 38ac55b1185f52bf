"""``deepscan scan`` without a broker: the producer and the very tasks the workers run, in one process.

Compared row for row with the distributed mode on the same bucket (moto's S3 server on loopback).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import Stack
from tests.workers.test_distributed import details, mixed_bucket

pytestmark = [pytest.mark.services, pytest.mark.slow]

EMBEDDED = ("DEEPSCAN_BROKER_URL",)  # unset: the embedded default
COMPARED = (
    "media_type",
    "status",
    "reason",
    "label",
    "bucket",
    "key",
    "etag",
    "content_sha256",
    "size_bytes",
)


def embedded_scan(stack: Stack, *options: str) -> tuple[dict[str, Any], dict[str, Any]]:
    proc = stack.cli("scan", stack.uri("media/"), *options, unset=EMBEDDED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # bad media is a row, not a warning; and the in-memory broker of eager mode says nothing either
    assert [line for line in proc.stderr.splitlines() if " WARNING " in line or " ERROR " in line] == []
    queued, final = (json.loads(line) for line in proc.stdout.splitlines())
    return queued, final


def comparable(stack: Stack) -> dict[str, dict[str, Any]]:
    """What must agree between two runs: every column but timings and ids, the seconds, the detail keys."""
    out = {}
    for uri, row in stack.rows().items():
        facts = {column: row[column] for column in COMPARED}
        facts["fake_probability"] = row["fake_probability"] and round(row["fake_probability"], 4)
        facts["frames"] = stack.frames(uri)
        facts["details"] = sorted(details(row))
        out[uri] = facts
    return out


def test_the_embedded_scan_writes_the_rows_the_distributed_one_does(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    distributed = stack_factory(f"sqlite:///{tmp_path / 'distributed.db'}")
    mixed_bucket(distributed, samples)
    distributed.worker()
    proc = distributed.cli("scan", distributed.uri("media/"), "--wait", "--timeout", "240")
    assert proc.returncode == 0, proc.stderr[-3000:] + distributed.log("worker")[-3000:]

    embedded = distributed.on_database(f"sqlite:///{tmp_path / 'embedded.db'}")
    queued, final = embedded_scan(embedded)
    assert (queued["queued"], queued["skipped"]) == (5, 0)
    assert final["status"] == "complete" and final["total"] == final["done"] == 7, final
    assert comparable(embedded) == comparable(distributed)
    video = details(embedded.rows()[embedded.uri("media/talking_face.mp4")])
    assert video["parts"]["count"] == 4  # three 2 s segments and the soundtrack, through the chord

    # incremental: a second run analyses nothing; --force analyses everything again
    queued, final = embedded_scan(embedded)
    assert (queued["queued"], queued["skipped"], final["total"]) == (0, 5, 0)
    queued, final = embedded_scan(embedded, "--force")
    assert (queued["queued"], final["status"], final["done"]) == (5, "complete", 7)


def test_detect_reads_s3_objects_and_prefixes(stack_factory: Any, tmp_path: Path, samples: Path) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'detect.db'}")
    etag = stack.put("media/face.jpg", samples / "face.jpg")
    stack.put("media/more/speech.wav", samples / "speech.wav")
    proc = stack.cli(
        "detect", stack.uri("media/face.jpg"), stack.uri("media/more"), "--format", "jsonl", unset=EMBEDDED
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["path"], r["media_type"], r["status"]) for r in printed] == [
        (stack.uri("media/face.jpg"), "image", "ok"),
        (stack.uri("media/more/speech.wav"), "audio", "ok"),
    ]
    row = stack.rows()[stack.uri("media/face.jpg")]
    assert (row["bucket"], row["key"], row["etag"]) == (stack.bucket, "media/face.jpg", etag)
    assert row["content_sha256"] and row["fake_probability"] == printed[0]["fake_probability"]

    typo = stack.cli("detect", stack.uri("media/nothing-here.jpg"), unset=EMBEDDED)
    assert typo.returncode == 2 and "no such object or prefix" in typo.stderr


def test_configuration_errors_stop_before_any_file_is_touched(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'checks.db'}")
    stack.put("media/face.jpg", samples / "face.jpg")
    no_ffmpeg = {"PATH": str(tmp_path / "empty-bin"), "DEEPSCAN_LOG_LEVEL": "WARNING"}
    for args in (["scan", stack.uri("media/")], ["detect", str(samples / "face.jpg")]):
        proc = stack.cli(*args, env=no_ffmpeg, unset=EMBEDDED)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "deepscan: error: ffmpeg and ffprobe not found on the PATH: deepscan reads video and audio with "
            "them (Debian/Ubuntu: apt-get install ffmpeg)"
        ]
    unreadable = tmp_path / "unreadable-pack"
    unreadable.mkdir()
    (unreadable / "manifest.json").write_text("{not json")
    corrupt = tmp_path / "corrupt-pack"  # a manifest that reads, a member that fails its checksum
    shutil.copytree(stack.env["DEEPSCAN_MODELS_DIR"], corrupt)
    member = next(corrupt.glob("*.keras"))
    member.write_bytes(member.read_bytes()[:-100])
    for pack, says in ((unreadable, "cannot read the model pack"), (corrupt, "cannot load the model pack")):
        env = {"DEEPSCAN_MODELS_DIR": str(pack), "DEEPSCAN_LOG_LEVEL": "WARNING"}
        proc = stack.cli("scan", stack.uri("media/"), env=env, unset=EMBEDDED)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert stack.rows() == {} and stack.query("SELECT * FROM scans") == []


def test_doctor_says_what_is_installed_and_reachable(stack_factory: Any, tmp_path: Path) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'doctor.db'}")
    proc = stack.cli("doctor", env={"DEEPSCAN_LOG_LEVEL": "WARNING"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert set(lines) == {"ffmpeg", "ffprobe", "model", "database", "broker", "S3"}
    assert all("  ok  " in line for line in lines.values()), proc.stdout
    assert stack.redis_url in lines["broker"] and stack.s3_endpoint in lines["S3"]
    assert proc.stderr == ""  # no TensorFlow banner, no warnings

    down = stack.cli("doctor", env={"DEEPSCAN_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, unset=EMBEDDED)
    assert down.returncode == 1 and "MISSING" in down.stdout
