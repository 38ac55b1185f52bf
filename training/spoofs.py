"""Spoof generators available on a plain Debian machine, and a builder for a paired real/fake corpus.

Two kinds of fake speech are made:

* text-to-speech: espeak-ng (formant synthesis), flite (diphone and clustergen voices) and festival
  (``text2wave``), reading public-domain Harvard sentences;
* resynthesis of a real clip: Griffin-Lim phase reconstruction of an STFT magnitude, the WORLD vocoder
  (pyworld), and Griffin-Lim inversion of a log-mel spectrogram, a crude stand-in for a neural vocoder.

Every generator returns mono float32 at 16 kHz. :func:`process` applies the same random degradations
(level, noise, band-limiting, a lossy codec) to either class, so that the two classes differ in how the
speech was made, not in what happened to the file afterwards. :func:`build_spoof_dataset` writes
``real/`` and ``fake/<family>/`` folders that :func:`training.audio_datasets.load_folders` reads back,
every fake named after the speaker of the real clip it is paired with.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DeepscanError, TooShortError
from pipeline.media import SAMPLE_RATE_HZ, load_audio
from training.audio_datasets import speaker_from_stem

logger = logging.getLogger(__name__)


class GeneratorUnavailable(DeepscanError):
    """An external program a generator or the codec step needs is not installed."""

    status = "generator_unavailable"


class GeneratorFailed(DeepscanError):
    """A generator ran but produced no usable audio (non-zero exit, timeout, empty output)."""

    status = "generator_failed"


# --- external programs ------------------------------------------------------------------------------------

ESPEAK_BINARY = "espeak-ng"
FLITE_BINARY = "flite"
FESTIVAL_BINARY = "text2wave"  # festival's own text-to-wave script
FFMPEG_BINARY = "ffmpeg"
# Debian packages that provide each program; festival also needs a voice (festvox-kallpc16k is the one
# it recommends).
APT_PACKAGES = {
    ESPEAK_BINARY: "espeak-ng",
    FLITE_BINARY: "flite",
    FESTIVAL_BINARY: "festival festvox-kallpc16k",
    FFMPEG_BINARY: "ffmpeg",
}
SUBPROCESS_TIMEOUT_S = 120.0  # a few sentences take well under a second; this only catches a hung program

# --- text-to-speech voices ------------------------------------------------------------------------------

# espeak-ng English voices (``espeak-ng --voices=en``) and its voice variants (``--voices=variant``:
# m1..m7 male, f1..f4 female).
ESPEAK_VOICES = ("en-us", "en", "en-gb-x-rp", "en-sc", "en-029", "en-gb-x-gbclan")
ESPEAK_VARIANTS = ("", *(f"+m{i}" for i in range(1, 8)), *(f"+f{i}" for i in range(1, 5)))
ESPEAK_DEFAULT_SPEED_WPM = 175  # espeak-ng's default rate
ESPEAK_DEFAULT_PITCH = 50  # espeak-ng's default, on its 0..99 scale
ESPEAK_SPEED_WPM_RANGE = (140, 200)
ESPEAK_PITCH_RANGE = (30, 70)

FLITE_DEFAULT_VOICE = "slt"
# awb_time is a limited-domain voice that can only speak the time of day.
FLITE_EXCLUDED_VOICES = frozenset({"awb_time"})
FLITE_DURATION_STRETCH_RANGE = (0.85, 1.2)  # > 1 is slower speech
FLITE_F0_MEAN_HZ_RANGE = (90.0, 210.0)  # covers typical male and female mean pitch

# English festival voices shipped by Debian (festvox-kallpc16k/8k, festvox-kdlpc16k/8k, festvox-us-slt-hts);
# voice.list also names non-English voices, which would read English with the wrong phone set.
FESTIVAL_ENGLISH_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
_FESTIVAL_VOICE_NAME = re.compile(r"^[a-z0-9_]+$")  # the name is spliced into a Scheme expression

# Harvard sentences, lists 1-6 of the IEEE Recommended Practice for Speech Quality Measurements
# (IEEE Trans. Audio Electroacoust. 17(3), 1969), public domain.
HARVARD_SENTENCES: tuple[str, ...] = (
    # List 1
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    # List 2
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    # List 3
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    # List 4
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
    # List 5
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    # List 6
    "The frosty air passed through the coat.",
    "The crooked maze failed to fool the mouse.",
    "Adding fast leads to wrong sums.",
    "The show was a flop from the very start.",
    "A saw is a tool used for making boards.",
    "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.",
    "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.",
    "Both lost their lives in the raging storm.",
)
# TTS fakes read enough Harvard sentences to outlast the real clip they are paired with and are cut to its
# length, so duration does not give the class away. Seconds per sentence, on the short side of what was
# measured over 20 LibriSpeech pairings with the rate and voice ranges above (means: espeak-ng 1.8 s,
# flite 2.6 s, festival kal 2.5 s), so that the text is rarely too short.
TTS_SECONDS_PER_SENTENCE = {"espeak": 1.5, "flite": 2.1, "festival": 2.1}
TTS_MAX_SENTENCES = 10

# --- resynthesis ------------------------------------------------------------------------------------------

GRIFFIN_LIM_N_FFT = 512  # 32 ms at 16 kHz
GRIFFIN_LIM_HOP = 128  # 8 ms, 75 % overlap as Griffin-Lim needs
# HiFi-GAN's mel front end: 80 bands, 1024-point FFT, hop 256, magnitude (power 1) mel, log with a floor.
MEL_N_MELS = 80
MEL_N_FFT = 1024
MEL_HOP = 256
LOG_MEL_FLOOR = 1e-5  # HiFi-GAN's dynamic_range_compression clip value
WORLD_FRAME_PERIOD_MS = 5.0  # pyworld's default analysis step
MIN_RESYNTH_SAMPLES = MEL_N_FFT  # shorter than one analysis window: nothing to resynthesise

# --- processing -------------------------------------------------------------------------------------------

CODECS = ("mp3", "opus")
_CODEC_ENCODERS = {"mp3": ("libmp3lame", ".mp3"), "opus": ("libopus", ".opus")}
LOWPASS_ORDER = 6  # Butterworth order; sosfiltfilt runs it twice (zero phase, twice the roll-off)
_NYQUIST_MARGIN = 0.98  # a cut-off at or above 98 % of Nyquist is no band-limit at all
_NOISE_FLOOR_POWER = 1e-12  # below this mean power a signal is digital silence: no SNR to aim for
PCM_SUBTYPE = "PCM_16"  # every clip of both classes is written as 16-bit PCM wav


@dataclass(frozen=True)
class Processing:
    """Random degradations applied alike to real and fake clips (see :func:`process`).

    Steps, in order: level to ``target_rms_dbfs`` (None: keep), coloured noise at an SNR drawn from
    ``snr_db_range`` (spectral exponent from ``noise_exponent_range``: 0 white, 1 pink, 2 brown) with
    ``noise_probability``, Butterworth low-pass at a cut-off from ``lowpass_hz_range`` (telephone 3.4 kHz
    to full band 8 kHz) with ``lowpass_probability``, a lossy codec round trip (mp3 or opus at a bitrate
    from the tables) with ``codec_probability``, gain from ``gain_db_range``, and finally a peak limit.
    """

    target_rms_dbfs: float | None = -26.0  # ITU-T P.56 speech level convention for test material
    noise_probability: float = 0.5
    snr_db_range: tuple[float, float] = (15.0, 40.0)
    noise_exponent_range: tuple[float, float] = (0.0, 2.0)
    lowpass_probability: float = 0.3
    lowpass_hz_range: tuple[float, float] = (3400.0, 8000.0)
    codec_probability: float = 0.3
    codecs: tuple[str, ...] = CODECS
    mp3_bitrates_kbps: tuple[int, ...] = (32, 48, 64, 96, 128)
    opus_bitrates_kbps: tuple[int, ...] = (12, 16, 24, 32, 48)
    gain_db_range: tuple[float, float] = (-12.0, 6.0)
    peak_limit: float = 0.99  # a little headroom below full scale for the 16-bit write

    def __post_init__(self) -> None:
        for name in ("noise_probability", "lowpass_probability", "codec_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("snr_db_range", "noise_exponent_range", "lowpass_hz_range", "gain_db_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high), got {(low, high)}")
        unknown = set(self.codecs) - set(CODECS)
        if unknown or not self.codecs:
            raise ValueError(f"codecs must be a non-empty subset of {CODECS}, got {self.codecs}")
        if not self.mp3_bitrates_kbps or not self.opus_bitrates_kbps:
            raise ValueError("bitrate tables must not be empty")
        if not 0.0 < self.peak_limit <= 1.0:
            raise ValueError(f"peak_limit must be in (0, 1], got {self.peak_limit}")


DEFAULT_PROCESSING = Processing()
# Leaves the signal as it is apart from the peak limit.
NO_PROCESSING = Processing(
    target_rms_dbfs=None, noise_probability=0.0, lowpass_probability=0.0, codec_probability=0.0,
    gain_db_range=(0.0, 0.0),
)  # fmt: skip


# --- helpers ----------------------------------------------------------------------------------------------


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise GeneratorUnavailable(f"{binary} is not installed (apt package: {APT_PACKAGES[binary]})")
    return path


def _run(cmd: list[str], *, what: str) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise GeneratorFailed(f"{what} did not finish within {SUBPROCESS_TIMEOUT_S:.0f} s") from e
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        last = message[-1] if message else "no output"
        raise GeneratorFailed(f"{what} exited with {proc.returncode}: {last}")
    return proc


def _read_output(path: Path, *, what: str, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    if not path.is_file() or path.stat().st_size == 0:
        raise GeneratorFailed(f"{what} wrote no audio")
    audio = load_audio(path, sample_rate_hz=sample_rate_hz)
    if audio.size == 0:
        raise GeneratorFailed(f"{what} wrote an empty file")
    return audio


def _fit_length(signal: np.ndarray, n_samples: int) -> np.ndarray:
    """Trim or zero-pad a 1-D signal to ``n_samples``."""
    if signal.shape[0] >= n_samples:
        return signal[:n_samples]
    return np.pad(signal, (0, n_samples - signal.shape[0]))


def _as_mono(signal: np.ndarray) -> np.ndarray:
    array = np.asarray(signal)
    if array.ndim != 1:
        raise ValueError(f"expected a mono signal of shape (n_samples,), got shape {array.shape}")
    return array


def _check_resynth_length(signal: np.ndarray) -> None:
    if signal.shape[0] < MIN_RESYNTH_SAMPLES:
        raise TooShortError(
            f"resynthesis needs at least {MIN_RESYNTH_SAMPLES} samples, got {signal.shape[0]}"
        )


# --- text to speech ---------------------------------------------------------------------------------------


def tts_espeak(
    text: str,
    *,
    voice: str = "en-us",
    speed_wpm: int = ESPEAK_DEFAULT_SPEED_WPM,
    pitch: int = ESPEAK_DEFAULT_PITCH,
) -> np.ndarray:
    """Speak ``text`` with espeak-ng. ``voice`` may carry a variant (``en-gb-x-rp+f3``); ``pitch`` is 0..99.

    Returns mono float32 at 16 kHz, shape (n_samples,). Raises ``GeneratorUnavailable`` without espeak-ng
    and ``GeneratorFailed`` when it fails (an unknown voice, for one).
    """
    binary = _require(ESPEAK_BINARY)
    with tempfile.TemporaryDirectory(prefix="deepscan-espeak-") as tmp:
        text_path, wav_path = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        text_path.write_text(text, encoding="utf-8")
        cmd = [
            binary, "-v", voice, "-s", str(speed_wpm), "-p", str(pitch),
            "-f", str(text_path), "-w", str(wav_path),
        ]  # fmt: skip
        _run(cmd, what=f"espeak-ng (voice {voice})")
        return _read_output(wav_path, what=f"espeak-ng (voice {voice})")


@functools.lru_cache(maxsize=1)
def flite_voices() -> tuple[str, ...]:
    """The voices compiled into the installed flite (``flite -lv``), minus limited-domain ones."""
    proc = _run([_require(FLITE_BINARY), "-lv"], what="flite -lv")
    listing = proc.stdout.decode(errors="replace")
    names = listing.split(":", 1)[-1].split()
    return tuple(name for name in names if name not in FLITE_EXCLUDED_VOICES)


def tts_flite(
    text: str,
    *,
    voice: str = FLITE_DEFAULT_VOICE,
    duration_stretch: float | None = None,
    f0_mean_hz: float | None = None,
) -> np.ndarray:
    """Speak ``text`` with flite. ``voice`` is one of :func:`flite_voices` or a path to a ``.flitevox``.

    ``duration_stretch`` > 1 slows speech down; ``f0_mean_hz`` moves the mean pitch (None: the voice's
    own). Returns mono float32 at 16 kHz, shape (n_samples,); the 8 kHz ``kal`` voice is upsampled and so
    has nothing above 4 kHz. flite silently falls back to its default voice for an unknown name, so the
    name is checked first: ``ValueError`` for an unknown voice, ``GeneratorUnavailable`` without flite.
    """
    binary = _require(FLITE_BINARY)
    if voice not in flite_voices() and not Path(voice).is_file():
        raise ValueError(f"unknown flite voice {voice!r}; installed: {', '.join(flite_voices())}")
    with tempfile.TemporaryDirectory(prefix="deepscan-flite-") as tmp:
        text_path, wav_path = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        text_path.write_text(text, encoding="utf-8")
        cmd = [binary, "-voice", voice, "-f", str(text_path), "-o", str(wav_path)]
        if duration_stretch is not None:
            cmd += ["--setf", f"duration_stretch={duration_stretch:.3f}"]
        if f0_mean_hz is not None:
            cmd += ["--setf", f"int_f0_target_mean={f0_mean_hz:.1f}"]
        _run(cmd, what=f"flite (voice {voice})")
        return _read_output(wav_path, what=f"flite (voice {voice})")


@functools.lru_cache(maxsize=1)
def festival_voices() -> tuple[str, ...]:
    """The English voices installed for festival, in :data:`FESTIVAL_ENGLISH_VOICES` order.

    Empty when festival is missing or has no English voice.
    """
    if shutil.which("festival") is None:
        return ()
    try:
        proc = subprocess.run(
            ["festival", "--pipe"], input=b"(print (voice.list))\n", capture_output=True,
            timeout=SUBPROCESS_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        logger.warning("festival did not list its voices within %.0f s", SUBPROCESS_TIMEOUT_S)
        return ()
    installed = set(re.findall(r"[a-z0-9_]+", proc.stdout.decode(errors="replace")))
    return tuple(v for v in FESTIVAL_ENGLISH_VOICES if v in installed)


def tts_festival(text: str, *, voice: str | None = None) -> np.ndarray:
    """Speak ``text`` with festival's ``text2wave``, in ``voice`` (e.g. ``kal_diphone``) or its default.

    Returns mono float32 at 16 kHz, shape (n_samples,). Raises ``GeneratorUnavailable`` without
    text2wave, ``GeneratorFailed`` when it fails (festival without any voice, an uninstalled voice) and
    ``ValueError`` for a voice name that is not a plain identifier.
    """
    binary = _require(FESTIVAL_BINARY)
    if voice is not None and not _FESTIVAL_VOICE_NAME.match(voice):
        raise ValueError(f"festival voice names are lower-case identifiers, got {voice!r}")
    with tempfile.TemporaryDirectory(prefix="deepscan-festival-") as tmp:
        text_path, wav_path = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        text_path.write_text(text, encoding="utf-8")
        cmd = [binary, str(text_path), "-o", str(wav_path)]
        if voice is not None:
            cmd += ["-eval", f"(voice_{voice})"]
        _run(cmd, what=f"text2wave (voice {voice or 'default'})")
        return _read_output(wav_path, what=f"text2wave (voice {voice or 'default'})")


# --- resynthesis ------------------------------------------------------------------------------------------


def resynth_griffin_lim(signal: np.ndarray, *, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Keep the STFT magnitude of ``signal`` and rebuild the phase with Griffin-Lim.

    ``signal``: mono float at 16 kHz, shape (n_samples,). Returns float32 of the same shape. ``seed``
    fixes the random initial phase. Raises ``TooShortError`` below :data:`MIN_RESYNTH_SAMPLES`.
    """
    import librosa

    x = _as_mono(signal).astype(np.float32)
    _check_resynth_length(x)
    magnitude = np.abs(librosa.stft(x, n_fft=GRIFFIN_LIM_N_FFT, hop_length=GRIFFIN_LIM_HOP))
    y = librosa.griffinlim(
        magnitude, n_iter=n_iter, hop_length=GRIFFIN_LIM_HOP, n_fft=GRIFFIN_LIM_N_FFT,
        length=x.shape[0], random_state=seed,
    )  # fmt: skip
    return np.ascontiguousarray(y, dtype=np.float32)


