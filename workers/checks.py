"""Start-up checks and ``deepscan doctor``: what this machine has, before any object is touched.

A missing ``ffmpeg``/``ffprobe`` or a pack that will not load is a configuration error (exit 2, one
message) rather than a ``decode_error`` or ``model_error`` row for every file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import DeepscanError
from workers.errors import UsageError
from workers.settings import Settings

MEDIA_PROGRAMS = ("ffmpeg", "ffprobe")  # every video and most audio formats are read through them
APT_HINT = "apt-get install ffmpeg"
PROBE_TIMEOUT_S = 10.0


def require_media_programs() -> None:
    """UsageError unless ``ffmpeg`` and ``ffprobe`` are on the PATH."""
    missing = [name for name in MEDIA_PROGRAMS if shutil.which(name) is None]
    if missing:
        raise UsageError(
            f"{' and '.join(missing)} not found on the PATH: deepscan reads video and audio with them"
            f" (Debian/Ubuntu: {APT_HINT})"
        )


@dataclass(frozen=True)
class Check:
    """One line of ``deepscan doctor``: what was checked, whether it is fine, and what was found."""

    name: str
    ok: bool
    detail: str
    required: bool = True


def _program(name: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, False, f"not found on the PATH (Debian/Ubuntu: {APT_HINT})")
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        version = out.stdout.splitlines()[0] if out.stdout else "no version line"
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(name, False, f"{path} does not run: {e}")
    return Check(name, True, f"{path}: {version}")


def _pack(settings: Settings) -> Check:
    from pipeline.pack import ModelPack
    from workers.modelstore import pull_pack

    where = settings.models_uri or settings.models_dir
    try:
        directory = settings.models_dir
        if settings.models_uri:  # pulled into the cache, or found there
            directory = pull_pack(
                settings.models_uri,
                cache_dir=settings.models_cache_dir,
                endpoint_url=settings.s3_endpoint_url,
            )
        pack = ModelPack.load(directory)
    except DeepscanError as e:
        return Check("model pack", False, f"{where}: {e.reason}")
    members = ", ".join(m.name for m in pack.manifest.members)
    return Check("model pack", True, f"{pack.manifest.label} in {directory} ({members}; checksums ok)")


def _database(settings: Settings) -> Check:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from db.session import make_engine

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as e:
        first_line = str(e).splitlines()[0]
        if "alembic_version" in first_line:
            return Check(
                "database", True, f"{engine.url!r}: reachable, not migrated yet (every command migrates)"
            )
        return Check("database", False, f"{engine.url!r}: {first_line}")
    finally:
        engine.dispose()
    return Check("database", True, f"{engine.url!r}: schema revision {revision}")


def _broker(settings: Settings) -> Check:
    if not settings.broker_url:
        return Check("broker", True, "none configured: scans run in this process (embedded)", required=False)
    from workers.producer import check_broker

    try:
        check_broker()
    except DeepscanError as e:
        return Check("broker", False, e.reason)
    return Check("broker", True, f"{settings.broker_url}: reachable")


def _s3(settings: Settings) -> Check:
    if settings.s3_endpoint_url is None:
        return Check(
            "S3 endpoint", True, "none configured: s3:// URIs go to AWS (not checked)", required=False
        )
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(
        connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S, retries={"max_attempts": 1}
    )
    client = boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
    try:
        buckets = client.list_buckets().get("Buckets", [])
    except (BotoCoreError, ClientError) as e:
        return Check("S3 endpoint", False, f"{settings.s3_endpoint_url}: {e}")
    return Check(
        "S3 endpoint", True, f"{settings.s3_endpoint_url}: reachable, {len(buckets)} buckets visible"
    )


def doctor(settings: Settings) -> list[Check]:
    """Every check, in the order a scan needs them."""
    checks: list[Callable[[], Check]] = [
        lambda: _program("ffmpeg"),
        lambda: _program("ffprobe"),
        lambda: _pack(settings),
        lambda: _database(settings),
        lambda: _broker(settings),
        lambda: _s3(settings),
    ]
    return [check() for check in checks]
