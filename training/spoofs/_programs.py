"""What the spoof generators share: their two errors, the external programs they run, and how they
read a program's output back.

A program is looked up on ``PATH`` when a generator needs it (:func:`_require`), so a missing one is a
:class:`GeneratorUnavailable` naming its Debian package, never an import error.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from pipeline.errors import DeepscanError, ResultStatus
from pipeline.media import SAMPLE_RATE_HZ, load_audio


class GeneratorUnavailable(DeepscanError):
    """An external program a generator or the codec step needs is not installed."""

    status = ResultStatus.GENERATOR_UNAVAILABLE


class GeneratorFailed(DeepscanError):
    """A generator ran but produced no usable audio (non-zero exit, timeout, empty output)."""

    status = ResultStatus.GENERATOR_FAILED


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
