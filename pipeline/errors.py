"""One exception hierarchy for everything that can stop an analysis.

Each subclass carries the machine-readable ``status`` that ends up in the result row; the message is the
human-readable reason. Callers chain causes (``raise MediaDecodeError(...) from e``).
"""

from __future__ import annotations

from enum import Enum


class ResultStatus(str, Enum):
    """The ``status`` of a result row: ``ok`` with a verdict, or why there is none (never an invented score)."""

    OK = "ok"
    EXPANDED = "expanded"  # an archive: its members have rows of their own
    ERROR = "error"  # a failure of ours (a bug, a store or a database that failed for good), not of the media
    UNSUPPORTED = "unsupported"
    DECODE_ERROR = "decode_error"
    NO_FACE = "no_face"
    TOO_SHORT = "too_short"
    SILENT = "silent"
    TIMEOUT = "timeout"
    MODEL_ERROR = "model_error"
    USAGE = "usage"  # a command line or configuration error: never reaches a row
    BUSY = "busy"  # deepscan serve's job pool is full: the upload is refused, nothing reaches a row
    # building the synthetic-speech corpus (training.spoofs): never reaches a row either
    GENERATOR_UNAVAILABLE = "generator_unavailable"
    GENERATOR_FAILED = "generator_failed"

    def __str__(self) -> str:  # the value, on every Python version (3.11 changed mixed-in enums' format)
        return self.value


class DeepscanError(Exception):
    """Base class. ``status`` is the code written to the results table."""

    status: ResultStatus = ResultStatus.ERROR

    @property
    def reason(self) -> str:
        return str(self) or self.__class__.__name__


class UnsupportedMediaError(DeepscanError):
    """The content is not an image, video or audio stream we can read."""

    status = ResultStatus.UNSUPPORTED


class MediaDecodeError(DeepscanError):
    """The content claims a known format but cannot be decoded (truncated, corrupt)."""

    status = ResultStatus.DECODE_ERROR


class NoFaceError(DeepscanError):
    """An image or video in which the face detector found nothing to score."""

    status = ResultStatus.NO_FACE


class TooShortError(DeepscanError):
    """Audio or video shorter than the minimum the models need."""

    status = ResultStatus.TOO_SHORT


class SilentAudioError(DeepscanError):
    """Audio whose level never rises above the silence floor: nothing to judge."""

    status = ResultStatus.SILENT


class ModelPackError(DeepscanError):
    """A model pack that is missing, malformed, or whose files fail their checksum."""

    status = ResultStatus.MODEL_ERROR
