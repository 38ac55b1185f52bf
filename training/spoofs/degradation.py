"""Degradations applied alike to real and fake clips: level, coloured noise, band-limiting, a lossy codec
round trip and gain, each drawn at random (:class:`Processing`, :func:`process`).

The two classes of a corpus then differ in how the speech was made, not in what happened to the file
afterwards.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.media import SAMPLE_RATE_HZ
from training.spoofs._programs import FFMPEG_BINARY, _as_mono, _fit_length, _read_output, _require, _run

CODECS = ("mp3", "opus")
_CODEC_ENCODERS = {"mp3": ("libmp3lame", ".mp3"), "opus": ("libopus", ".opus")}
LOWPASS_ORDER = 6  # Butterworth order; sosfiltfilt runs it twice (zero phase, twice the roll-off)
_NYQUIST_MARGIN = 0.98  # a cut-off at or above 98 % of Nyquist is no band-limit at all
_NOISE_FLOOR_POWER = 1e-12  # below this mean power a signal is digital silence: no SNR to aim for


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
