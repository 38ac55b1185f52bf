"""Errors of the command-line and worker side, in the one hierarchy rooted at ``pipeline.errors``.

Every class carries the ``status`` written to a result row when it ends an object's analysis; the message
is the reason. ``StorageUnavailableError`` is the transient one: tasks retry it with backoff.
"""

from __future__ import annotations

from pipeline.errors import DeepscanError, MediaDecodeError, ResultStatus, UnsupportedMediaError


class UsageError(DeepscanError):
    """A problem with the command line or the configuration: the CLI exits with status 2."""

    status = ResultStatus.USAGE


class ScanError(DeepscanError):
    """A scan that cannot be started or cannot finish (broker down, timeout): the CLI exits with status 1."""


class StorageError(DeepscanError):
    """An object that cannot be read from its store. Permanent unless it is a ``StorageUnavailableError``."""


class ObjectMissingError(StorageError):
    """The object (or its bucket) is gone: deleted after it was listed."""


class ObjectChangedError(StorageError):
    """The object was overwritten after it was listed: its ETag no longer matches the one the scan saw."""


class StorageUnavailableError(StorageError):
    """The store did not answer or asked us to slow down: worth retrying later."""


class ArchiveRejectedError(UnsupportedMediaError):
    """An archive (or one of its members) over the limits on members, size or compression ratio."""


class ArchiveDecodeError(MediaDecodeError):
    """Content that claims to be an archive but cannot be read as zip or tar."""


class AnalysisTimeoutError(DeepscanError):
    """An analysis that ran past its task time limit: stopped, and the worker went on with the next task."""

    status = ResultStatus.TIMEOUT


class PoisonMessageError(DeepscanError):
    """A task handed out ``max_deliveries`` times whose worker process died every time: given up."""
