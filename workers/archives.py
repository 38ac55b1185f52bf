"""Zip and tar archives (plain, gzip, bzip2 or xz, recognised by content): safe listing and extraction.

An archive is listed once, under limits on the member count, the total uncompressed size and the
compression ratio, so that a zip bomb is refused before anything is inflated. Each member is then
extracted by the task that analyses it, into a file whose path the caller chooses: a member's name never
becomes a path on disk, and names that are absolute, climb out with ``..``, or belong to links and
special files are rejected anyway (they could not be a URI fragment worth showing).
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from workers.errors import ArchiveDecodeError, ArchiveRejectedError

COPY_BLOCK_BYTES = 1 << 20
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
# General purpose bits (APPNOTE 4.4.4) under which zipfile lists a member and then cannot open it.
ZIP_UNREADABLE_FLAGS = {0x1: "encrypted", 0x20: "compressed patched data", 0x40: "strongly encrypted"}
# The compression methods zipfile inflates. Any other (Deflate64, which Windows writes for large folders;
# implode, PPMd...) lists like the rest, then raises NotImplementedError once the member is opened.
ZIP_READABLE_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold before it is refused as a whole.

    Photos, video and compressed audio barely deflate (about 1:1); a bomb reaches 1:1000 and beyond.
    Members under ``ratio_floor_bytes`` are exempt from the ratio: tiny text files compress very well.
    """

    max_members: int = 10_000
    max_total_bytes: int = 16 * 2**30
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 2**20


@dataclass(frozen=True)
class ArchiveMember:
    name: str  # normalised POSIX path inside the archive, no leading "./"
    size_bytes: int


@dataclass(frozen=True)
class ArchiveListing:
    kind: str  # "zip" | "tar"
    members: tuple[ArchiveMember, ...]
    rejected: tuple[tuple[str, str], ...]  # (name as stored, why it was left out)
    total_bytes: int


def member_name(raw: str) -> str:
    """The normalised name of a member, or ValueError saying why it is unsafe."""
    if not raw or "\x00" in raw:
        raise ValueError("empty name or NUL byte in the name")
    if raw.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(raw):
        raise ValueError("absolute path")
    parts = re.split(r"[/\\]", raw)
    if ".." in parts:
        raise ValueError("path climbs out of the archive with '..'")
    name = str(PurePosixPath(*[p for p in parts if p not in ("", ".")]))
    if name in ("", "."):
        raise ValueError("empty name")
    return name


def _check_ratio(size: int, compressed: int, what: str, limits: ArchiveLimits) -> None:
    if size > limits.ratio_floor_bytes and size > limits.max_ratio * max(compressed, 1):
        raise ArchiveRejectedError(
            f"{what} inflates {size / max(compressed, 1):.0f}-fold; the limit is {limits.max_ratio:.0f}"
        )


class _Budget:
    """Counts members and bytes while listing, and refuses the archive at the first limit crossed."""

    def __init__(self, limits: ArchiveLimits, archive_bytes: int) -> None:
        self.limits, self.archive_bytes = limits, archive_bytes
        self.entries, self.total_bytes = 0, 0

    def add(self, size_bytes: int) -> None:
        self.entries += 1
        self.total_bytes += size_bytes
        if self.entries > self.limits.max_members:
            raise ArchiveRejectedError(f"more than {self.limits.max_members} entries in the archive")
        if self.total_bytes > self.limits.max_total_bytes:
            raise ArchiveRejectedError(
                f"more than {self.limits.max_total_bytes} bytes once extracted; that is the limit"
            )
        _check_ratio(self.total_bytes, self.archive_bytes, "the archive", self.limits)


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    """None for a regular file, else why the entry is not extracted."""
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the writer recorded no Unix mode
    if file_type == stat.S_IFLNK:
        return "symbolic link"
    if file_type not in (0, stat.S_IFREG):
        return "not a regular file"
    for flag, why in ZIP_UNREADABLE_FLAGS.items():
        if info.flag_bits & flag:
            return why
    if info.compress_type not in ZIP_READABLE_METHODS:
        return f"compressed with method {info.compress_type}, which cannot be decompressed here"
    return None


def _tar_kind(info: tarfile.TarInfo) -> str | None:
    if info.issym() or info.islnk():
        return "link"
    if not info.isfile():
        return "not a regular file"
    return None


