"""Where objects live: S3-compatible buckets and local folders. Listing, fetching, and the keys tasks carry.

Tasks carry an ``ObjectRef`` (a URI and the version the producer saw), never bytes. A worker fetches the
object into a temporary directory (S3, with ``If-Match`` on the ETag so that every task of one object
reads the same version) or reads a local file in place. ``LocalCopies`` keeps the last few fetched
objects of a worker process, so the segments of one video or the members of one archive download it once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

from pipeline.media import sha256_file
from workers.errors import (
    ObjectChangedError,
    ObjectMissingError,
    StorageError,
    StorageUnavailableError,
    UsageError,
)

logger = logging.getLogger(__name__)

COPY_BLOCK_BYTES = 1 << 20
# S3 answers with these codes when it is overloaded or briefly unavailable: retry later, they pass.
TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
MISSING_S3_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
CHANGED_S3_CODES = frozenset({"PreconditionFailed", "412"})
S3_MAX_ATTEMPTS = 5  # botocore's own retries (standard mode) before a task-level retry takes over
S3_MAX_KEY_BYTES = 1024  # S3's own limit on a key's UTF-8 length
_REF_FIELDS = {"uri": str, "etag": str, "sha256": str, "size_bytes": int, "member": str}


@dataclass(frozen=True)
class ObjectRef:
    """The key to one object, JSON-ready through ``to_dict``: what a task carries instead of bytes.

    ``uri`` is ``s3://bucket/key`` or ``file:///abs/path``; ``member`` a path inside the archive at
    ``uri``. ``etag`` (S3, quotes stripped) or ``sha256`` (local files) is the content version the
    producer saw; a result row records it so the next scan can skip unchanged objects.
    """

    uri: str
    etag: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    member: str | None = None

    @property
    def result_uri(self) -> str:
        """The URI of this object's result row: ``s3://bucket/key.zip#member/path`` for members."""
        return f"{self.uri}#{self.member}" if self.member is not None else self.uri

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str | None:
        return split_s3_uri(self.uri)[0] if self.is_s3 else None

    @property
    def key(self) -> str | None:
        return split_s3_uri(self.uri)[1] if self.is_s3 else None

    @property
    def version(self) -> str | None:
        return self.etag or self.sha256

    def for_member(self, name: str, size_bytes: int | None) -> ObjectRef:
        """The ref of member ``name`` of this archive: same container and version, the member's size."""
        return replace(self, member=name, size_bytes=size_bytes)

    def row_extra(self, *, content_sha256: str | None = None) -> dict[str, Any]:
        """The storage columns of this object's result row; ``content_sha256`` of what was analysed.

        A member's ``etag`` is its archive's: a new archive version re-analyses every member.
        """
        return {
            "bucket": self.bucket,
            "key": self.key,
            "etag": self.etag,
            "content_sha256": content_sha256 or (self.sha256 if self.member is None else None),
            "size_bytes": self.size_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_result_row(cls, row: dict[str, Any]) -> ObjectRef | None:
        """The object a result row was analysed from, the inverse of ``result_uri`` and ``row_extra``; None
        for a row whose media is not stored (an upload, deleted once analysed, or a pseudo-URI)."""
        uri: str = row["uri"]
        if uri.startswith("s3://"):
            # a key may hold '#' itself ("Scan #3.jpg"): the row's key (a member's is its archive's) says
            # where the object's URI ends, the URI alone does not
            container = f"s3://{row['bucket']}/{row['key']}"
        elif uri.startswith("file://"):
            # a '#' of the path is quoted (Path.as_uri): the first one starts a member's name
            container = uri.partition("#")[0]
        else:
            return None
        return cls(container, etag=row.get("etag"), member=uri[len(container) + 1 :] or None)

    @classmethod
    def for_local_file(cls, path: Path) -> ObjectRef:
        """The ref of a local file, its sha256 as the version (None for a file that cannot be read)."""
        try:
            return cls(uri=path.resolve().as_uri(), sha256=sha256_file(path), size_bytes=path.stat().st_size)
        except OSError:
            return cls(uri=path.resolve().as_uri())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectRef:
        """The ref a task carries, checked: it comes off the broker, so it is input like any other.

        Raises ``UsageError`` for unknown fields or wrong types, a URI that is neither ``s3://bucket/key``
        (key within S3's 1024 bytes) nor an absolute ``file://`` path, a NUL byte, or a member name that
        is absolute or climbs out of its archive (``workers.archives.member_name``).
        """
        from workers.archives import member_name

        if not isinstance(data, dict) or set(data) - set(_REF_FIELDS) or "uri" not in data:
            raise UsageError(f"not an object reference: {data!r:.200}")
        for field, kind in _REF_FIELDS.items():
            value = data.get(field)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise UsageError(f"object reference field {field!r} is not a {kind.__name__}")
        uri, member = data["uri"], data.get("member")
        if "\x00" in uri or (member is not None and "\x00" in member):
            raise UsageError("NUL byte in an object reference")
        if uri.startswith("s3://"):
            _, key = split_s3_uri(uri)
            if not key or len(key.encode()) > S3_MAX_KEY_BYTES:
                raise UsageError(f"not an S3 object key: {uri!r:.200}")
        elif not uri.startswith("file:///"):
            raise UsageError(f"not an s3:// or file:/// object URI: {uri!r:.200}")
        if member is not None:
            try:
                if member_name(member) != member:
                    raise ValueError("name not in normal form")
            except ValueError as e:
                raise UsageError(f"unsafe archive member name {member!r:.200}: {e}") from e
        return cls(**data)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty (a whole bucket).

    The key is everything after the bucket's slash, as listed: an S3 key may hold ``#``, ``?`` or a
    leading ``/``, which a URL parser would take for a fragment, a query or a separator (and fetch
    another object). ``list_s3`` builds these URIs from keys without quoting them.
    """
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise UsageError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def local_path(uri: str) -> Path:
    """The path of a ``file://`` URI (``Path.as_uri`` quotes the name's bytes: a name that is not UTF-8
    comes back byte for byte, not with U+FFFD in place of what could not be decoded)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise UsageError(f"not a file:// URI: {uri!r}")
    return Path(os.fsdecode(unquote_to_bytes(parsed.path)))


