from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import MediaDecodeError, UnsupportedMediaError
from pipeline.media import (
    SAMPLE_RATE_HZ,
    decode_image_bytes,
    detect_media_type,
    iter_video_frames,
    load_audio,
    load_image,
    probe_video,
)


def lavfi(path: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args, str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lavfi")
    return {
        "mkv": lavfi(
            d / "clip.bin", "-f", "lavfi", "-i", "testsrc=duration=3.5:size=160x120:rate=10", "-f", "matroska"
        ),
        "m4a": lavfi(d / "tone.mp4", "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac"),
        "mp3": lavfi(d / "tone.mp3", "-f", "lavfi", "-i", "sine=frequency=440:duration=2:sample_rate=44100"),
        "rotated": lavfi(
            d / "rot.mp4",
            "-i",
            str(
                lavfi(
                    d / "upright.mp4",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc=duration=2:size=160x120:rate=10",
                    "-c:v",
                    "libx264",
                )
            ),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
        ),  # a phone held upright
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("face.jpg", "image"),
        ("jpeg_named.mp4", "image"),
        ("no_face.png", "image"),
        ("speech.wav", "audio"),
        ("talking_face.mp4", "video"),
        ("notes.txt", "unknown"),
        ("corrupt.jpg", "image"),
    ],
)
def test_media_type_comes_from_content(samples: Path, name: str, expected: str) -> None:
    assert detect_media_type(samples / name) == expected


def test_containers_are_told_apart_by_their_streams(generated: dict[str, Path]) -> None:
    assert detect_media_type(generated["mkv"]) == "video"  # no extension to go by
    assert detect_media_type(generated["m4a"]) == "audio"  # an mp4 container with only sound
    assert detect_media_type(generated["mp3"]) == "audio"


def test_empty_file_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UnsupportedMediaError, match="empty"):
        detect_media_type(tmp_path / "empty.jpg")


def test_archives_are_recognised(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("x.txt", "hello")
    assert detect_media_type(tmp_path / "a.zip") == "archive"


def test_load_image_is_rgb_uint8(samples: Path) -> None:
    image = load_image(samples / "face.jpg")
    assert image.dtype == np.uint8 and image.shape == (512, 512, 3)
    # the astronaut's suit is white and the flag behind her is red: RGB order, not BGR
    assert image[:, :, 0].mean() > image[:, :, 2].mean()


def test_corrupt_image_raises_decode_error(samples: Path) -> None:
    with pytest.raises(MediaDecodeError):
        load_image(samples / "corrupt.jpg")
    with pytest.raises(MediaDecodeError):
        decode_image_bytes(b"")


def test_video_frames_one_per_second(generated: dict[str, Path]) -> None:
    info = probe_video(generated["mkv"])
    assert (info.width, info.height) == (160, 120) and info.duration_s == pytest.approx(3.5, abs=0.1)
    frames = list(iter_video_frames(generated["mkv"], info))
    assert [t for t, _ in frames] == [0.0, 1.0, 2.0, 3.0]
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for _, f in frames)
    assert not np.array_equal(frames[0][1], frames[1][1])  # testsrc moves: distinct seconds


def test_video_frames_window_for_subtasks(generated: dict[str, Path]) -> None:
    info = probe_video(generated["mkv"])
    frames = list(iter_video_frames(generated["mkv"], info, start_s=2.0, duration_s=1.0))
    assert [t for t, _ in frames] == [2.0]


