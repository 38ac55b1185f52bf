"""Audio front end: fixed windows with overlap, log spectrograms, and window scores aggregated to a clip.

Takes mono float32 signals at the pack's sample rate (``pipeline.media.load_audio`` makes them). A member
reads one of ``FEATURES``: a log spectrogram (mel, linear or constant-Q) or, for raw-waveform members, the
samples themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.errors import SilentAudioError, TooShortError

FEATURES = ("logmel", "linear", "cqt", "waveform")
CQT_FMIN_HZ = 30.0  # eight octaves up from here stay below the 8 kHz Nyquist limit of 16 kHz audio
CQT_BINS_PER_OCTAVE = 12
SILENCE_FLOOR_DBFS = -50.0  # quieter than a whisper in a quiet room: nothing there to judge
MIN_SPEECH_S = 1.0  # below one second of sound no window carries enough of a voice


@dataclass(frozen=True)
class AudioFrontEnd:
    """Parameters of the spectrogram the audio member was trained on; stored in the pack manifest."""

    feature: str = "logmel"
    sample_rate_hz: int = 16_000
    window_s: float = 4.0
    hop_s: float = 2.0  # 50 % overlap between consecutive windows
    n_fft: int = 512  # 32 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    n_mels: int = 64
    n_cqt_bins: int = 96  # eight octaves; CQT needs hop_length divisible by 2**(octaves - 1) = 128

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> AudioFrontEnd:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        front_end = cls(**known)  # type: ignore[arg-type]
        front_end.validate()
        return front_end

    @classmethod
    def for_feature(cls, feature: str) -> AudioFrontEnd:
        """The default front end of a feature (CQT takes a 128-sample hop, see ``n_cqt_bins``)."""
        front_end = cls(feature=feature, hop_length=128) if feature == "cqt" else cls(feature=feature)
        front_end.validate()
        return front_end

    def validate(self) -> None:
        if self.feature not in FEATURES:
            raise ValueError(f"unknown audio feature {self.feature!r}; choose from {', '.join(FEATURES)}")
        octaves = int(np.ceil(self.n_cqt_bins / CQT_BINS_PER_OCTAVE))
        if self.feature == "cqt" and self.hop_length % 2 ** (octaves - 1):
            raise ValueError(f"CQT over {octaves} octaves needs a hop divisible by {2 ** (octaves - 1)}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def same_windows(self, other: AudioFrontEnd) -> bool:
        """Whether both cut a signal into the same windows (their spectrograms may differ)."""
        return (self.sample_rate_hz, self.window_samples, self.hop_samples) == (
            other.sample_rate_hz,
            other.window_samples,
            other.hop_samples,
        )

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate_hz)

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * self.sample_rate_hz)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(frequency bins, time frames) of one window's spectrogram; (1, samples) of a waveform window."""
        if self.feature == "waveform":
            return 1, self.window_samples
        bins = {"logmel": self.n_mels, "linear": self.n_fft // 2 + 1, "cqt": self.n_cqt_bins}[self.feature]
        return bins, 1 + self.window_samples // self.hop_length


def level_dbfs(signal: np.ndarray) -> float:
    """RMS level of a float signal in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def split_windows(signal: np.ndarray, front_end: AudioFrontEnd) -> np.ndarray:
    """Cut a mono signal (n,) into overlapping windows (N, window_samples), float32.

    A clip shorter than one window but longer than ``MIN_SPEECH_S`` is zero-padded into a single window;
    training pads short clips the same way. Raises ``TooShortError`` / ``SilentAudioError`` rather than
    returning windows that would produce an invented score.
    """
    duration_s = signal.size / front_end.sample_rate_hz
    if duration_s < MIN_SPEECH_S:
        raise TooShortError(f"audio lasts {duration_s:.2f} s; at least {MIN_SPEECH_S:.0f} s is needed")
    level = level_dbfs(signal)
    if level < SILENCE_FLOOR_DBFS:
        raise SilentAudioError(
            f"audio level {level:.1f} dBFS is below the silence floor {SILENCE_FLOOR_DBFS} dBFS"
        )
    size, hop = front_end.window_samples, front_end.hop_samples
    if signal.size <= size:
        return np.pad(signal, (0, size - signal.size))[None, :].astype(np.float32)
    starts = list(range(0, signal.size - size + 1, hop))
    if starts[-1] + size < signal.size:  # cover the tail with one last window flush with the end
        starts.append(signal.size - size)
    return np.stack([signal[s : s + size] for s in starts]).astype(np.float32)


def member_inputs(windows: np.ndarray, front_end: AudioFrontEnd) -> np.ndarray:
    """What the front end's members read of windows (N, window_samples): log spectrograms standardised per
    window, or for the ``waveform`` feature the samples themselves, standardised per window (zero mean,
    unit RMS).

    Returns float32 (N, F, T, 1) with (F, T) = ``front_end.input_shape``. Standardising per window removes
    recording gain, so the member judges the shape of the spectrum, not the loudness.
    """
    import librosa

    if front_end.feature == "waveform":
        centred = windows - windows.mean(axis=1, keepdims=True)
        rms = np.sqrt(np.mean(np.square(centred), axis=1, keepdims=True)) + 1e-6
        return (centred / rms).astype(np.float32)[:, None, :, None]
    if front_end.feature == "logmel":
        power = librosa.feature.melspectrogram(
            y=windows,
            sr=front_end.sample_rate_hz,
            n_fft=front_end.n_fft,
            hop_length=front_end.hop_length,
            n_mels=front_end.n_mels,
            fmin=20.0,
            fmax=front_end.sample_rate_hz / 2,
        )
    elif front_end.feature == "cqt":
        power = (
            np.abs(
                librosa.cqt(
                    windows,
                    sr=front_end.sample_rate_hz,
                    hop_length=front_end.hop_length,
                    fmin=CQT_FMIN_HZ,
                    n_bins=front_end.n_cqt_bins,
                    bins_per_octave=CQT_BINS_PER_OCTAVE,
                )
            )
            ** 2
        )
    else:
        power = np.abs(librosa.stft(windows, n_fft=front_end.n_fft, hop_length=front_end.hop_length)) ** 2
    log_power = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)
    mean = log_power.mean(axis=(1, 2), keepdims=True)
    std = log_power.std(axis=(1, 2), keepdims=True) + 1e-6
    return ((log_power - mean) / std).astype(np.float32)[..., None]
