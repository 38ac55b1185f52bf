"""Write-back to the bucket (opt-in): tag each scanned S3 object with its verdict, copy fakes to quarantine.

Runs after the object's row is written; the row stays the record, so a write-back that fails is logged
and the object keeps its row. Tagging leaves an object's ETag as it was, so the next scan still skips it,
and scans never list below the quarantine prefix (``storage.list_s3``), so the copies are not analysed.
Archive members are not S3 objects of their own: they are neither tagged nor copied.
"""

from __future__ import annotations

import logging

from pipeline.analyze import MediaResult
from pipeline.errors import ResultStatus
from workers.errors import StorageError
from workers.settings import Settings, get_settings
from workers.storage import ObjectRef, _s3_error, s3_client

logger = logging.getLogger(__name__)

TAG_STATUS, TAG_LABEL, TAG_PROBABILITY, TAG_MODEL = (
    "deepscan-status",
    "deepscan-label",
    "deepscan-fake-probability",
    "deepscan-model",
)
OUR_TAGS = frozenset({TAG_STATUS, TAG_LABEL, TAG_PROBABILITY, TAG_MODEL})
PROBABILITY_DIGITS = 4


def verdict_tags(result: MediaResult) -> dict[str, str]:
    """Our tags for one result; label and probability only when there is a verdict."""
    tags = {TAG_STATUS: ResultStatus(result.status).value, TAG_MODEL: result.model or ""}
    if result.label is not None:
        tags[TAG_LABEL] = result.label
    if result.fake_probability is not None:
        tags[TAG_PROBABILITY] = f"{result.fake_probability:.{PROBABILITY_DIGITS}f}"
    return {key: value for key, value in tags.items() if value}


def quarantine_key(prefix: str, key: str) -> str:
    """``quarantine/`` + ``uploads/a.jpg`` -> ``quarantine/uploads/a.jpg``."""
    return f"{prefix.rstrip('/')}/{key}"


def write_back(ref: ObjectRef, result: MediaResult, *, settings: Settings | None = None) -> None:
    """Tag ``ref`` with the verdict of ``result`` (keeping its other tags) and copy it to quarantine when
    it was found fake, as configured (``DEEPSCAN_TAG_OBJECTS``, ``DEEPSCAN_QUARANTINE_PREFIX``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    settings = settings or get_settings()
    quarantine = settings.quarantine_prefix if result.label == "fake" else None
    if not ref.is_s3 or ref.member is not None or not (settings.tag_objects or quarantine):
        return
    bucket, key = ref.bucket, ref.key
    assert bucket is not None and key is not None
    client = s3_client(settings.s3_endpoint_url)
    try:
        try:
            if settings.tag_objects:
                kept = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
                tags = [t for t in kept if t["Key"] not in OUR_TAGS]
                tags += [{"Key": k, "Value": v} for k, v in verdict_tags(result).items()]
                client.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tags})
            if quarantine:
                source = {"Bucket": bucket, "Key": key}
                extra = {"CopySourceIfMatch": f'"{ref.etag}"'} if ref.etag else {}
                client.copy_object(
                    Bucket=bucket, Key=quarantine_key(quarantine, key), CopySource=source, **extra
                )
        except (BotoCoreError, ClientError) as e:
            raise _s3_error(e, ref.uri) from e
    except StorageError as e:
        logger.warning("write-back to %s failed (its row is written): %s", ref.uri, e.reason)