def resynth_world(signal: np.ndarray) -> np.ndarray:
    """Analyse ``signal`` with WORLD (harvest F0, CheapTrick envelope, D4C aperiodicity) and resynthesise.

    ``signal``: mono float at 16 kHz, shape (n_samples,). Returns float32 of the same shape. Deterministic.
    Raises ``TooShortError`` below :data:`MIN_RESYNTH_SAMPLES`.
    """
    import pyworld

    x = np.ascontiguousarray(_as_mono(signal), dtype=np.float64)  # pyworld takes C-contiguous float64 only
    _check_resynth_length(x)
    f0, times = pyworld.harvest(x, SAMPLE_RATE_HZ, frame_period=WORLD_FRAME_PERIOD_MS)
    envelope = pyworld.cheaptrick(x, f0, times, SAMPLE_RATE_HZ)
    aperiodicity = pyworld.d4c(x, f0, times, SAMPLE_RATE_HZ)
    y = pyworld.synthesize(f0, envelope, aperiodicity, SAMPLE_RATE_HZ, frame_period=WORLD_FRAME_PERIOD_MS)
    return np.ascontiguousarray(_fit_length(y, x.shape[0]), dtype=np.float32)


def resynth_mel_inversion(signal: np.ndarray, *, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Reduce ``signal`` to an 80-band log-mel spectrogram (a vocoder's input) and invert it.

    The mel is mapped back to a linear magnitude by non-negative least squares and the phase rebuilt by
    Griffin-Lim: the smeared harmonics and phase are what a crude neural vocoder leaves. ``signal``: mono
    float at 16 kHz, shape (n_samples,). Returns float32 of the same shape. Raises ``TooShortError`` below
    :data:`MIN_RESYNTH_SAMPLES`.
    """
    import librosa

    x = _as_mono(signal).astype(np.float32)
    _check_resynth_length(x)
    mel = librosa.feature.melspectrogram(
        y=x, sr=SAMPLE_RATE_HZ, n_fft=MEL_N_FFT, hop_length=MEL_HOP, n_mels=MEL_N_MELS, power=1.0
    )
    log_mel = np.log(np.maximum(mel, LOG_MEL_FLOOR))
    magnitude = librosa.feature.inverse.mel_to_stft(
        np.exp(log_mel), sr=SAMPLE_RATE_HZ, n_fft=MEL_N_FFT, power=1.0
    )
    y = librosa.griffinlim(
        magnitude, n_iter=n_iter, hop_length=MEL_HOP, n_fft=MEL_N_FFT, length=x.shape[0], random_state=seed
    )
    return np.ascontiguousarray(y, dtype=np.float32)


LPC_ORDER = 18  # two poles per formant up to 8 kHz, plus two for the glottal tilt
LPC_FRAME = 320  # 20 ms at 16 kHz; Hann frames at half overlap sum to a constant
LPC_HOP = LPC_FRAME // 2
PHASE_VOCODER_RATE_RANGE = (0.7, 1.4)  # time-stretch factors; the clip is stretched back afterwards


def resynth_lpc(signal: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """An LPC vocoder (the classic source-filter model): per 20 ms frame, an all-pole filter of order 18
    excited by a pulse train at the WORLD-estimated F0 where voiced and by white noise where not, scaled to
    the frame's level and overlap-added.

    The excitation is synthetic, as in every parametric vocoder; the envelope is the speaker's own.
    ``signal``: mono float at 16 kHz, shape (n_samples,). Returns float32 of the same shape. Raises
    ``TooShortError`` below :data:`MIN_RESYNTH_SAMPLES`.
    """
    import librosa
    import pyworld
    from scipy.signal import lfilter

    x = _as_mono(signal).astype(np.float64)
    _check_resynth_length(x)
    rng = np.random.default_rng(seed)
    f0, times = pyworld.dio(x, SAMPLE_RATE_HZ, frame_period=WORLD_FRAME_PERIOD_MS)
    f0 = pyworld.stonemask(x, f0, times, SAMPLE_RATE_HZ)
    f0_per_sample = np.interp(np.arange(x.size) / SAMPLE_RATE_HZ, times, f0)
    voiced = f0_per_sample > 0
    phase = np.cumsum(np.where(voiced, f0_per_sample, 0.0)) / SAMPLE_RATE_HZ
    pulses = np.diff(np.floor(phase), prepend=0.0) > 0
    excitation = np.where(voiced, pulses * np.sqrt(np.maximum(SAMPLE_RATE_HZ / np.maximum(f0_per_sample, 1.0), 1.0)),
                          rng.standard_normal(x.size))  # fmt: skip
    window = np.hanning(LPC_FRAME + 1)[:-1]  # periodic Hann: frames at half overlap sum to one
    padded_x = np.pad(x, (LPC_HOP, LPC_FRAME))
    padded_e = np.pad(excitation, (LPC_HOP, LPC_FRAME))
    starts = np.arange(0, padded_x.size - LPC_FRAME, LPC_HOP)
    frames = np.stack([padded_x[i : i + LPC_FRAME] for i in starts])
    levels = np.sqrt(np.mean(frames**2, axis=1))
    dither = 1e-9 * rng.standard_normal(frames.shape)  # keeps the all-pole fit defined on digital silence
    filters = librosa.lpc(frames * window + dither, order=LPC_ORDER, axis=-1)  # (n_frames, order + 1)
    y = np.zeros_like(padded_x)
    for start, level, a in zip(starts, levels, filters, strict=True):
        if level < 1e-6:
            continue
        out = lfilter([1.0], a, padded_e[start : start + LPC_FRAME])
        out *= level / max(np.sqrt(np.mean(out**2)), 1e-12)
        y[start : start + LPC_FRAME] += out * window
    y = y[LPC_HOP : LPC_HOP + x.size]
    return np.ascontiguousarray(np.clip(y, -1.0, 1.0), dtype=np.float32)


def resynth_phase_vocoder(signal: np.ndarray, *, rate: float = 1.25) -> np.ndarray:
    """Time-stretch by ``rate`` with a phase vocoder and back by ``1 / rate``: the duration and pitch are
    the speaker's, but the phase is rebuilt twice (the "phasiness" of voice-modification tools).

    ``signal``: mono float at 16 kHz, shape (n_samples,). Returns float32 of the same shape. Deterministic.
    Raises ``TooShortError`` below :data:`MIN_RESYNTH_SAMPLES`.
    """
    import librosa

    x = _as_mono(signal).astype(np.float32)
    _check_resynth_length(x)
    stretched = librosa.effects.time_stretch(x, rate=rate)
    y = librosa.effects.time_stretch(stretched, rate=1.0 / rate)
    return np.ascontiguousarray(_fit_length(y, x.shape[0]), dtype=np.float32)


# --- processing -------------------------------------------------------------------------------------------


def codec_round_trip(
    signal: np.ndarray, *, codec: str, bitrate_kbps: int, sample_rate_hz: int = SAMPLE_RATE_HZ
) -> np.ndarray:
    """Encode ``signal`` with ffmpeg (``mp3``: LAME, ``opus``: libopus) and decode it again.

    ``signal``: mono float, shape (n_samples,). Returns float32 of the same shape (the codec's delay and
    padding trimmed or padded away). Raises ``GeneratorUnavailable`` without ffmpeg, ``GeneratorFailed``
    when encoding fails, ``ValueError`` for an unknown codec.
    """
    import soundfile as sf

    if codec not in _CODEC_ENCODERS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    binary = _require(FFMPEG_BINARY)
    encoder, suffix = _CODEC_ENCODERS[codec]
    x = _as_mono(signal).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="deepscan-codec-") as tmp:
        source, encoded = Path(tmp) / "in.wav", Path(tmp) / f"out{suffix}"
        sf.write(source, x, sample_rate_hz, subtype="FLOAT")
        cmd = [
            binary, "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
            "-c:a", encoder, "-b:a", f"{bitrate_kbps}k", "-fflags", "+bitexact", "-flags:a", "+bitexact",
            str(encoded),
        ]  # fmt: skip
        _run(cmd, what=f"ffmpeg {codec} encode at {bitrate_kbps} kbps")
        decoded = _read_output(encoded, what=f"ffmpeg {codec} encode", sample_rate_hz=sample_rate_hz)
    return np.ascontiguousarray(_fit_length(decoded, x.shape[0]), dtype=np.float32)


def _coloured_noise(n_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise whose power spectrum falls as 1/f**exponent. Shape (n_samples,), float64."""
    white = rng.standard_normal(n_samples)
    if exponent == 0.0 or n_samples < 2:
        return white / max(float(np.std(white)), np.finfo(np.float64).tiny)
    spectrum = np.fft.rfft(white)
    frequencies = np.fft.rfftfreq(n_samples)
    frequencies[0] = frequencies[1]  # no infinite gain at DC
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2.0), n=n_samples)
    return noise / max(float(np.sqrt(np.mean(noise**2))), np.finfo(np.float64).tiny)


