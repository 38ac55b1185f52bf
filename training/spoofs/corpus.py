"""The builder of a paired real/fake corpus: every real clip processed and written, and fakes of each
family made from it (resynthesis) or for its speaker (text-to-speech), processed alike.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from pipeline.errors import DeepscanError
from pipeline.media import SAMPLE_RATE_HZ, load_audio
from training.audio_datasets import speaker_from_stem
from training.spoofs._programs import APT_PACKAGES, ESPEAK_BINARY, FESTIVAL_BINARY, FLITE_BINARY
from training.spoofs.degradation import DEFAULT_PROCESSING, Processing, process
from training.spoofs.resynthesis import (
    PHASE_VOCODER_RATE_RANGE,
    resynth_griffin_lim,
    resynth_lpc,
    resynth_mel_inversion,
    resynth_phase_vocoder,
    resynth_world,
)
from training.spoofs.tts import (
    ESPEAK_PITCH_RANGE,
    ESPEAK_SPEED_WPM_RANGE,
    ESPEAK_VARIANTS,
    ESPEAK_VOICES,
    FESTIVAL_ENGLISH_VOICES,
    FLITE_DURATION_STRETCH_RANGE,
    FLITE_F0_MEAN_HZ_RANGE,
    festival_voices,
    flite_voices,
    tts_espeak,
    tts_festival,
    tts_flite,
)

logger = logging.getLogger(__name__)

TTS_FAMILIES = ("espeak", "flite", "festival")
RESYNTH_FAMILIES = ("griffin_lim", "world", "mel_inversion", "lpc", "phase_vocoder")
ALL_FAMILIES = TTS_FAMILIES + RESYNTH_FAMILIES
REAL_FAMILY_KEY = "real"  # the key of the real-clip count in build_spoof_dataset's result
REAL_SUFFIXES = (".flac", ".wav")
_FAMILY_BINARIES = {"espeak": ESPEAK_BINARY, "flite": FLITE_BINARY, "festival": FESTIVAL_BINARY}
PCM_SUBTYPE = "PCM_16"  # every clip of both classes is written as 16-bit PCM wav

# Harvard sentences (IEEE, 1969, public domain; provenance in the file), one a line, read once at import.
HARVARD_SENTENCES_FILE = "harvard_sentences.txt"  # next to this module, shipped as package data
# TTS fakes read enough Harvard sentences to outlast the real clip they are paired with and are cut to its
# length, so duration does not give the class away. Seconds per sentence, on the short side of what was
# measured over 20 LibriSpeech pairings with the rate and voice ranges of training.spoofs.tts (means:
# espeak-ng 1.8 s, flite 2.6 s, festival kal 2.5 s), so that the text is rarely too short.
TTS_SECONDS_PER_SENTENCE = {"espeak": 1.5, "flite": 2.1, "festival": 2.1}
TTS_MAX_SENTENCES = 10


def _read_sentences(text: str) -> tuple[str, ...]:
    """The lines of ``text`` that are neither blank nor ``#`` comments, stripped, in order."""
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


HARVARD_SENTENCES: tuple[str, ...] = _read_sentences(
    resources.files(__package__).joinpath(HARVARD_SENTENCES_FILE).read_text(encoding="utf-8")
)


def _seeded_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys``, not on the order work is done in."""
    digest = hashlib.sha1("\x1f".join(keys).encode("utf-8")).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(digest[:8], "little")]))


def _family_unavailable_reason(family: str) -> str | None:
    binary = _FAMILY_BINARIES.get(family)
    if binary is not None and shutil.which(binary) is None:
        return f"{binary} is not installed (apt package: {APT_PACKAGES[binary]})"
    if family == "flite" and not flite_voices():
        return "flite lists no usable voice"
    if family == "festival" and not festival_voices():
        return f"festival has no English voice (install one of {', '.join(FESTIVAL_ENGLISH_VOICES)})"
    return None


@dataclass(frozen=True)
class _SpeakerJob:
    """Everything one worker needs to make one speaker's real and fake clips (picklable)."""

    speaker: str
    clips: tuple[Path, ...]
    out_dir: Path
    seed: int
    tts_per_speaker: int
    families: tuple[str, ...]
    processing: Processing
    voices: dict[str, tuple[str, ...]]  # installed voices per TTS family, listed once by the parent


