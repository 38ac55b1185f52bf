"""Metrics and logs of a real ``deepscan worker`` during a scan: its Prometheus endpoint (the pool's children
count in multiprocess mode, the main process serves them) and its JSON log lines with the object's id."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import wait_for
from workers.logs import JsonFormatter

pytestmark = pytest.mark.services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float] | None:
    """``{'name{labels}': value}`` of the endpoint, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_worker_serves_metrics_that_move_with_a_scan(
    stack_factory: Any, tmp_path: Path, samples: Path
) -> None:
    stack = stack_factory(f"sqlite:///{tmp_path / 'metrics.db'}")
    port = free_port()
    worker = stack.worker(DEEPSCAN_METRICS_PORT=str(port), DEEPSCAN_LOG_FORMAT="json")
    before = wait_for(lambda: scrape(port), timeout_s=120, what="the worker's metrics endpoint")
    assert not any(name.startswith("deepscan_objects_total") for name in before)
    assert before['deepscan_queue_depth{queue="gpu"}'] == 0

    stack.put("media/face.jpg", samples / "face.jpg")
    stack.put("media/no_face.png", samples / "no_face.png")
    proc = stack.cli("scan", stack.uri("media/"), "--wait", "--timeout", "240")
    assert proc.returncode == 0, proc.stderr[-3000:] + stack.log("worker")[-3000:]

    after = scrape(port)
    assert after is not None and worker.poll() is None
    rows = stack.rows()
    face = rows[stack.uri("media/face.jpg")]
    assert after[f'deepscan_objects_total{{label="{face["label"]}",status="ok"}}'] == 1
    assert after['deepscan_objects_total{label="none",status="no_face"}'] == 1
    assert after['deepscan_task_duration_seconds_count{task="deepscan.analyze_object"}'] == 2
    assert after['deepscan_task_duration_seconds_sum{task="deepscan.analyze_object"}'] > 0
    assert after["deepscan_model_load_seconds_count"] >= 1  # the pool child loaded the pack at start
    assert after['deepscan_queue_depth{queue="gpu"}'] == 0

    records = [json.loads(line) for line in stack.log("worker").splitlines() if line.startswith("{")]
    about_face = [r for r in records if r.get("object") == stack.uri("media/face.jpg")]
    assert about_face, stack.log("worker")[-3000:]
    assert {r["scan_id"] for r in about_face} == {face["scan_id"]}
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_json_formatter_outside_a_task() -> None:
    record = logging.LogRecord("deepscan.x", logging.WARNING, __file__, 1, "%d objects", (3,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "3 objects" and entry["level"] == "WARNING" and "object" not in entry