def _lowpass(signal: np.ndarray, cutoff_hz: float, sample_rate_hz: int) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    nyquist_hz = sample_rate_hz / 2.0
    if cutoff_hz >= _NYQUIST_MARGIN * nyquist_hz:
        return signal
    sos = butter(LOWPASS_ORDER, cutoff_hz, btype="lowpass", fs=sample_rate_hz, output="sos")
    default_padlen = 3 * (2 * sos.shape[0] + 1)
    if signal.shape[0] <= 1:
        return signal
    return np.asarray(sosfiltfilt(sos, signal, padlen=min(default_padlen, signal.shape[0] - 1)))


def process(
    signal: np.ndarray,
    rng: np.random.Generator,
    processing: Processing = DEFAULT_PROCESSING,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> np.ndarray:
    """Apply :class:`Processing`'s random chain to ``signal``, drawing every choice from ``rng``.

    ``signal``: mono float, shape (n_samples,). Returns float32 of the same shape with peak at most
    ``processing.peak_limit`` (scaled down only when it would exceed it). Use it on both classes alike.
    """
    x = _as_mono(signal).astype(np.float64)
    if processing.target_rms_dbfs is not None:
        rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
        if rms > 0.0:
            x = x * (10.0 ** (processing.target_rms_dbfs / 20.0) / rms)
    if rng.random() < processing.noise_probability:
        snr_db = rng.uniform(*processing.snr_db_range)
        exponent = rng.uniform(*processing.noise_exponent_range)
        power = float(np.mean(x**2)) if x.size else 0.0
        if power > _NOISE_FLOOR_POWER:
            noise = _coloured_noise(x.shape[0], exponent, rng)
            x = x + noise * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    if rng.random() < processing.lowpass_probability:
        x = _lowpass(x, rng.uniform(*processing.lowpass_hz_range), sample_rate_hz)
    if rng.random() < processing.codec_probability:
        codec = processing.codecs[int(rng.integers(len(processing.codecs)))]
        bitrates = processing.mp3_bitrates_kbps if codec == "mp3" else processing.opus_bitrates_kbps
        bitrate_kbps = bitrates[int(rng.integers(len(bitrates)))]
        # the encoders take float input, so a loud signal must not clip on its way in
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        scale = processing.peak_limit / peak if peak > processing.peak_limit else 1.0
        x = codec_round_trip(x * scale, codec=codec, bitrate_kbps=bitrate_kbps, sample_rate_hz=sample_rate_hz)
        x = x.astype(np.float64) / scale
    x = x * 10.0 ** (rng.uniform(*processing.gain_db_range) / 20.0)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > processing.peak_limit:
        x = x * (processing.peak_limit / peak)
    return np.ascontiguousarray(x, dtype=np.float32)


# --- dataset builder --------------------------------------------------------------------------------------

TTS_FAMILIES = ("espeak", "flite", "festival")
RESYNTH_FAMILIES = ("griffin_lim", "world", "mel_inversion", "lpc", "phase_vocoder")
ALL_FAMILIES = TTS_FAMILIES + RESYNTH_FAMILIES
REAL_FAMILY_KEY = "real"  # the key of the real-clip count in build_spoof_dataset's result
REAL_SUFFIXES = (".flac", ".wav")
_FAMILY_BINARIES = {"espeak": ESPEAK_BINARY, "flite": FLITE_BINARY, "festival": FESTIVAL_BINARY}


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
        totals[REAL_FAMILY_KEY], sum(totals.values()) - totals[REAL_FAMILY_KEY], len(jobs), elapsed_s,
        ", ".join(available) or "none",
    )  # fmt: skip
    return {REAL_FAMILY_KEY: totals[REAL_FAMILY_KEY], **{f: totals[f] for f in dict.fromkeys(families)}}
