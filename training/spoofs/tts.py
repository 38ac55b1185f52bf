"""Text-to-speech generators: espeak-ng (formant synthesis), flite (diphone and clustergen voices) and
festival (``text2wave``), with the voices each offers.

Every generator takes a text and returns mono float32 at 16 kHz; the voice, rate and pitch are
arguments, drawn by the caller (:mod:`training.spoofs.corpus` draws them per speaker).
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from training.spoofs._programs import (
    ESPEAK_BINARY,
    FESTIVAL_BINARY,
    FLITE_BINARY,
    SUBPROCESS_TIMEOUT_S,
    _read_output,
    _require,
    _run,
)

logger = logging.getLogger(__name__)

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
