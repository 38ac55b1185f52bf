"""Hostile names on the storage side: S3 keys that look like URL syntax, file and archive member names
that are not UTF-8. Each object must be read as the object it is, and end with exactly one row."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import struct
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pipeline.media import detect_media_type
from tests.workers.conftest import AWS_ENV, s3_client
from workers.archives import extract_member, list_members
from workers.errors import ArchiveDecodeError
from workers.storage import LocalCopies, list_folder, list_s3

# Characters a URL parser reads as syntax (fragment, query, an empty first path segment), all legal in an
# S3 key and common in file names ("Scan #3.jpg").
ODD_KEYS = ("Scan #3.jpg", "photo.jpg?download=1", "photo.jpg", "/leading-slash.jpg", "100%25 real.jpg")


@pytest.mark.services
def test_s3_keys_with_url_syntax_are_fetched_as_themselves(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    bucket = f"odd-{uuid.uuid4().hex[:12]}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    for key in ODD_KEYS:
        client.put_object(Bucket=bucket, Key=key, Body=f"the bytes of {key}".encode())

    refs = list(list_s3(f"s3://{bucket}/", endpoint_url=s3_endpoint))
    assert sorted(ref.key for ref in refs) == sorted(ODD_KEYS)  # the row's key column
    copies = LocalCopies(endpoint_url=s3_endpoint)
    try:
        fetched = {ref.key: copies.path(ref).read_bytes() for ref in refs}
    finally:
        copies.close()
    assert fetched == {key: f"the bytes of {key}".encode() for key in ODD_KEYS}


def test_local_file_names_that_are_not_utf8_are_read_in_place(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9 #1?.jpg"  # Latin-1, as a camera card or an old share names it
    with open(raw, "wb") as f:
        f.write(b"the bytes of the photo")
    (ref,) = list_folder(tmp_path.as_uri())
    assert ref.uri.isascii()  # percent-encoded bytes: a row, a message, a log line can carry it
    copies = LocalCopies(endpoint_url=None)
    assert copies.path(ref).read_bytes() == b"the bytes of the photo"


def latin1_tar(path: Path, members: dict[bytes, bytes]) -> Path:
    """A ustar archive whose member names are the given raw bytes (Latin-1, as old Windows tools wrote)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for raw, data in members.items():
            info = tarfile.TarInfo(raw.decode("utf-8", "surrogateescape"))  # written back as the raw bytes
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_member_names_that_are_not_utf8_are_listed_as_text_and_extracted(tmp_path: Path) -> None:
    path = latin1_tar(tmp_path / "latin1.tar", {b"caf\xe9.txt": b"one", b"na\xefve.txt": b"two"})
    listing = list_members(path)
    names = [member.name for member in listing.members]
    assert len(names) == 2 and listing.rejected == ()
    for name in names:
        name.encode("utf-8")  # a URI, a row, a JSON message: all need text, not smuggled bytes
    extract_member(path, names[1], tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"two"


def test_a_zip_whose_utf8_flagged_names_are_not_utf8_is_a_decode_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("\u00e9.jpg", b"x")  # not ASCII: zipfile sets the UTF-8 flag (bit 11)
    path = tmp_path / "flagged.zip"
    path.write_bytes(buffer.getvalue().replace("\u00e9".encode(), b"\xff\xfe"))  # both headers, same length
    with pytest.raises(ArchiveDecodeError, match="utf-8"):  # a decode_error row, not an 'error' of ours
        list_members(path)


# The stream compressions tarfile's "r:*" reads: the sniffer must send each of them to the archive task.
COMPRESSIONS = pytest.mark.parametrize(
    "compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gz", "bz2", "xz"]
)


@COMPRESSIONS
def test_compressed_tars_are_sniffed_as_archives_and_listed(tmp_path: Path, compress: Any) -> None:
    plain = latin1_tar(tmp_path / "plain.tar", {b"photo.jpg": b"the bytes of the photo"})
    path = tmp_path / "packed"  # no extension: the content decides
    path.write_bytes(compress(plain.read_bytes()))
    assert detect_media_type(path) == "archive"  # was "unknown" for bzip2 and xz: an 'unsupported' row
    assert [member.name for member in list_members(path).members] == ["photo.jpg"]


