"""``deepscan`` as a user runs it: a real subprocess, real files, a real database."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import BUNDLED_PACK, REPO


def deepscan(
    *args: str, database_url: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if database_url:
        env["DEEPSCAN_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd or REPO,
        timeout=600,
        check=False,
    )


def jsonl(stdout: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def rows(database_url: str) -> list[dict]:  # type: ignore[type-arg]
    engine = create_engine(database_url.replace("postgresql+psycopg", "postgresql+psycopg"))
    with engine.connect() as connection:
        found = [dict(r._mapping) for r in connection.execute(text("SELECT * FROM results ORDER BY uri"))]
    engine.dispose()
    return found


@pytest.mark.slow
def test_bundled_pack_gives_three_verdicts_and_rows(samples: Path, db_url: str) -> None:
    """The foundation's acceptance: a face image, a video with faces and a speech file, all ``ok``."""
    inputs = [samples / "face.jpg", samples / "talking_face.mp4", samples / "speech.wav"]
    proc = deepscan("detect", *map(str, inputs), "--format", "jsonl", database_url=db_url)
    assert proc.returncode == 0, proc.stderr
    out = jsonl(proc.stdout)
    assert [r["media_type"] for r in out] == ["image", "video", "audio"]
    for r in out:
        assert r["status"] == "ok" and 0.0 <= r["fake_probability"] <= 1.0, r
        assert r["model"].startswith("deepscan-default@")
    stored = rows(db_url)
    assert [r["uri"] for r in stored] == sorted(p.resolve().as_uri() for p in inputs)
    by_type = {r["media_type"]: r for r in stored}
    assert by_type["video"]["fake_probability"] == pytest.approx(out[1]["fake_probability"])
    assert all(r["status"] == "ok" and r["content_sha256"] for r in stored)


def test_folder_scan_mixed_inputs_exit_1_and_every_file_has_a_line(
    samples: Path, random_pack: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    proc = deepscan(
        "detect", str(samples), "--models", str(random_pack), "--format", "jsonl", database_url=url
    )
    assert proc.returncode == 1, proc.stderr
    out = jsonl(proc.stdout)
    assert sorted(Path(r["path"]).name for r in out) == sorted(p.name for p in samples.iterdir())
    statuses = {Path(r["path"]).name: r["status"] for r in out}
    assert statuses["corrupt.jpg"] == "decode_error" and statuses["notes.txt"] == "unsupported"
    assert all(r["reason"] for r in out if r["status"] != "ok")
    assert len(rows(url)) == len(out)

    again = deepscan(
        "detect", str(samples), "--models", str(random_pack), "--format", "jsonl", database_url=url
    )
    assert len(rows(url)) == len(out), "a second run updates the rows, it does not add more"
    scans = jsonl(deepscan("scans", database_url=url).stdout)
    assert [s["total"] for s in scans] == [len(out), len(out)] and again.returncode == 1


def test_csv_and_table_formats(samples: Path, random_pack: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    files = [str(samples / "face.jpg"), str(samples / "notes.txt")]
    proc = deepscan("detect", *files, "--models", str(random_pack), "--format", "csv", database_url=url)
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["status"] for r in table] == ["ok", "unsupported"] and table[0]["n_faces"] == "1"
    assert table[1]["fake_probability"] == ""  # no verdict is empty, never 0.5
    proc = deepscan("detect", *files, "--models", str(random_pack), "--format", "table", database_url=url)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["path", "type", "status"] and "unsupported" in lines[3]


def test_results_filters(samples: Path, random_pack: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    deepscan("detect", str(samples), "--models", str(random_pack), database_url=url)
    bad = jsonl(deepscan("results", "--status", "decode_error", database_url=url).stdout)
    assert [Path(r["uri"]).name for r in bad] == ["corrupt.jpg"]
    scored = jsonl(deepscan("results", "--min-probability", "0", database_url=url).stdout)
    assert scored and all(r["fake_probability"] is not None for r in scored)
    table = list(csv.DictReader(io.StringIO(deepscan("results", "--format", "csv", database_url=url).stdout)))
    by_name = {Path(r["path"]).name: r for r in table}
    assert by_name["face.jpg"]["n_faces"] == "1" and int(by_name["talking_face.mp4"]["n_faces"]) >= 6
    assert by_name["face.jpg"]["model"] == "test-pack@0.0.1"


def test_usage_errors_exit_2(tmp_path: Path, random_pack: Path) -> None:
    assert deepscan("detect", str(tmp_path / "nope.jpg")).returncode == 2
    assert deepscan("detect").returncode == 2
    proc = deepscan(
        "detect",
        str(REPO / "pyproject.toml"),
        "--models",
        str(tmp_path),
        database_url=f"sqlite:///{tmp_path}/x.db",
    )
    assert proc.returncode == 2 and "model pack" in proc.stderr


def test_models_path_and_list(random_pack: Path) -> None:
    assert deepscan("models", "path").stdout.strip() == str(BUNDLED_PACK)
    listing = deepscan("models", "list", "--models", str(random_pack)).stdout
    assert "test-pack@0.0.1" in listing and "densenet121" in listing and "audio_cnn" in listing


def test_default_database_is_sqlite_in_the_working_directory(
    samples: Path, random_pack: Path, tmp_path: Path
) -> None:
    # a newcomer's shell: no deepscan settings, and nothing that quiets TensorFlow's C++ logging
    env_free = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSCAN_", "TF_CPP_"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "detect",
            str(samples / "face.jpg"),
            "--models",
            str(random_pack),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env_free, "PYTHONPATH": str(REPO)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no TensorFlow banner, no warning: a plain detect prints its results only
    assert len(rows(f"sqlite:///{tmp_path / 'deepscan.db'}")) == 1


def test_models_compact_stores_float16_and_keeps_the_pack_loadable(random_pack: Path, tmp_path: Path) -> None:
    import shutil

    from pipeline.pack import ModelPack

    copy = tmp_path / "pack"
    shutil.copytree(random_pack, copy)
    before = {p.name: p.stat().st_size for p in copy.glob("*.keras")}
    out = deepscan("models", "compact", "--models", str(copy))
    assert out.returncode == 0, out.stderr
    after = {p.name: p.stat().st_size for p in copy.glob("*.keras")}
    assert all(after[name] < before[name] for name in before)
    ModelPack.load(copy)  # checksums in the manifest match the rewritten files


def test_train_spoofs_makes_the_named_families(samples: Path, tmp_path: Path) -> None:
    import shutil

    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(samples / "speech.wav", real / "19-198-0001.wav")
    out = deepscan(
        "train",
        "spoofs",
        "--real",
        str(real),
        "--out",
        str(tmp_path / "corpus"),
        "--families",
        "phase_vocoder,lpc",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"real": 1, "phase_vocoder": 1, "lpc": 1}
    assert sorted(p.name for p in (tmp_path / "corpus" / "fake").iterdir()) == ["lpc", "phase_vocoder"]
