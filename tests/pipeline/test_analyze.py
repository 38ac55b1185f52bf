from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.analyze import Analyzer
from pipeline.pack import ModelPack
from workers.samples import face_image


@pytest.fixture(scope="module")
def analyzer(random_pack: Path) -> Analyzer:
    return Analyzer(ModelPack.load(random_pack))


def check_verdict(row: dict) -> None:  # type: ignore[type-arg]
    assert row["status"] == "ok" and row["reason"] is None
    assert 0.0 <= row["fake_probability"] <= 1.0
    assert row["label"] in ("fake", "real")
    assert row["confidence"]["fake"] + row["confidence"]["real"] == pytest.approx(1.0)


def test_image_with_a_face(analyzer: Analyzer, samples: Path) -> None:
    row = analyzer.analyze_file(samples / "face.jpg").to_dict()
    check_verdict(row)
    assert row["media_type"] == "image" and len(row["faces"]) == 1
    face = row["faces"][0]
    assert set(face["members"]) == {"spectral", "densenet121"} and face["box"]["w"] > 50
    assert row["model"] == "test-pack@0.0.1" and row["elapsed_s"] > 0


def test_frames_are_scored_in_one_batch_whatever_their_order(analyzer: Analyzer) -> None:
    image = face_image()
    empty = np.zeros((100, 100, 3), np.uint8)
    scored = analyzer.score_frames([image, empty, image], [0.0, 1.0, 2.0])
    assert [len(s.boxes) for s in scored] == [1, 0, 1]
    assert scored[1].fake_probability is None
    assert scored[0].fake_probability == pytest.approx(scored[2].fake_probability)


def test_video_timeline_and_soundtrack(analyzer: Analyzer, samples: Path) -> None:
    row = analyzer.analyze_file(samples / "talking_face.mp4").to_dict()
    check_verdict(row)
    assert [e["second"] for e in row["timeline"]] == list(range(6))
    assert all(e["n_faces"] >= 1 for e in row["timeline"])
    votes = row["details"]["faces_verdict"]["votes"]
    assert votes["fake"] + votes["real"] == row["details"]["faces_verdict"]["seconds_with_faces"]
    assert row["audio"]["windows"] >= 1 and 0 <= row["audio"]["fake_probability"] <= 1
    assert row["details"]["verdict_driven_by"] in ("faces", "audio")


def test_speech(analyzer: Analyzer, samples: Path) -> None:
    row = analyzer.analyze_file(samples / "speech.wav").to_dict()
    check_verdict(row)
    assert (
        row["media_type"] == "audio" and len(row["audio"]["window_probabilities"]) == row["audio"]["windows"]
    )


@pytest.mark.parametrize(
    ("name", "media_type", "status"),
    [
        ("no_face.png", "image", "no_face"),
        ("corrupt.jpg", "image", "decode_error"),
        ("notes.txt", "unknown", "unsupported"),
        ("silence.wav", "audio", "silent"),
        ("short.wav", "audio", "too_short"),
    ],
)
def test_inputs_without_a_verdict_say_why(
    analyzer: Analyzer, samples: Path, name: str, media_type: str, status: str
) -> None:
    row = analyzer.analyze_file(samples / name).to_dict()
    assert (row["media_type"], row["status"]) == (media_type, status)
    assert (
        row["reason"]
        and row["fake_probability"] is None
        and row["label"] is None
        and row["confidence"] is None
    )


def test_video_without_faces_or_sound_is_no_face(analyzer: Analyzer, tmp_path: Path) -> None:
    import subprocess

    clip = tmp_path / "bars.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=3:size=320x240:rate=10",
            "-c:v",
            "libx264",
            str(clip),
        ],
        check=True,
    )
    row = analyzer.analyze_file(clip).to_dict()
    assert row["status"] == "no_face" and len(row["timeline"]) == 3 and row["fake_probability"] is None


def test_unreadable_paths_do_not_raise(analyzer: Analyzer, tmp_path: Path) -> None:
    assert analyzer.analyze_file(tmp_path / "missing.jpg").status == "decode_error"
    assert analyzer.analyze_file(tmp_path).status == "decode_error"  # a directory
