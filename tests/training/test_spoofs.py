from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.errors import DeepscanError, TooShortError
from training import spoofs
from training.audio_datasets import load_folders
from training.spoofs import (
    HARVARD_SENTENCES,
    NO_PROCESSING,
    GeneratorFailed,
    GeneratorUnavailable,
    Processing,
    build_spoof_dataset,
    codec_round_trip,
    process,
    resynth_griffin_lim,
    resynth_lpc,
    resynth_mel_inversion,
    resynth_phase_vocoder,
    resynth_world,
    tts_espeak,
    tts_festival,
    tts_flite,
)

RATE = 16_000


def needs(binary: str, package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(binary) is None, reason=f"{binary} not installed (apt-get install {package})"
    )


needs_espeak = needs("espeak-ng", "espeak-ng")
needs_flite = needs("flite", "flite")
needs_festival = needs("text2wave", "festival festvox-kallpc16k")
needs_ffmpeg = needs("ffmpeg", "ffmpeg")


def voiced(seconds: float = 2.0, f0_hz: float = 120.0, seed: int = 0) -> np.ndarray:
    """A vowel-like test signal: harmonics of a gliding F0 under a formant-ish tilt, plus a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = f0_hz * (1.0 + 0.1 * np.sin(2 * np.pi * 0.5 * t))  # slow intonation
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 30) if k * f0_hz < RATE / 2)
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)  # 50 ms fades
    noise = 0.01 * np.random.default_rng(seed).standard_normal(t.shape[0])
    return (0.2 * envelope * signal / 2.0 + noise).astype(np.float32)


def rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))


def assert_speech_like(audio: np.ndarray, min_s: float, max_s: float) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert min_s * RATE <= audio.shape[0] <= max_s * RATE
    assert np.isfinite(audio).all() and rms(audio) > 1e-3 and np.abs(audio).max() <= 1.0


# --- text to speech ---------------------------------------------------------------------------------------

SENTENCE = HARVARD_SENTENCES[0]  # "The birch canoe slid on the smooth planks." is about 2 s


def test_harvard_sentences() -> None:
    assert len(HARVARD_SENTENCES) == 60 == len(set(HARVARD_SENTENCES))
    assert all(s[0].isupper() and s.endswith(".") for s in HARVARD_SENTENCES)


@needs_espeak
@pytest.mark.parametrize("voice", ["en-us", "en-gb-x-rp+f3", "en-sc+m7"])
def test_tts_espeak(voice: str) -> None:
    assert_speech_like(tts_espeak(SENTENCE, voice=voice, speed_wpm=160, pitch=40), 1.0, 6.0)


@needs_espeak
def test_tts_espeak_rate_changes_duration() -> None:
    slow, fast = (tts_espeak(SENTENCE, voice="en-us", speed_wpm=w, pitch=50) for w in (120, 240))
    assert slow.shape[0] > 1.5 * fast.shape[0]


@needs_espeak
def test_tts_espeak_unknown_voice_fails() -> None:
    with pytest.raises(GeneratorFailed, match="espeak-ng"):
        tts_espeak(SENTENCE, voice="xx-nonexistent", speed_wpm=175, pitch=50)


@needs_flite
@pytest.mark.parametrize("voice", ["slt", "kal"])
def test_tts_flite(voice: str) -> None:
    assert_speech_like(tts_flite(SENTENCE, voice=voice), 1.0, 6.0)
    stretched = tts_flite(SENTENCE, voice=voice, duration_stretch=1.5, f0_mean_hz=180.0)
    assert_speech_like(stretched, 1.5, 9.0)


@needs_flite
def test_flite_voices_and_unknown_voice() -> None:
    assert "awb_time" not in spoofs.flite_voices() and "slt" in spoofs.flite_voices()
    with pytest.raises(ValueError, match="unknown flite voice"):
        tts_flite(SENTENCE, voice="nobody")


@needs_festival
def test_tts_festival() -> None:
    assert_speech_like(tts_festival(SENTENCE), 1.0, 6.0)
    with pytest.raises(ValueError):
        tts_festival(SENTENCE, voice="kal) (quit")


def test_missing_binary_is_generator_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    calls: list[Callable[[], np.ndarray]] = [
        lambda: tts_espeak(SENTENCE, voice="en-us", speed_wpm=175, pitch=50),
        lambda: tts_flite(SENTENCE, voice="slt"),
        lambda: tts_festival(SENTENCE),
        lambda: codec_round_trip(voiced(0.5), codec="mp3", bitrate_kbps=64),
    ]
    for call, package in zip(calls, ("espeak-ng", "flite", "festival", "ffmpeg"), strict=True):
        with pytest.raises(GeneratorUnavailable, match=f"apt package: {package}") as info:
            call()
        assert isinstance(info.value, DeepscanError) and info.value.status == "generator_unavailable"


# --- resynthesis ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resynth",
    [resynth_griffin_lim, resynth_world, resynth_mel_inversion, resynth_lpc, resynth_phase_vocoder],
    ids=lambda f: f.__name__,
)
def test_resynthesis_keeps_length_and_level(resynth: Callable[[np.ndarray], np.ndarray]) -> None:
    source = voiced()
    out = resynth(source)
    assert_speech_like(out, 2.0, 2.0)
    assert 0.25 < rms(out) / rms(source) < 4.0
    assert not np.allclose(out, source, atol=1e-3)  # a remake, not a copy
    # the voicing survives: most energy stays below 4 kHz, as in the source
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    assert spectrum[: spectrum.shape[0] // 2].sum() > 0.9 * spectrum.sum()
    np.testing.assert_array_equal(resynth(source), out)  # deterministic


def test_lpc_vocoder_keeps_the_pitch_of_a_voiced_signal() -> None:
    """The pulse train sits at the source's F0: the strongest spectral peak stays where it was."""
    source = voiced()
    out = resynth_lpc(source)
    freqs = np.fft.rfftfreq(source.size, 1 / RATE)
    band = (freqs > 60) & (freqs < 400)
    peak = lambda x: freqs[band][np.argmax(np.abs(np.fft.rfft(x))[band])]  # noqa: E731
    assert abs(peak(out) - peak(source)) < 10.0