def _write_wav(path: Path, signal: np.ndarray) -> None:
    """Write 16-bit PCM at 16 kHz through a temporary name, so a killed run leaves no half file."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    sf.write(partial, signal, SAMPLE_RATE_HZ, subtype=PCM_SUBTYPE, format="WAV")
    os.replace(partial, path)


def _tts(
    family: str, text: str, rng: np.random.Generator, voices: tuple[str, ...], max_samples: int
) -> np.ndarray:
    """Speak ``text`` with ``family`` in a voice, rate and pitch drawn from ``rng``; cut to ``max_samples``.

    Returns mono float32 at 16 kHz, shape (<= max_samples,).
    """
    if family == "espeak":
        voice = ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))]
        variant = ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))]
        speed = int(rng.integers(ESPEAK_SPEED_WPM_RANGE[0], ESPEAK_SPEED_WPM_RANGE[1] + 1))
        pitch = int(rng.integers(ESPEAK_PITCH_RANGE[0], ESPEAK_PITCH_RANGE[1] + 1))
        audio = tts_espeak(text, voice=voice + variant, speed_wpm=speed, pitch=pitch)
    elif family == "flite":
        voice = voices[int(rng.integers(len(voices)))]
        stretch = float(rng.uniform(*FLITE_DURATION_STRETCH_RANGE))
        f0 = float(rng.uniform(*FLITE_F0_MEAN_HZ_RANGE))
        audio = tts_flite(text, voice=voice, duration_stretch=stretch, f0_mean_hz=f0)
    else:
        audio = tts_festival(text, voice=voices[int(rng.integers(len(voices)))])
    return audio[:max_samples]


def _resynth(family: str, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase_seed = int(rng.integers(2**31))
    if family == "griffin_lim":
        return resynth_griffin_lim(signal, seed=phase_seed)
    if family == "world":
        return resynth_world(signal)
    if family == "lpc":
        return resynth_lpc(signal, seed=phase_seed)
    if family == "phase_vocoder":
        return resynth_phase_vocoder(signal, rate=float(rng.uniform(*PHASE_VOCODER_RATE_RANGE)))
    return resynth_mel_inversion(signal, seed=phase_seed)


def _harvard_text(rng: np.random.Generator, family: str, duration_s: float) -> str:
    count = int(np.clip(np.ceil(duration_s / TTS_SECONDS_PER_SENTENCE[family]), 1, TTS_MAX_SENTENCES))
    picks = rng.choice(len(HARVARD_SENTENCES), size=count, replace=False)
    return " ".join(HARVARD_SENTENCES[int(i)] for i in picks)


def _run_speaker_job(job: _SpeakerJob) -> Counter[str]:
    """Write one speaker's processed real clips and fakes; return how many files of each family."""
    counts: Counter[str] = Counter()
    lengths: list[int] = []  # of the speaker's real clips, in samples
    originals: list[np.ndarray] = []
    for clip in job.clips:
        try:
            audio = load_audio(clip, sample_rate_hz=SAMPLE_RATE_HZ)
        except DeepscanError as e:
            logger.warning("Skipping %s: %s", clip, e.reason)
            continue
        name = f"{clip.stem}.wav"
        processed = process(audio, _seeded_rng(job.seed, "real", name), job.processing)
        _write_wav(job.out_dir / "real" / name, processed)
        counts[REAL_FAMILY_KEY] += 1
        originals.append(audio)
        lengths.append(audio.shape[0])
    if not originals:
        return counts
    for family in job.families:
        if family in RESYNTH_FAMILIES:
            for n, original in enumerate(originals):
                name = f"{job.speaker}-{family}-{n}.wav"
                rng = _seeded_rng(job.seed, "fake", family, name)
                generate = functools.partial(_resynth, family, original, rng)
                counts[family] += _write_fake(job, family, name, rng, generate)
            continue
        for n in range(job.tts_per_speaker):
            name = f"{job.speaker}-{family}-{n}.wav"
            rng = _seeded_rng(job.seed, "fake", family, name)
            length = lengths[n % len(lengths)]
            text = _harvard_text(rng, family, length / SAMPLE_RATE_HZ)
            # a fresh copy of the per-speaker generator, so every utterance of a speaker has one voice
            voice_rng = _seeded_rng(job.seed, "voice", family, job.speaker)
            voices = job.voices.get(family, ())
            generate = functools.partial(_tts, family, text, voice_rng, voices, length)
            counts[family] += _write_fake(job, family, name, rng, generate)
    return counts


def _write_fake(
    job: _SpeakerJob, family: str, name: str, rng: np.random.Generator, generate: Callable[[], np.ndarray]
) -> int:
    """Generate, process and write one fake; return 1, or 0 after logging why it could not be made."""
    try:
        fake = generate()
    except DeepscanError as e:
        logger.warning("No %s fake %s for speaker %s: %s", family, name, job.speaker, e.reason)
        return 0
    _write_wav(job.out_dir / "fake" / family / name, process(fake, rng, job.processing))
    return 1