@COMPRESSIONS
def test_a_compressed_stream_that_holds_no_tar_is_a_decode_error(tmp_path: Path, compress: Any) -> None:
    path = tmp_path / "notes"
    path.write_bytes(compress(b"a compressed text file, not a tar\n" * 20))
    assert detect_media_type(path) == "archive"
    with pytest.raises(ArchiveDecodeError, match="cannot be read as a zip or tar archive"):
        list_members(path)  # a decode_error row with its reason, as a gzip that holds no tar has always had


ZIP_DEFLATE64 = 9  # APPNOTE 4.4.5; Windows writes it for large folders, and zipfile cannot inflate it


def patched_zip(name: str, data: bytes, *, method: int = 0, flags: int = 0, version: int = 20) -> bytes:
    """A one-member zip of stored bytes whose headers (local and central alike) claim ``method``, the
    general purpose ``flags`` and the zip ``version`` needed to extract."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(name, data)
    raw = bytearray(buffer.getvalue())
    fields = struct.pack("<HHH", version, flags, method)
    raw[4:10] = fields  # local file header: signature, version needed, flags, method
    central = raw.index(b"PK\x01\x02")
    raw[central + 6 : central + 12] = fields  # central: signature, version made by, then the same three
    return bytes(raw)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"method": ZIP_DEFLATE64}, "method 9"),
        ({"flags": 0x20}, "patched data"),
        ({"flags": 0x40}, "strongly encrypted"),
    ],
)
def test_zip_members_zipfile_cannot_open_are_left_out_with_a_reason(
    tmp_path: Path, headers: dict[str, int], reason: str
) -> None:
    path = tmp_path / "unreadable.zip"
    path.write_bytes(patched_zip("big.jpg", b"the bytes of the photo", **headers))
    listing = list_members(path)
    assert listing.members == ()  # the archive row then says why it holds nothing to analyse
    ((name, why),) = listing.rejected
    assert name == "big.jpg" and reason in why
    with pytest.raises(ArchiveDecodeError):  # never NotImplementedError: an 'error' row is a failure of ours
        extract_member(path, "big.jpg", tmp_path / "out")


def test_a_zip_of_a_version_zipfile_does_not_read_is_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "future.zip"
    path.write_bytes(patched_zip("photo.jpg", b"the bytes of the photo", version=99))
    with pytest.raises(ArchiveDecodeError, match="zip file version 9.9"):
        list_members(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_members_in_every_readable_method_are_extracted(tmp_path: Path, method: int) -> None:
    path = tmp_path / "members.zip"
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("photo.jpg", b"the bytes of the photo" * 100)
    listing = list_members(path)
    assert [member.name for member in listing.members] == ["photo.jpg"] and listing.rejected == ()
    extract_member(path, "photo.jpg", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"the bytes of the photo" * 100


@pytest.mark.services
@pytest.mark.slow
def test_an_archive_with_non_utf8_names_gives_each_member_a_row(stack_factory: Any, tmp_path: Path) -> None:
    """The scan of a folder holding such an archive completes, with the archive's row and one per member."""
    folder = tmp_path / "media"
    folder.mkdir()
    latin1_tar(folder / "latin1.tar", {b"caf\xe9.txt": b"not media\n", b"plain.txt": b"not media\n"})
    stack = stack_factory(f"sqlite:///{tmp_path / 'names.db'}")
    proc = stack.cli("scan", str(folder), unset=("DEEPSCAN_BROKER_URL",), timeout_s=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads(proc.stdout.splitlines()[-1])
    assert final["status"] == "complete" and final["total"] == final["done"] == 3, final
    rows = stack.rows(folder.as_uri() + "/")
    archive = (folder / "latin1.tar").as_uri()
    assert rows.pop(archive)["status"] == "expanded"
    assert len(rows) == 2 and all(uri.startswith(archive + "#") for uri in rows)
    assert {row["status"] for row in rows.values()} == {"unsupported"}
