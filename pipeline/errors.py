"""One exception hierarchy for everything that can stop an analysis.

Each subclass carries the machine-readable ``status`` that ends up in the result row; the message is the
human-readable reason. Callers chain causes (``raise MediaDecodeError(...) from e``).
"""

from __future__ import annotations


class DeepscanError(Exception):
    """Base class. ``status`` is the code written to the results table."""

    status = "error"

    @property
    def reason(self) -> str:
        return str(self) or self.__class__.__name__


class UnsupportedMediaError(DeepscanError):
    """The content is not an image, video or audio stream we can read."""

    status = "unsupported"


class MediaDecodeError(DeepscanError):
    """The content claims a known format but cannot be decoded (truncated, corrupt)."""

    status = "decode_error"


class NoFaceError(DeepscanError):
    """An image or video in which the face detector found nothing to score."""

    status = "no_face"


class TooShortError(DeepscanError):
    """Audio or video shorter than the minimum the models need."""

    status = "too_short"


class SilentAudioError(DeepscanError):
    """Audio whose level never rises above the silence floor: nothing to judge."""

    status = "silent"


class ModelPackError(DeepscanError):
    """A model pack that is missing, malformed, or whose files fail their checksum."""

    status = "model_error"