def list_members(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> ArchiveListing:
    """List the members worth analysing. Raises ArchiveRejectedError over a limit, ArchiveDecodeError if
    the content is neither zip nor tar (or is truncated)."""
    budget = _Budget(limits, path.stat().st_size)
    members: list[ArchiveMember] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    with _open(path) as (kind, entries):
        for raw, size, compressed, why_not in entries:
            budget.add(size)  # folder entries count too: a million of them is an attack all the same
            if raw.endswith("/"):
                continue
            if kind == "zip":
                _check_ratio(size, compressed, f"member {raw!r}", limits)
            try:
                name = member_name(raw)
            except ValueError as e:
                rejected.append((raw, str(e)))
                continue
            if why_not is not None:
                rejected.append((raw, why_not))
            elif name in seen:
                rejected.append((raw, "a second member with the same name"))
            else:
                seen.add(name)
                members.append(ArchiveMember(name, size))
    return ArchiveListing(kind, tuple(members), tuple(rejected), budget.total_bytes)


def extract_member(path: Path, name: str, destination: Path, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Write the bytes of member ``name`` (as ``list_members`` names it) to the file ``destination``.

    Reads at most the size the archive declares for it (and never more than the total limit).
    """
    with _open_member(path, name) as (declared, stream):
        budget = min(declared, limits.max_total_bytes)
        written = 0
        try:
            with destination.open("wb") as out:
                while block := stream.read(COPY_BLOCK_BYTES):
                    written += len(block)
                    if written > budget:
                        raise ArchiveRejectedError(f"member {name!r} is larger than the archive declares")
                    out.write(block)
        except _READ_ERRORS as e:
            raise ArchiveDecodeError(f"member {name!r} could not be extracted: {e}") from e


# -- format plumbing --------------------------------------------------------------------------------------

_Entry = tuple[str, int, int, "str | None"]  # raw name, size, compressed size, why not extracted
# UnicodeDecodeError: a zip entry flagged UTF-8 whose name is not (zipfile refuses the whole directory);
# NotImplementedError: one that needs a zip version zipfile does not read (it refuses the directory too)
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    OSError,
    UnicodeDecodeError,
    NotImplementedError,
)


def _open_tar(path: Path) -> tarfile.TarFile:
    # Tar names are bytes. tarfile's default decoding (surrogateescape) lets a name that is not UTF-8
    # through as lone surrogates, which no URI, task message or database column accepts: the member's
    # row could never be written. Such bytes read as U+FFFD instead, in listing and extraction alike.
    return tarfile.open(path, mode="r:*", errors="replace")


@contextmanager
def _open(path: Path) -> Iterator[tuple[str, Iterator[_Entry]]]:
    """Yield ("zip" | "tar", the archive's entries). Folder entries end with "/"."""
    with ExitStack() as stack:
        try:
            if zipfile.is_zipfile(path):
                archive = stack.enter_context(zipfile.ZipFile(path))
                infos = archive.infolist()
                entries: Iterator[_Entry] = (
                    (i.filename, i.file_size, i.compress_size, _zip_kind(i)) for i in infos
                )
                kind = "zip"
            else:
                entries, kind = _tar_entries(stack.enter_context(_open_tar(path))), "tar"
        except _READ_ERRORS as e:
            raise ArchiveDecodeError(f"the content cannot be read as a zip or tar archive: {e}") from e
        yield kind, entries


def _tar_entries(tar: tarfile.TarFile) -> Iterator[_Entry]:
    # Iterating reads the (decompressed) stream header by header: the budget stops a bomb part-way.
    try:
        for info in tar:
            yield info.name + ("/" if info.isdir() else ""), info.size, info.size, _tar_kind(info)
    except _READ_ERRORS as e:
        raise ArchiveDecodeError(f"the archive is truncated or corrupt: {e}") from e


@contextmanager
def _open_member(path: Path, name: str) -> Iterator[tuple[int, IO[bytes]]]:
    """Yield (declared size, binary stream) of the regular member whose normalised name is ``name``."""
    with ExitStack() as stack:
        try:
            found = _find_member(stack, path, name)
        except _READ_ERRORS as e:
            raise ArchiveDecodeError(f"the archive could not be read: {e}") from e
        if found is None:
            raise ArchiveDecodeError(f"the archive has no regular member {name!r}")
        yield found


def _find_member(stack: ExitStack, path: Path, name: str) -> tuple[int, IO[bytes]] | None:
    def matches(raw: str) -> bool:
        try:
            return member_name(raw) == name
        except ValueError:
            return False

    if zipfile.is_zipfile(path):
        archive = stack.enter_context(zipfile.ZipFile(path))
        for info in archive.infolist():
            if _zip_kind(info) is None and matches(info.filename):
                return info.file_size, stack.enter_context(archive.open(info))
        return None
    tar = stack.enter_context(_open_tar(path))
    for tinfo in tar:
        if _tar_kind(tinfo) is None and matches(tinfo.name):
            stream = tar.extractfile(tinfo)
            if stream is not None:
                return tinfo.size, stack.enter_context(stream)
    return None