def canonical_source(uri: str) -> str:
    """A scan source as stored in the scans table: ``s3://bucket/prefix`` as given, folders as file URIs.

    Raises ``UsageError`` for anything else, including a local path that is not a folder.
    """
    if uri.startswith("s3://"):
        split_s3_uri(uri)
        return uri
    path = local_path(uri) if uri.startswith("file://") else Path(uri)
    if not path.is_dir():
        raise UsageError(f"not an s3://bucket/prefix URI nor a folder: {uri!r}")
    return path.resolve().as_uri()


# -- S3 ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def s3_client(endpoint_url: str | None) -> Any:
    """One boto3 S3 client per process and endpoint (clients are thread-safe; sessions are not)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _s3_error(error: Exception, what: str) -> StorageError:
    """Map a botocore exception to our hierarchy: missing, changed, transient, or plain StorageError."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in MISSING_S3_CODES:
            return ObjectMissingError(f"{what} no longer exists ({code})")
        if code in CHANGED_S3_CODES:
            return ObjectChangedError(f"{what} was overwritten after it was listed")
        if code in TRANSIENT_S3_CODES or status >= 500:
            return StorageUnavailableError(f"S3 is unavailable for {what}: {code or status}")
        return StorageError(f"S3 refused {what}: {code or status}")
    if isinstance(error, BotoCoreError):  # connection refused, timeouts, closed connections
        return StorageUnavailableError(f"S3 is unreachable for {what}: {error}")
    raise TypeError(f"not a botocore error: {error!r}") from error


def list_s3(uri: str, *, endpoint_url: str | None, exclude_prefix: str | None = None) -> Iterator[ObjectRef]:
    """Every object under ``s3://bucket/prefix`` (paginated), folder markers and the keys below
    ``exclude_prefix`` (the quarantine, ``workers.writeback``) left out."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(uri)
    excluded = f"{exclude_prefix.rstrip('/')}/" if exclude_prefix else None
    paginator = s3_client(endpoint_url).get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/") and item["Size"] == 0:
                    continue
                if excluded and item["Key"].startswith(excluded):
                    continue
                yield ObjectRef(
                    uri=f"s3://{bucket}/{item['Key']}",
                    etag=str(item["ETag"]).strip('"'),
                    size_bytes=int(item["Size"]),
                )
    except (BotoCoreError, ClientError) as e:
        raise _s3_error(e, uri) from e


def find_s3_objects(uri: str, *, endpoint_url: str | None) -> list[ObjectRef]:
    """The object ``s3://bucket/key`` itself or, when there is none of that name, every object below
    ``key/`` (a folder-like prefix). UsageError when neither exists: ``deepscan detect`` was given a typo."""
    exact, below = [], []
    _, key = split_s3_uri(uri)
    folder = f"{key.rstrip('/')}/" if key else ""
    for ref in list_s3(uri, endpoint_url=endpoint_url):
        ref_key = split_s3_uri(ref.uri)[1]
        if ref_key == key:
            exact.append(ref)
        elif ref_key.startswith(folder):
            below.append(ref)
    if not exact and not below:
        raise UsageError(f"no such object or prefix: {uri}")
    return exact or below


def download_s3(ref: ObjectRef, destination: Path, *, endpoint_url: str | None) -> str:
    """Download the object to ``destination`` and return its ETag.

    With ``ref.etag`` set, the request carries ``If-Match``: a newer version raises ObjectChangedError
    rather than mixing two versions in one result.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(ref.uri)
    extra = {"IfMatch": f'"{ref.etag}"'} if ref.etag else {}
    try:
        response = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key, **extra)
        with destination.open("wb") as out:
            shutil.copyfileobj(response["Body"], out, COPY_BLOCK_BYTES)
    except (BotoCoreError, ClientError) as e:
        raise _s3_error(e, ref.uri) from e
    return str(response["ETag"]).strip('"')


