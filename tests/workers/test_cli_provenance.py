"""Provenance through ``deepscan detect`` (the embedded path) and ``deepscan results --provenance``, with
the test root configured as the trust anchor, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.provenance_media import EXPECTED_PROVENANCE, assert_provenance
from tests.workers.test_cli import jsonl


def deepscan(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        timeout=600,
        check=False,
    )


def by_name(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(line["path"]).name: line for line in lines}


@pytest.mark.slow
def test_detect_reports_provenance_and_a_verified_claim_decides(
    provenance_media: dict[str, Path], random_pack: Path, tmp_path: Path
) -> None:
    env = {
        "DEEPSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}",
        "DEEPSCAN_C2PA_TRUST_ANCHORS": str(provenance_media["anchors.pem"]),
    }
    files = [str(provenance_media[name]) for name in EXPECTED_PROVENANCE]
    proc = deepscan("detect", *files, "--models", str(random_pack), "--format", "jsonl", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = by_name(jsonl(proc.stdout))
    assert sorted(out) == sorted(EXPECTED_PROVENANCE)
    for name in EXPECTED_PROVENANCE:
        assert_provenance(name, out[name])

    stored = {}
    for summary in ("ai", "camera", "none"):
        listed = jsonl(deepscan("results", "--provenance", summary, env=env).stdout)
        assert sorted(by_name(listed)) == sorted(
            n for n, e in EXPECTED_PROVENANCE.items() if e[1] == summary
        ), summary
        stored.update(by_name(listed))
    for name, line in out.items():  # a stored row reads back as detect printed it
        assert stored[name]["provenance"] == line["provenance"], name
        assert (stored[name]["label"], stored[name]["details"]) == (line["label"], line["details"]), name

    # without the anchor the same signature is valid but untrusted: evidence, and the detectors decide
    untrusted = deepscan(
        "detect",
        files[0],
        "--models",
        str(random_pack),
        "--format",
        "jsonl",
        env={**env, "DEEPSCAN_C2PA_TRUST_ANCHORS": ""},
    )
    (line,) = jsonl(untrusted.stdout)
    assert line["provenance"]["credentials"] == "untrusted" and line["provenance"]["summary"] == "ai"
    assert line["details"].get("verdict_driven_by") != "provenance"
