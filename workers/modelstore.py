"""Model packs in S3: ``deepscan models push`` uploads a pack below a prefix, workers pull it once.

A pushed pack is the pack directory's files below ``s3://bucket/prefix/``, ``manifest.json`` last, so a
puller never finds a manifest whose members are not there yet. A pull downloads them into a directory of
its own below the cache (``<name>-<version>-<first 12 hex digits of the manifest's sha256>``), checks
every member file against the sha256 the manifest carries, and only then renames the directory into place:
a pack in the cache is complete and verified, and processes that pull at once end with the same one.
One prefix per version (``s3://models/deepscan-default/0.7.0``) keeps a running fleet on what it loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.errors import ModelPackError
from pipeline.media import sha256_file
from pipeline.pack import MANIFEST_FILE, Manifest, read_manifest
from workers.storage import _s3_error, s3_client, split_s3_uri

logger = logging.getLogger(__name__)

MANIFEST_DIGEST_CHARS = 12  # of the manifest's sha256 in a cached pack's directory name


def _prefix(uri: str) -> tuple[str, str]:
    bucket, key = split_s3_uri(uri)
    return bucket, f"{key.rstrip('/')}/" if key else ""


def verify_members(directory: Path, manifest: Manifest) -> None:
    """Raise ModelPackError unless every member file is there with the sha256 the manifest lists."""
    for member in manifest.members:
        path = directory / member.file
        if not member.sha256:
            raise ModelPackError(f"the manifest lists no sha256 for {member.file}: it cannot be verified")
        if not path.is_file():
            raise ModelPackError(f"member file missing: {member.file}")
        if sha256_file(path) != member.sha256:
            raise ModelPackError(f"checksum mismatch for {member.file}: not the file the manifest lists")


def push_pack(directory: Path, uri: str, *, endpoint_url: str | None) -> Manifest:
    """Upload the pack in ``directory`` below ``uri`` (``s3://bucket/prefix``), its manifest last.

    The members are verified first: a pack that would not load is not pushed. Only the files of the pack
    folder itself go (manifest, members, card, reports): training's working folders in it (``checkpoints/``,
    ``cache/``, gigabytes) stay behind.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    manifest = read_manifest(directory)
    verify_members(directory, manifest)
    bucket, prefix = _prefix(uri)
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    files.sort(key=lambda p: p.name == MANIFEST_FILE)  # stable: everything else first
    client = s3_client(endpoint_url)
    for path in files:
        key = prefix + path.relative_to(directory).as_posix()
        try:
            client.upload_file(str(path), bucket, key)
        except (BotoCoreError, ClientError) as e:
            raise _s3_error(e, f"s3://{bucket}/{key}") from e
        logger.info("pushed %s to s3://%s/%s", path.name, bucket, key)
    return manifest


def _get(client: Any, bucket: str, key: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (BotoCoreError, ClientError) as e:
        raise _s3_error(e, f"s3://{bucket}/{key}") from e


def pull_pack(uri: str, *, cache_dir: Path, endpoint_url: str | None) -> Path:
    """The local directory of the pack below ``uri``: from the cache, or downloaded and verified into it.

    Raises ModelPackError for a pack that is incomplete or whose files do not match their checksums, and
    a StorageError when the store cannot be read.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(endpoint_url)
    bucket, prefix = _prefix(uri)
    raw = _get(client, bucket, prefix + MANIFEST_FILE)
    try:
        manifest = Manifest.from_dict(json.loads(raw))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelPackError(f"{uri}/{MANIFEST_FILE} is not a pack manifest: {e}") from e
    cache_dir = cache_dir.expanduser()
    digest = hashlib.sha256(raw).hexdigest()[:MANIFEST_DIGEST_CHARS]
    target = cache_dir / f"{manifest.name}-{manifest.version}-{digest}"
    if (target / MANIFEST_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pull-") as scratch:
        staging = Path(scratch) / "pack"
        staging.mkdir()
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    relative = PurePosixPath(item["Key"][len(prefix) :])
                    if item["Key"].endswith("/") or ".." in relative.parts or relative.name == MANIFEST_FILE:
                        continue
                    destination = staging / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, item["Key"], str(destination))
        except (BotoCoreError, ClientError) as e:
            raise _s3_error(e, uri) from e
        verify_members(staging, manifest)
        (staging / MANIFEST_FILE).write_bytes(raw)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST_FILE).is_file():  # not another process that pulled it meanwhile
                raise
    logger.info("pulled %s from %s into %s (checksums ok)", manifest.label, uri, target)
    return target