def store_file(path: Path, uri: str, *, endpoint_url: str | None) -> ObjectRef:
    """Put a local file at ``uri`` (``s3://bucket/key``, or ``file:///path`` on a disk the workers share)
    and return its ref, versioned as a listing would see it."""
    from botocore.exceptions import BotoCoreError, ClientError

    if uri.startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        try:
            with path.open("rb") as body:
                response = s3_client(endpoint_url).put_object(Bucket=bucket, Key=key, Body=body)
        except (BotoCoreError, ClientError) as e:
            raise _s3_error(e, uri) from e
        return ObjectRef(uri=uri, etag=str(response["ETag"]).strip('"'), size_bytes=path.stat().st_size)
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return ObjectRef.for_local_file(target)


def remove_stored(ref: ObjectRef, *, endpoint_url: str | None) -> None:
    """Delete what ``store_file`` put (an S3 object, or a file and its folder when that is left empty)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if ref.is_s3:
        bucket, key = split_s3_uri(ref.uri)
        try:
            s3_client(endpoint_url).delete_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as e:
            raise _s3_error(e, ref.uri) from e
        return
    path = local_path(ref.uri)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or gone: either way nothing of ours is left
        path.parent.rmdir()


# -- local folders ------------------------------------------------------------------------------------------


def list_folder(uri: str) -> Iterator[ObjectRef]:
    """Every regular file below a folder (recursively, sorted), with its sha256 as the version."""
    for path in sorted(local_path(uri).rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield ObjectRef.for_local_file(path)


def list_objects(
    source: str, *, endpoint_url: str | None, exclude_prefix: str | None = None
) -> Iterator[ObjectRef]:
    """The objects of a canonical scan source (``canonical_source``); ``exclude_prefix``: see ``list_s3``."""
    if source.startswith("s3://"):
        return list_s3(source, endpoint_url=endpoint_url, exclude_prefix=exclude_prefix)
    return list_folder(source)


# -- fetching -------------------------------------------------------------------------------------------------


class LocalCopies:
    """Fetched objects of this process, least recently used first out.

    Keys are (uri, version, member). A video's segments, or an archive's members, handled by one worker
    process then cost one download. Holds at most ``max_entries`` files; the directory goes when the
    process ends.
    """

    def __init__(self, *, endpoint_url: str | None, max_entries: int = 8) -> None:
        self.endpoint_url = endpoint_url
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str | None, str | None], Path] = OrderedDict()
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    def path(self, ref: ObjectRef) -> Path:
        """A local file with the content of ``ref`` (a member is extracted from its cached archive).

        Local files are read in place. Raises a StorageError subclass when the object cannot be read.
        """
        if ref.member is not None:
            return self._cached((ref.uri, ref.version, ref.member), lambda dest: self._extract(ref, dest))
        if not ref.is_s3:
            path = local_path(ref.uri)
            if not path.is_file():
                raise ObjectMissingError(f"{ref.uri} no longer exists")
            return path
        return self._cached(
            (ref.uri, ref.version, None),
            lambda dest: download_s3(ref, dest, endpoint_url=self.endpoint_url),
        )

    def _extract(self, ref: ObjectRef, destination: Path) -> None:
        from workers.archives import extract_member

        assert ref.member is not None
        container = self.path(replace(ref, member=None))
        extract_member(container, ref.member, destination)

    def _cached(self, key: tuple[str, str | None, str | None], fill: Callable[[Path], object]) -> Path:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        if self._directory is None or not Path(self._directory.name).is_dir():
            self._directory = tempfile.TemporaryDirectory(prefix="deepscan-")
        fd, name = tempfile.mkstemp(dir=self._directory.name)
        os.close(fd)
        destination = Path(name)
        try:
            fill(destination)
        except BaseException:
            destination.unlink(missing_ok=True)
            raise
        self._entries[key] = destination
        while len(self._entries) > self.max_entries:
            _, evicted = self._entries.popitem(last=False)
            evicted.unlink(missing_ok=True)
        return destination

    def close(self) -> None:
        """Delete every copy and the directory (a SIGKILLed process leaves them to the tmp cleaner)."""
        self._entries.clear()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None