def test_kept_frames_are_decoded_exactly_though_frames_nobody_refers_to_are_skipped(tmp_path: Path) -> None:
    """x264's defaults (B-frames, some of them references): every kept frame is one of the clip's frames,
    bit for bit, and within two frames of the one a full decode keeps for that second."""
    clip = lavfi(
        tmp_path / "b_frames.mp4",
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=4:size=160x120:rate=25",
        "-c:v",
        "libx264",
    )
    info = probe_video(clip)

    def decoded(*filters: str) -> np.ndarray:
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(clip), *filters, "-f", "rawvideo"]
        raw = subprocess.run([*cmd, "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
        return np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)

    every_frame, fully_kept = decoded(), decoded("-vf", "fps=1")
    kept = [frame for _, frame in iter_video_frames(clip, info)]
    assert len(kept) == len(fully_kept) == 4

    def index_of(frame: np.ndarray) -> int:
        matches = [i for i, candidate in enumerate(every_frame) if np.array_equal(candidate, frame)]
        assert matches, "a kept frame is not any frame of the clip: decoded from a missing reference"
        return matches[0]

    for frame, full in zip(kept, fully_kept, strict=True):
        assert abs(index_of(frame) - index_of(full)) <= 2


@pytest.mark.parametrize(("duration_s", "seconds"), [(0.3, [0.0]), (3.4, [0.0, 1.0, 2.0, 3.0])])
def test_every_second_a_video_reaches_gets_a_frame_whole_or_in_windows(
    tmp_path: Path, duration_s: float, seconds: list[float]
) -> None:
    clip = lavfi(
        tmp_path / "c.mp4", "-f", "lavfi", "-i", f"testsrc=duration={duration_s}:size=160x120:rate=25"
    )
    info = probe_video(clip)
    assert [t for t, _ in iter_video_frames(clip, info)] == seconds
    windows = [iter_video_frames(clip, info, start_s=s, duration_s=1.0) for s in seconds]
    assert [t for window in windows for t, _ in window] == seconds  # the distributed scanner's segments


def test_rotation_metadata_swaps_the_frame_size(generated: dict[str, Path]) -> None:
    info = probe_video(generated["rotated"])
    assert (info.width, info.height) == (120, 160)
    _, frame = next(iter(iter_video_frames(generated["rotated"], info)))
    assert frame.shape == (160, 120, 3)


def test_video_soundtrack_is_detected(samples: Path) -> None:
    info = probe_video(samples / "talking_face.mp4")
    assert info.has_audio and info.duration_s == pytest.approx(6.0, abs=0.2)


def test_truncated_video_fails_cleanly(samples: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((samples / "talking_face.mp4").read_bytes()[:3000])
    with pytest.raises(MediaDecodeError):
        info = probe_video(broken)
        list(iter_video_frames(broken, info))


@pytest.mark.parametrize("name", ["speech.wav", "talking_face.mp4"])
def test_load_audio_mono_at_fixed_rate(samples: Path, name: str) -> None:
    signal = load_audio(samples / name)
    assert signal.dtype == np.float32 and signal.ndim == 1
    assert 3.0 < signal.size / SAMPLE_RATE_HZ < 12.0
    assert 0.01 < np.abs(signal).max() <= 1.0


def test_load_audio_resamples_mp3(generated: dict[str, Path]) -> None:
    signal = load_audio(generated["mp3"])
    assert signal.size / SAMPLE_RATE_HZ == pytest.approx(2.0, abs=0.1)
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.fft.rfftfreq(signal.size, 1 / SAMPLE_RATE_HZ)[spectrum.argmax()] == pytest.approx(440, abs=5)


def test_load_audio_of_non_audio_raises(samples: Path) -> None:
    with pytest.raises(MediaDecodeError):
        load_audio(samples / "notes.txt")


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1 x 1 PNG whose IHDR is rewritten (CRC included) to claim ``width`` x ``height``."""
    import struct
    import zlib

    import cv2

    png = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_header_sizes_are_read_without_decoding_and_bombs_refused() -> None:
    import cv2

    from pipeline.media import MAX_IMAGE_PIXELS, declared_image_size, decode_image_bytes

    image = np.zeros((3, 5, 3), np.uint8)
    for extension in (".png", ".jpg", ".bmp"):
        assert declared_image_size(cv2.imencode(extension, image)[1].tobytes()) == (5, 3), extension
    assert declared_image_size(b"\xff\xd8\xff\xe0\x00") is None  # truncated: the decoder decides
    with pytest.raises(UnsupportedMediaError, match="40000 x 40000"):
        decode_image_bytes(png_claiming(40_000, 40_000))
    assert MAX_IMAGE_PIXELS < 40_000 * 40_000


@pytest.mark.parametrize(
    ("stream", "match"),
    [({"width": 40_000, "height": 40_000, "duration": "2"}, "pixels"), ({"duration": "1e9"}, "longer")],
)
def test_video_headers_claiming_absurd_sizes_are_refused(
    monkeypatch: pytest.MonkeyPatch, stream: dict[str, object], match: str
) -> None:
    from pipeline import media

    video = {"codec_type": "video", "width": 64, "height": 48, "avg_frame_rate": "25/1", **stream}
    monkeypatch.setattr(media, "_ffprobe", lambda path: {"streams": [video], "format": {}})
    with pytest.raises(UnsupportedMediaError, match=match):
        media.probe_video("clip.mp4")
