"""The one settings object. Every value comes from the environment (prefix ``DEEPSCAN_``) or a ``.env``
file, so a container is configured without code; ``pipeline/`` never reads it, values are passed in.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PACK_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "weights" / "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSCAN_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///deepscan.db"
    models_dir: Path = DEFAULT_PACK_DIR
    # No broker: everything runs in-process (the embedded default). Set it to distribute over Celery.
    broker_url: str | None = None
    result_backend: str | None = None
    s3_endpoint_url: str | None = None
    visibility_timeout_s: int = 3600
    log_level: str = "WARNING"
    score_soundtrack: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
