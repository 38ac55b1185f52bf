"""Edges of a scan's life that no fault proxy reaches alone: a producer stopped as a supervisor stops it
(SIGTERM)."""

from __future__ import annotations

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
