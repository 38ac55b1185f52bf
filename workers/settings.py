"""The one settings object. Every value comes from the environment (prefix ``DEEPSCAN_``) or a ``.env``
file, so a container is configured without code; ``pipeline/`` never reads it, values are passed in.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.provenance import VerdictPolicy

DEFAULT_PACK_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "weights" / "default"
# Measured with benchmarks/video_segments.py (bundled pack deepscan-default 0.1.0, 2 busy CPU cores, a 32 s
# 640x640 video): scoring 1 s per task costs 0.34 s per video second, 2 s 0.25, 4 s 0.21, 8 s 0.19, 16 s
# 0.19 and the whole video 0.18: an ffmpeg start, a seek and a small model batch dominate short segments.
# 8 s is within 3 % of the best and still splits a 10-minute video into 75 tasks to spread over workers.
DEFAULT_VIDEO_SEGMENT_S = 8
WEEK_S = 7 * 24 * 3600
# LIME samples per face for the web app and reports: pipeline.explain.LIME_SAMPLES, measured there.
DEFAULT_EXPLAIN_SAMPLES = 64


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
    # text: one human-readable line per record; json: one JSON object per line, with scan and object ids.
    log_format: Literal["text", "json"] = "text"
    score_soundtrack: bool = True
    # How faces are searched: thorough (the frame's whole Haar pyramid) or fast (windows past 48 px on the
    # frame halved: about 40 % less detection time, small faces missed a little more often; README, "Sizing").
    face_search: Literal["thorough", "fast"] = "thorough"
    # Cross-task batching (a worker with --pool threads): the faces and audio windows of tasks arriving
    # within this many milliseconds share one forward pass per member. 0: every task scores its own.
    batch_wait_ms: int = Field(default=0, ge=0, le=10_000)
    # A pack in S3 (s3://bucket/prefix, as `deepscan models push` leaves it): pulled once per machine into
    # models_cache_dir, every member checked against its sha256, and used instead of models_dir.
    models_uri: str | None = None
    models_cache_dir: Path = Path("~/.cache/deepscan/models")
    # Write-back (opt-in): tag every scanned S3 object with its verdict, copy the fakes below this prefix
    # of their bucket (which scans then never list).
    tag_objects: bool = False
    quarantine_prefix: str | None = None
    # A worker serves Prometheus metrics on this port (all interfaces); unset: none.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Bearer token of the API; required when serving beyond loopback. Unset: the API is open (loopback).
    api_token: SecretStr | None = None
    # What provenance may do to a verdict (README, "Provenance"): off, report, verified_ai, verified.
    provenance_policy: VerdictPolicy = VerdictPolicy.VERIFIED_AI
    # PEM file of the C2PA trust anchors: a manifest is verified only when its signer's chain ends at one
    # of them. Unset: none is trusted, so provenance never decides a verdict.
    c2pa_trust_anchors: FilePath | None = None

    @field_validator("c2pa_trust_anchors", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    # -- deepscan serve (workers/web) --
    # The largest request body POST /api/v1/jobs accepts (all its files together); more is a 413.
    upload_max_mb: float = Field(default=512, gt=0)
    # LIME perturbed samples per explained face (web app, reports): time grows linearly with it.
    explain_samples: int = Field(default=DEFAULT_EXPLAIN_SAMPLES, ge=16)
    # Analyses the embedded pool of deepscan serve runs at once (threads sharing one loaded pack).
    web_workers: int = Field(default=1, ge=1)
    # Jobs waiting for the pool beyond those running; an upload that would exceed it gets a 503.
    web_queue_max: int = Field(default=32, ge=1)
    # At shutdown, how long deepscan serve waits for the analyses it is running; an upload still waiting,
    # or one whose analysis outlasts this, gets an error row saying the server stopped (upload it again).
    shutdown_grace_s: float = Field(default=30, ge=0)
    # With a broker, where deepscan serve puts uploads for the workers to analyse: s3://bucket/prefix/, or
    # a folder on a disk the server and the workers share. Each is removed once its row is in. Unset: the
    # server analyses uploads itself, broker or not.
    upload_uri: str | None = None

    @field_validator("upload_uri", mode="before")
    @classmethod
    def _upload_location(cls, value: object) -> object:
        if value in (None, ""):
            return None
        text = str(value)
        if text.startswith("s3://"):
            return text.rstrip("/") + "/"
        path = Path(text.removeprefix("file://"))
        if not path.is_absolute():
            raise ValueError(
                f"DEEPSCAN_UPLOAD_URI must be s3://bucket/prefix/ or an absolute folder: {text!r}"
            )
        return path.as_uri().rstrip("/") + "/"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
