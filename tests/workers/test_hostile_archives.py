"""Hostile names on the storage side: S3 keys that look like URL syntax, file and archive member names
that are not UTF-8. Each object must be read as the object it is, and end with exactly one row."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

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