def test_resynthesis_refuses_a_too_short_signal() -> None:
    with pytest.raises(TooShortError):
        resynth_world(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="mono"):
        resynth_griffin_lim(np.zeros((2, RATE), np.float32))


# --- processing -------------------------------------------------------------------------------------------

ALWAYS = Processing(noise_probability=1.0, lowpass_probability=1.0, codec_probability=1.0)


@pytest.mark.parametrize(
    "processing",
    [Processing(), NO_PROCESSING, pytest.param(ALWAYS, marks=needs_ffmpeg)],
    ids=["default", "none", "always"],
)
def test_process_keeps_shape_dtype_and_peak(processing: Processing) -> None:
    for seed in range(4):
        loud = 5.0 * voiced(1.0, seed=seed)  # clips far above full scale unless limited
        out = process(loud, np.random.default_rng(seed), processing)
        assert out.shape == loud.shape and out.dtype == np.float32
        assert np.abs(out).max() <= 1.0 and rms(out) > 1e-3
        np.testing.assert_array_equal(out, process(loud, np.random.default_rng(seed), processing))


def test_no_processing_leaves_a_quiet_signal_alone() -> None:
    quiet = 0.5 * voiced(1.0)
    np.testing.assert_allclose(process(quiet, np.random.default_rng(0), NO_PROCESSING), quiet, atol=1e-6)


def test_processing_levels_both_classes_alike() -> None:
    levelled = Processing(noise_probability=0.0, lowpass_probability=0.0, codec_probability=0.0)
    quiet, loud = 0.01 * voiced(1.0), 0.5 * voiced(1.0)
    a = process(quiet, np.random.default_rng(3), levelled)
    b = process(loud, np.random.default_rng(3), levelled)
    assert rms(a) == pytest.approx(rms(b), rel=1e-3)  # same draw, same level: loudness tells nothing


def test_lowpass_removes_the_top_band() -> None:
    noise = (0.1 * np.random.default_rng(0).standard_normal(RATE)).astype(np.float32)
    lowpass_only = Processing(
        target_rms_dbfs=None,
        noise_probability=0.0,
        lowpass_probability=1.0,
        lowpass_hz_range=(3400.0, 3400.0),
        codec_probability=0.0,
        gain_db_range=(0.0, 0.0),
    )
    out = process(noise, np.random.default_rng(0), lowpass_only)
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    top = spectrum[int(spectrum.shape[0] * 5000 / 8000) :].sum()
    assert top < 1e-3 * spectrum.sum()


