"""Edges of a scan's life that no fault proxy reaches alone: a producer stopped as a supervisor stops it
(SIGTERM), and a file that is still being written into a scanned folder while it is analysed."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import StallingProxy, wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]

EMBEDDED = ("DEEPSCAN_BROKER_URL",)  # unset: the embedded default
START_TIMEOUT_S = 120
EXIT_TIMEOUT_S = 60


@pytest.mark.parametrize("broker", [True, False], ids=["distributed", "embedded"])
def test_a_scan_stopped_by_sigterm_while_queuing_is_marked_failed(
    stack_factory: Any, tmp_path: Path, samples: Path, broker: bool
) -> None:
    """``deepscan scan`` stopped by SIGTERM (``timeout``, ``docker stop``, a Kubernetes job's deadline) while
    it lists: the scan ends 'failed' with the reason, as after Ctrl-C, instead of staying 'queuing' for ever
    (where it also holds off every scheduled scan of the prefix for a day)."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'sigterm.db'}")
    stack.put("media/face.jpg", samples / "face.jpg")
    proxy = StallingProxy(stack.s3_endpoint, marker="list-type")  # the listing hangs: the scan is queuing
    try:
        stack.env["DEEPSCAN_S3_ENDPOINT_URL"] = proxy.url
        if not broker:
            del stack.env["DEEPSCAN_BROKER_URL"]
        producer = stack.cli_in_background("scan", stack.uri("media/"), "--wait")
        wait_for(lambda: proxy.stalled, timeout_s=START_TIMEOUT_S, what="the listing to hang")
        (scan,) = stack.query("SELECT * FROM scans")
        assert scan["status"] == "queuing"
        producer.send_signal(signal.SIGTERM)
        _, err = producer.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        proxy.close()
    scan = stack.scan(scan["id"])
    assert scan["status"] == "failed" and "SIGTERM" in scan["error"], scan
    assert scan["finished_at"] is not None
    assert producer.returncode == 128 + signal.SIGTERM, (producer.returncode, err[-3000:])


# A copy into the scanned folder finishes while the scan analyses what had arrived so far.
WRITER_FINISHES_DURING_ANALYSIS = """
import sys
from pathlib import Path
from pipeline.analyze import Analyzer
from workers.cli import main

target, complete = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).read_bytes()
analyze_file = Analyzer.analyze_file

def writer_finishes(self, path, *args, **kwargs):
    result = analyze_file(self, path, *args, **kwargs)
    if Path(path).resolve() == target:
        target.write_bytes(complete)
    return result

Analyzer.analyze_file = writer_finishes
sys.exit(main(["scan", str(target.parent)]))
"""


def test_a_file_finished_while_it_was_analysed_is_analysed_again(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    """A scheduled scan of a drop folder meets a photo still being copied in: the part that had arrived is
    analysed (a decode error), and the copy completes meanwhile. That verdict belongs to the partial file;
    the next scan must analyse the finished one, not skip it as already analysed for ever."""
    stack = stack_factory(f"sqlite:///{tmp_path / 'growing.db'}")
    folder = tmp_path / "drop"
    folder.mkdir()
    photo, complete = folder / "upload.jpg", samples / "face.jpg"
    photo.write_bytes(complete.read_bytes()[: complete.stat().st_size // 3])

    first = stack.python(WRITER_FINISHES_DURING_ANALYSIS, str(photo), str(complete), unset=EMBEDDED)
    assert first.returncode == 0, first.stderr[-3000:]
    row = stack.rows(folder.as_uri())[photo.as_uri()]
    assert row["status"] != "ok" and row["fake_probability"] is None, row  # the partial file's verdict
    assert photo.read_bytes() == complete.read_bytes()

    again = stack.cli("scan", str(folder), unset=EMBEDDED)
    assert again.returncode == 0, again.stderr[-3000:]
    queued, _ = (json.loads(line) for line in again.stdout.splitlines())
    assert (queued["queued"], queued["skipped"]) == (1, 0), queued
    row = stack.rows(folder.as_uri())[photo.as_uri()]
    digest = hashlib.sha256(complete.read_bytes()).hexdigest()
    assert (row["status"], row["content_sha256"]) == ("ok", digest), row
