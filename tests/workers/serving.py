"""``deepscan serve`` as a real process on a free loopback port, and Debian's headless Chromium driven by
Selenium (``browser``), for the browser and end-to-end tests. Never a downloaded browser."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, missing_service

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,1900",
)
START_TIMEOUT_S = 180  # TensorFlow's import and the pack's load, on two busy cores
STOP_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, token: str | None = None, timeout_s: float = 10) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


@contextmanager
def serve(env: dict[str, str], work: Path, *, wait_ready: bool = True) -> Iterator[str]:
    """Run ``deepscan serve`` with ``env`` over the environment; yields its base URL, stops it after.

    With ``wait_ready``, returns once /healthz says the pack is loaded. Its log is ``work/serve.log``.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = work / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **env},
            cwd=work,  # no stray .env from the repository
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"deepscan serve exited with {process.returncode}:\n{log_path.read_text()}"
                )
            try:
                health = get_json(f"{base}/healthz", timeout_s=2)
                if health["ready"] or not wait_ready:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"deepscan serve not ready after {START_TIMEOUT_S} s:\n{log_path.read_text()}"
                )
            time.sleep(0.5)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium with a fresh profile, through Debian's chromedriver."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):  # make test installs them: CI fails, not skips
        missing_service("Debian's chromium and chromium-driver are not installed (.ci/system-deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="deepscan-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()
