"""Resynthesis of a real clip: the speaker's words, timing and (mostly) voice, remade by a vocoder.

Griffin-Lim phase reconstruction of an STFT magnitude, the WORLD vocoder (pyworld), Griffin-Lim inversion
of a log-mel spectrogram (a crude stand-in for a neural vocoder), an LPC source-filter vocoder and a
phase-vocoder time-stretch there and back. Each takes and returns mono float32 at 16 kHz of the same
length.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import TooShortError
from pipeline.media import SAMPLE_RATE_HZ
from training.spoofs._programs import _as_mono, _fit_length

GRIFFIN_LIM_N_FFT = 512  # 32 ms at 16 kHz
GRIFFIN_LIM_HOP = 128  # 8 ms, 75 % overlap as Griffin-Lim needs
# HiFi-GAN's mel front end: 80 bands, 1024-point FFT, hop 256, magnitude (power 1) mel, log with a floor.
MEL_N_MELS = 80
MEL_N_FFT = 1024
MEL_HOP = 256
LOG_MEL_FLOOR = 1e-5  # HiFi-GAN's dynamic_range_compression clip value
WORLD_FRAME_PERIOD_MS = 5.0  # pyworld's default analysis step
MIN_RESYNTH_SAMPLES = MEL_N_FFT  # shorter than one analysis window: nothing to resynthesise
LPC_ORDER = 18  # two poles per formant up to 8 kHz, plus two for the glottal tilt
LPC_FRAME = 320  # 20 ms at 16 kHz; Hann frames at half overlap sum to a constant
LPC_HOP = LPC_FRAME // 2
PHASE_VOCODER_RATE_RANGE = (0.7, 1.4)  # time-stretch factors; the clip is stretched back afterwards


def _check_resynth_length(signal: np.ndarray) -> None:
    if signal.shape[0] < MIN_RESYNTH_SAMPLES:
        raise TooShortError(
            f"resynthesis needs at least {MIN_RESYNTH_SAMPLES} samples, got {signal.shape[0]}"
        )


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
        magnitude,
        n_iter=n_iter,
        hop_length=GRIFFIN_LIM_HOP,
        n_fft=GRIFFIN_LIM_N_FFT,
        length=x.shape[0],
        random_state=seed,
    )
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
    excitation = np.where(
        voiced,
        pulses * np.sqrt(np.maximum(SAMPLE_RATE_HZ / np.maximum(f0_per_sample, 1.0), 1.0)),
        rng.standard_normal(x.size),
    )
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
