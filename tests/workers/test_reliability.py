"""Faults injected with real processes: S3 failing under a video's chord, a poison message, bad inputs,
refused serialisations, secrets. Every time the scan completes with exactly one row per object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.workers.conftest import FaultyProxy, Stack, wait_for
from tests.workers.test_distributed import SEND_STALE_CHORD, details

pytestmark = [pytest.mark.services, pytest.mark.slow]

SCAN_TIMEOUT_S = 240


def send_video_chord(stack: Stack, key: str, video: Path) -> tuple[str, int]:
    """Put ``video`` at ``key`` and queue its chord straight away (no analyze_object, no split_video:
    every GET of the object is then a chord part's). Returns (uri, scan id)."""
    etag = stack.put(key, video)
    uri = stack.uri(key)
    proc = subprocess.run(
        [sys.executable, "-c", SEND_STALE_CHORD, uri, etag, str(video.stat().st_size), str(video)],
        env=stack.env,
        cwd=stack.work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, int(proc.stdout.split()[-1])


@pytest.mark.parametrize(("mode", "faults"), [("slowdown", 8), ("reset", 8)])
def test_a_chord_part_retries_through_transient_s3_faults(
    stack_factory: Any, tmp_path: Path, samples: Path, mode: str, faults: int
) -> None:
    """More faults than botocore's own attempts (5): the part fails once at task level, retries with
    backoff inside the chord, and the video ends with a verdict."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'faults.db'}")
    proxy = FaultyProxy(stack.s3_endpoint, marker="clip.mp4", faults=faults, mode=mode)
    try:
        # visibility 20 s: retry delays capped at 5 s, so the test waits seconds, not minutes
        stack.env.update(DEEPSCAN_VISIBILITY_TIMEOUT_S="20", DEEPSCAN_S3_ENDPOINT_URL=proxy.url)
        stack.worker()
        uri, scan_id = send_video_chord(stack, "media/clip.mp4", samples / "talking_face.mp4")
        wait_for(lambda: stack.scan(scan_id)["status"] == "complete", timeout_s=SCAN_TIMEOUT_S, what="scan")
    finally:
        proxy.close()
    rows = stack.rows()
    assert list(rows) == [uri] and rows[uri]["status"] == "ok", rows[uri]["reason"]
    assert stack.frames(uri) == [0, 1, 2, 3, 4, 5]
    assert details(rows[uri])["parts"]["failed_segments"] == []
    assert len(proxy.failed) == faults and proxy.passed  # every fault was met, then the download passed
    assert "Retry in" in stack.log("worker")


def test_a_chord_part_that_never_reaches_s3_gives_the_video_an_error_row(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """S3 refuses every GET of the video: the parts' retries run out, the chord's error callback writes
    the video's error row, and the scan completes instead of waiting for the missing parts."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'outage.db'}")
    proxy = FaultyProxy(stack.s3_endpoint, marker="clip.mp4", faults=None, mode="reset")
    try:
        stack.env.update(DEEPSCAN_VISIBILITY_TIMEOUT_S="20", DEEPSCAN_S3_ENDPOINT_URL=proxy.url)
        stack.worker()
        uri, scan_id = send_video_chord(stack, "media/clip.mp4", samples / "talking_face.mp4")
        wait_for(lambda: stack.scan(scan_id)["status"] == "complete", timeout_s=SCAN_TIMEOUT_S, what="scan")
    finally:
        proxy.close()
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
