"""Spoof generators available on a plain Debian machine, and a builder for a paired real/fake corpus.

Two kinds of fake speech are made:

* text-to-speech (:mod:`training.spoofs.tts`): espeak-ng (formant synthesis), flite (diphone and
  clustergen voices) and festival (``text2wave``), reading public-domain Harvard sentences;
* resynthesis of a real clip (:mod:`training.spoofs.resynthesis`): Griffin-Lim phase reconstruction of an
  STFT magnitude, the WORLD vocoder (pyworld), Griffin-Lim inversion of a log-mel spectrogram (a crude
  stand-in for a neural vocoder), an LPC vocoder and a phase-vocoder time-stretch there and back.

Every generator returns mono float32 at 16 kHz. :func:`process` (:mod:`training.spoofs.degradation`)
applies the same random degradations (level, noise, band-limiting, a lossy codec) to either class, so that
the two classes differ in how the speech was made, not in what happened to the file afterwards.
:func:`build_spoof_dataset` (:mod:`training.spoofs.corpus`) writes ``real/`` and ``fake/<family>/``
folders that :func:`training.audio_datasets.load_folders` reads back, every fake named after the speaker
of the real clip it is paired with.

Dependencies run one way: ``_programs`` (errors, external programs) <- ``tts``, ``resynthesis``,
``degradation`` <- ``corpus``; this module only re-exports.
"""

from __future__ import annotations

from training.spoofs._programs import APT_PACKAGES, GeneratorFailed, GeneratorUnavailable
from training.spoofs.corpus import (
    ALL_FAMILIES,
    HARVARD_SENTENCES,
    RESYNTH_FAMILIES,
    TTS_FAMILIES,
    build_spoof_dataset,
)
from training.spoofs.degradation import (
    CODECS,
    DEFAULT_PROCESSING,
    NO_PROCESSING,
    Processing,
    codec_round_trip,
    process,
)
from training.spoofs.resynthesis import (
    MIN_RESYNTH_SAMPLES,
    resynth_griffin_lim,
    resynth_lpc,
    resynth_mel_inversion,
    resynth_phase_vocoder,
    resynth_world,
)
from training.spoofs.tts import festival_voices, flite_voices, tts_espeak, tts_festival, tts_flite

__all__ = [
    "ALL_FAMILIES",
    "APT_PACKAGES",
    "CODECS",
    "DEFAULT_PROCESSING",
    "HARVARD_SENTENCES",
    "MIN_RESYNTH_SAMPLES",
    "NO_PROCESSING",
    "RESYNTH_FAMILIES",
    "TTS_FAMILIES",
    "GeneratorFailed",
    "GeneratorUnavailable",
    "Processing",
    "build_spoof_dataset",
    "codec_round_trip",
    "festival_voices",
    "flite_voices",
    "process",
    "resynth_griffin_lim",
    "resynth_lpc",
    "resynth_mel_inversion",
    "resynth_phase_vocoder",
    "resynth_world",
    "tts_espeak",
    "tts_festival",
    "tts_flite",
]
