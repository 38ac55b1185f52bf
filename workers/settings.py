"""The one settings object. Every value comes from the environment (prefix ``DEEPSCAN_``) or a ``.env``
file, so a container is configured without code; ``pipeline/`` never reads it, values are passed in.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PACK_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "weights" / "default"
# Measured with benchmarks/video_segments.py (bundled pack deepscan-default 0.1.0, 2 busy CPU cores, a 32 s
# 640x640 video): scoring 1 s per task costs 0.34 s per video second, 2 s 0.25, 4 s 0.21, 8 s 0.19, 16 s
# 0.19 and the whole video 0.18: an ffmpeg start, a seek and a small model batch dominate short segments.
# 8 s is within 3 % of the best and still splits a 10-minute video into 75 tasks to spread over workers.
DEFAULT_VIDEO_SEGMENT_S = 8
WEEK_S = 7 * 24 * 3600


class ScheduleSpec(BaseModel):
    """One entry of ``DEEPSCAN_SCHEDULES``: scan ``uri`` every ``every_s`` seconds or on a ``crontab``.

    ``crontab`` has the five classic fields, ``"minute hour day-of-month month day-of-week"``.
    """

    uri: str
    every_s: float | None = Field(default=None, gt=0)
    crontab: str | None = None

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        if (self.every_s is None) == (self.crontab is None):
            raise ValueError(f"schedule for {self.uri!r} needs exactly one of every_s and crontab")
        if self.crontab is not None and len(self.crontab.split()) != 5:
            raise ValueError(f"crontab {self.crontab!r} must have 5 fields: minute hour dom month dow")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSCAN_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///deepscan.db"
    models_dir: Path = DEFAULT_PACK_DIR
    # No broker: everything runs in-process (the embedded default). Set it to distribute over Celery.
    broker_url: str | None = None
    # Chords need a result backend; unset means the broker's Redis.
    result_backend: str | None = None
    s3_endpoint_url: str | None = None
    # Redis hands an unacknowledged task to another worker after this long; task time limits sit below it.
    visibility_timeout_s: int = Field(default=3600, ge=4)
    # How long task results (chord parts among them) live in the backend: the longest a video may wait.
    result_expires_s: int = Field(default=WEEK_S, ge=60)
    video_segment_s: int = Field(default=DEFAULT_VIDEO_SEGMENT_S, ge=1)
    # A task handed out this many times without finishing (its process died each time: a poison
    # message) is given up: the object gets an error row instead of crashing workers for ever.
    max_deliveries: int = Field(default=3, ge=1)
    # JSON list of ScheduleSpec, e.g. [{"uri": "s3://media/uploads/", "every_s": 3600}].
    schedules: list[ScheduleSpec] = Field(default_factory=list)
    log_level: str = "WARNING"
    score_soundtrack: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