@needs_ffmpeg
@pytest.mark.parametrize(("codec", "bitrate_kbps"), [("mp3", 32), ("opus", 16)])
def test_codec_round_trip(codec: str, bitrate_kbps: int) -> None:
    source = voiced(1.0)
    out = codec_round_trip(source, codec=codec, bitrate_kbps=bitrate_kbps)
    assert out.shape == source.shape and out.dtype == np.float32
    assert np.corrcoef(source, out)[0, 1] > 0.8  # aligned and still the same sound
    assert not np.array_equal(out, source)


def test_processing_options_are_checked() -> None:
    with pytest.raises(ValueError, match="noise_probability"):
        Processing(noise_probability=1.5)
    with pytest.raises(ValueError, match="gain_db_range"):
        Processing(gain_db_range=(6.0, -12.0))
    with pytest.raises(ValueError, match="codecs"):
        Processing(codecs=("aac",))


# --- dataset builder --------------------------------------------------------------------------------------


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    """Two 2-second 'LibriSpeech' clips of two speakers."""
    directory = tmp_path / "librispeech"
    directory.mkdir()
    sf.write(directory / "19-198-0001.wav", voiced(2.0, f0_hz=110.0, seed=1), RATE)
    sf.write(directory / "26-495-0000.flac", voiced(2.0, f0_hz=210.0, seed=2), RATE)
    return directory


def available_families() -> tuple[str, ...]:
    binaries = {"espeak": "espeak-ng", "flite": "flite", "festival": "text2wave"}
    return tuple(f for f in spoofs.ALL_FAMILIES if f not in binaries or shutil.which(binaries[f]))


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def test_build_spoof_dataset_layout_and_determinism(real_dir: Path, tmp_path: Path) -> None:
    families = available_families()
    counts = build_spoof_dataset(real_dir, tmp_path / "a", seed=7, max_workers=1)
    assert counts == {"real": 2, **{f: (2 if f in families else 0) for f in spoofs.ALL_FAMILIES}}

    written = file_bytes(tmp_path / "a")
    expected = {"real/19-198-0001.wav", "real/26-495-0000.wav"} | {
        f"fake/{family}/{speaker}-{family}-0.wav" for family in families for speaker in ("19", "26")
    }
    assert set(written) == expected
    for name in written:
        audio, rate = sf.read(tmp_path / "a" / name, dtype="float32")
        assert rate == RATE and audio.ndim == 1 and np.abs(audio).max() <= 1.0 and rms(audio) > 1e-4

    # what load_folders reads back keeps each fake with the speaker of its real clip
    items = load_folders(tmp_path / "a")
    assert {(i.label, i.speaker, i.family) for i in items} == {(0, s, "bonafide") for s in ("19", "26")} | {
        (1, s, f) for f in families for s in ("19", "26")
    }

    build_spoof_dataset(real_dir, tmp_path / "b", seed=7, max_workers=1)
    assert file_bytes(tmp_path / "b") == written
    build_spoof_dataset(real_dir, tmp_path / "c", seed=8, max_workers=1, families=("world",))
    assert file_bytes(tmp_path / "c")["real/19-198-0001.wav"] != written["real/19-198-0001.wav"]


@pytest.mark.slow  # starts two worker processes
@needs_espeak
def test_build_output_does_not_depend_on_workers(real_dir: Path, tmp_path: Path) -> None:
    for workers, out in ((1, "serial"), (2, "parallel")):
        counts = build_spoof_dataset(
            real_dir, tmp_path / out, seed=3, tts_per_speaker=2, families=("espeak",), max_workers=workers
        )
        assert counts == {"real": 2, "espeak": 4}
    assert file_bytes(tmp_path / "serial") == file_bytes(tmp_path / "parallel")
    assert "fake/espeak/26-espeak-1.wav" in file_bytes(tmp_path / "serial")


def test_build_skips_unavailable_families(
    real_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "flite" else real_which(name))
    with caplog.at_level(logging.WARNING, logger="training.spoofs"):
        counts = build_spoof_dataset(real_dir, tmp_path / "out", families=("flite",), max_workers=1)
    assert counts == {"real": 2, "flite": 0}
    assert any("apt package: flite" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out" / "fake").exists()


def test_build_checks_its_arguments(real_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown spoof families"):
        build_spoof_dataset(real_dir, tmp_path / "out", families=("wavenet",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        build_spoof_dataset(tmp_path / "empty", tmp_path / "out")
    (real_dir / "sub").mkdir()
    sf.write(real_dir / "sub" / "19-198-0001.flac", voiced(), RATE)
    with pytest.raises(ValueError, match="unique stems"):
        build_spoof_dataset(real_dir, tmp_path / "out")