def build_spoof_dataset(
    real_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    tts_per_speaker: int = 1,
    families: Sequence[str] = ALL_FAMILIES,
    processing: Processing = DEFAULT_PROCESSING,
    max_workers: int = 2,
) -> dict[str, int]:
    """Make a paired real/fake corpus from the real clips (``.flac``/``.wav``) under ``real_dir``.

    Writes ``out_dir/real/<stem>.wav`` for each real clip and ``out_dir/fake/<family>/<speaker>-<family>-
    <n>.wav`` for each fake, all 16 kHz mono 16-bit PCM after :func:`process` with ``processing``.
    Resynthesis families remake each of a speaker's real clips (``n`` counts the speaker's clips in name
    order); TTS families speak ``tts_per_speaker`` runs of Harvard sentences, cut to the length of the
    speaker's real clip, in one voice, rate and pitch drawn per speaker. Speakers come from LibriSpeech
    names (``SPEAKER-CHAPTER-UTT``), else the whole stem. Families whose program is missing are skipped
    with a warning; a single failed generation is logged and skipped.

    Output depends only on ``seed`` (not on ``max_workers``); existing files are overwritten, so a rerun
    is safe. ``max_workers`` <= 1 runs in this process. Returns the number of files written per family,
    with real clips under ``"real"``. Raises ``ValueError`` for an unknown family, a negative
    ``tts_per_speaker`` or two real clips with the same stem; ``FileNotFoundError`` when ``real_dir``
    holds no real clip.
    """
    real_dir, out_dir = Path(real_dir), Path(out_dir)
    unknown = [f for f in families if f not in ALL_FAMILIES]
    if unknown:
        raise ValueError(f"unknown spoof families {unknown}; known: {', '.join(ALL_FAMILIES)}")
    if tts_per_speaker < 0:
        raise ValueError(f"tts_per_speaker must be >= 0, got {tts_per_speaker}")
    # out_dir may sit inside real_dir; what an earlier run wrote there is not real speech
    written = out_dir.resolve()
    clips = sorted(
        p
        for p in real_dir.rglob("*")
        if p.suffix.lower() in REAL_SUFFIXES and p.is_file() and not p.resolve().is_relative_to(written)
    )
    if not clips:
        raise FileNotFoundError(f"no {'/'.join(REAL_SUFFIXES)} clips under {real_dir}")
    stems = Counter(p.stem for p in clips)
    duplicates = sorted(stem for stem, count in stems.items() if count > 1)
    if duplicates:
        raise ValueError(f"real clips must have unique stems; repeated: {duplicates[:5]}")

    available: list[str] = []
    for family in dict.fromkeys(families):
        reason = _family_unavailable_reason(family)
        if reason is None:
            available.append(family)
        else:
            logger.warning("Skipping spoof family %s: %s", family, reason)
    voices = {
        "flite": flite_voices() if "flite" in available else (),
        "festival": festival_voices() if "festival" in available else (),
    }

    by_speaker: dict[str, list[Path]] = {}
    for clip in clips:
        by_speaker.setdefault(speaker_from_stem(clip.stem), []).append(clip)
    jobs = [
        _SpeakerJob(
            speaker=speaker,
            clips=tuple(paths),
            out_dir=out_dir,
            seed=seed,
            tts_per_speaker=tts_per_speaker,
            families=tuple(available),
            processing=processing,
            voices=voices,
        )
        for speaker, paths in sorted(by_speaker.items())
    ]
    started = time.perf_counter()
    totals: Counter[str] = Counter()
    if max_workers <= 1:
        for job in jobs:
            totals.update(_run_speaker_job(job))
    else:
        # the platform's default start method (fork on Linux); spawn would re-run an unguarded calling script
        with ProcessPoolExecutor(max_workers=max_workers) as pool:
            for counts in pool.map(_run_speaker_job, jobs):
                totals.update(counts)
    elapsed_s = time.perf_counter() - started
    logger.info(
        "Built %d real and %d fake clips for %d speakers in %.1f s (families: %s)",
        totals[REAL_FAMILY_KEY],
        sum(totals.values()) - totals[REAL_FAMILY_KEY],
        len(jobs),
        elapsed_s,
        ", ".join(available) or "none",
    )
    return {REAL_FAMILY_KEY: totals[REAL_FAMILY_KEY], **{f: totals[f] for f in dict.fromkeys(families)}}
