"""Archives: listing under limits, and extraction that never writes outside the file it is given."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from workers.archives import ArchiveLimits, extract_member, list_members, member_name
from workers.errors import ArchiveDecodeError, ArchiveRejectedError

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4


def write_zip(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return path


def test_member_names_are_normalised_and_unsafe_ones_refused() -> None:
    assert member_name("./photos//a.jpg") == "photos/a.jpg"
    for unsafe in (
        "/etc/passwd",
        "../a.jpg",
        "photos/../../a.jpg",
        "C:\\a.jpg",
        "..\\a.jpg",
        "a\x00.jpg",
        "./",
    ):
        with pytest.raises(ValueError):
            member_name(unsafe)


def test_zip_listing_leaves_out_unsafe_members_and_links(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("photos/a.jpg", JPEG)
        archive.writestr("photos/", b"")  # a folder entry: skipped silently
        archive.writestr("../escape.jpg", JPEG)
        archive.writestr("/absolute.jpg", JPEG)
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    listing = list_members(path)
    assert listing.kind == "zip" and [m.name for m in listing.members] == ["photos/a.jpg"]
    assert sorted(name for name, _ in listing.rejected) == ["../escape.jpg", "/absolute.jpg", "link.jpg"]


def test_tar_gz_listing_and_extraction(tmp_path: Path) -> None:
    link = tarfile.TarInfo("link.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hard.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "a.jpg"
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    path = write_tar(tmp_path / "a.tar.gz", [("./a.jpg", JPEG), ("../up.jpg", JPEG), link, hard, fifo])
    listing = list_members(path)
    assert listing.kind == "tar" and [(m.name, m.size_bytes) for m in listing.members] == [
        ("a.jpg", len(JPEG))
    ]
    assert {name for name, _ in listing.rejected} == {"../up.jpg", "link.jpg", "hard.jpg", "pipe"}

    work = tmp_path / "work"
    work.mkdir()
    extract_member(path, "a.jpg", work / "member")
    assert (work / "member").read_bytes() == JPEG
    assert [p.name for p in work.iterdir()] == ["member"]  # the member's name never became a path
    with pytest.raises(ArchiveDecodeError, match="no regular member"):
        extract_member(path, "link.jpg", work / "link")


def test_a_zip_bomb_is_refused_before_anything_is_inflated(tmp_path: Path) -> None:
    bomb = write_zip(tmp_path / "bomb.zip", {"zeros.jpg": bytes(8 * 2**20)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(ArchiveRejectedError, match="inflates"):
        list_members(bomb)


@pytest.mark.parametrize(
    ("limits", "match"),
    [(ArchiveLimits(max_members=2), "more than 2 entries"), (ArchiveLimits(max_total_bytes=2000), "bytes")],
)
def test_member_count_and_total_size_limits(tmp_path: Path, limits: ArchiveLimits, match: str) -> None:
    path = write_zip(tmp_path / "many.zip", {f"{i}.jpg": JPEG for i in range(3)})
    assert len(list_members(path).members) == 3
    with pytest.raises(ArchiveRejectedError, match=match):
        list_members(path, limits)


def test_content_that_is_not_an_archive_is_a_decode_error(tmp_path: Path) -> None:
    not_tar = tmp_path / "notes.gz"
    not_tar.write_bytes(gzip.compress(b"just some text, not a tar archive\n" * 20))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(write_zip(tmp_path / "whole.zip", {"a.jpg": JPEG}).read_bytes()[:100])
    for path in (not_tar, truncated):
        with pytest.raises(ArchiveDecodeError):
            list_members(path)
