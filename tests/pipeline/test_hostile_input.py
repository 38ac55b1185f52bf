"""Media whose headers lie: each must end with a status and a reason, in bounded memory and time."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyze import Analyzer
from pipeline.errors import UnsupportedMediaError
from pipeline.media import SAMPLE_RATE_HZ, load_audio
from pipeline.pack import ModelPack

N_SAMPLES = 400  # 800 bytes of PCM: claimed at 1 Hz, 6.4 million samples once resampled to 16 kHz


def wav(samples: np.ndarray, rate_hz: int) -> bytes:
    """A mono 16-bit PCM WAV whose header states ``rate_hz``, whatever the samples were recorded at."""
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate_hz, 2 * rate_hz, 2, 16)  # PCM, mono, 16 bits
    header = struct.pack("<4sI4s4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", len(fmt))
    return header + fmt + struct.pack("<4sI", b"data", len(data)) + data


def noise(n: int) -> np.ndarray:
    return np.random.default_rng(3).normal(0, 3000, n)


@pytest.fixture
def one_hertz_files(tmp_path: Path) -> dict[str, Path]:
    """The same few hundred samples claimed at 1 Hz: a WAV (soundfile's path) and a Matroska file holding
    PCM (ffmpeg's path, as for a video's soundtrack)."""
    (tmp_path / "one_hz.wav").write_bytes(wav(noise(N_SAMPLES), 1))
    raw = tmp_path / "pcm.s16"
    raw.write_bytes(noise(N_SAMPLES).astype("<i2").tobytes())
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "s16le", "-ar", "1", "-ac", "1", "-i", str(raw),
         "-c:a", "pcm_s16le", str(tmp_path / "one_hz.mkv")],
        check=True, timeout=60,
    )  # fmt: skip
    return {"wav": tmp_path / "one_hz.wav", "mkv": tmp_path / "one_hz.mkv"}


@pytest.mark.parametrize("kind", ["wav", "mkv"])
def test_audio_claiming_an_absurdly_low_sample_rate_is_refused_not_inflated(
    one_hertz_files: dict[str, Path], kind: str
) -> None:
    # Resampled, each claimed sample becomes 16 000: a 96 kB file would decode to 3 GB.
    with pytest.raises(UnsupportedMediaError, match="1 samples a second"):
        load_audio(one_hertz_files[kind])


def test_the_lowest_rate_in_use_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "phone.wav"
    path.write_bytes(wav(noise(8000), 8000))  # one second of telephone audio
    assert load_audio(path).size == pytest.approx(SAMPLE_RATE_HZ, abs=10)


def test_the_row_of_such_audio_says_why(random_pack: Path, one_hertz_files: dict[str, Path]) -> None:
    row = Analyzer(ModelPack.load(random_pack)).analyze_file(one_hertz_files["wav"]).to_dict()
    assert (row["media_type"], row["status"], row["fake_probability"]) == ("audio", "unsupported", None)
    assert "1 samples a second" in row["reason"]
