"""The Celery tasks of the distributed scanner. Each is thin: parse the keys, fetch, call one pipeline
entry point, write a row.

Every task carries keys (an ``ObjectRef`` as a dict, the scan id), never media bytes, and is safe to run
twice: rows are upserted on the object's URI. The flow of one object::

    analyze_object (gpu) -- image, audio, anything unreadable: analysed and written here
      |- video   -> split_video (light) -> chord([score_segment (gpu)..., score_soundtrack (gpu)],
      |                                          finish_video (light), error callback video_failed)
      '- archive -> expand_archive (light) -> analyze_object for each member

Beat's scheduled scans run in ``workers.scheduled``: these tasks never import the producer that queues them.

Transient errors (S3 unavailable, database or broker connection lost) retry with exponential backoff.
An object task that fails for good still writes the object's row, with status 'error' and the reason,
so a scan never waits for an object that will not come.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from dataclasses import asdict
from typing import Any

from celery import Task, chord
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError

from pipeline.analyze import AudioVerdict, MediaResult, TimelineSecond
from pipeline.errors import DeepscanError, ResultStatus, UnsupportedMediaError
from pipeline.media import MediaType, VideoInfo, detect_media_type, probe_video, sha256_file
from pipeline.provenance import Provenance
from workers import resources, rows
from workers.archives import list_members
from workers.celery_app import DELIVERY_COUNT_RETRY_POLICY, app, retry_delay_cap_s
from workers.errors import AnalysisTimeoutError, PoisonMessageError, StorageUnavailableError, UsageError
from workers.settings import get_settings
from workers.storage import ObjectRef

logger = logging.getLogger(__name__)

MAX_REASONS_SHOWN = 3  # members left out of an archive, quoted in its row's reason
TRANSIENT_ERRORS = (StorageUnavailableError, OperationalError, InterfaceError, BrokerError)
RETRYING: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,  # seconds before the first retry, doubling each time
    "retry_backoff_max": retry_delay_cap_s(get_settings().visibility_timeout_s),
    # RetryingTask spreads the delays itself, over [half, all] of each one: Celery's full jitter draws
    # from [0, all], and six retries could then be spent in seconds on a brief S3 or database outage.
    "retry_jitter": False,
    # 2+4+...+256 s capped at 600: at least about four minutes of outage (half of 510 s) is ridden out
    # with the default visibility timeout, about 20 s with a visibility timeout of 20 s (delays of 5 s)
    "max_retries": 8,
}
RETRY_JITTER_FLOOR = 0.5  # each retry waits between this fraction of its backoff and all of it


# In the result backend's Redis: a set of one token per delivery ("deepscan-deliveries-", the counter
# that came before it, is another type: a worker of the old release and one of this never share a key;
# while both run, a task's deliveries are counted under both, so it may go round up to twice the limit).
DELIVERIES_KEY = "deepscan-delivered-{task_id}-{retries}"


def count_delivery(request: Any, backend: Any = None) -> int | None:
    """How many times this try of the task (its id and retry number) has been handed out, this one
    included; None where nothing redelivers (eager mode) or the backend (``app.backend`` by default) is not
    Redis.

    The count survives the death of the process that runs the task, which is the point: Celery hands a
    task whose process died straight back to the queue (``task_reject_on_worker_lost``), and a message
    that kills its process every time would otherwise go round for ever. Redis away (a restart) is waited
    for (``DELIVERY_COUNT_RETRY_POLICY``), as the result store waits: the count is taken before the task
    runs, where no autoretry reaches, and a chord part failed here would fail its whole video.
    """
    if request.is_eager or request.id is None:
        return None
    backend = backend or app.backend
    client = getattr(backend, "client", None)  # a redis.Redis for the Redis backend
    if client is None:
        return None
    key = DELIVERIES_KEY.format(task_id=request.id, retries=request.retries)
    # Each delivery adds a token of its own to a set, so that a retry after Redis applied the write but
    # before its reply came adds nothing (an increment would count this delivery twice).
    delivery = uuid.uuid4().hex

    def count() -> int:
        with client.pipeline() as pipe:  # MULTI/EXEC: the three at once
            pipe.sadd(key, delivery)
            pipe.expire(key, get_settings().result_expires_s)
            pipe.scard(key)
            *_, count = pipe.execute()
        return int(count)

    return int(backend.ensure(count, (), **DELIVERY_COUNT_RETRY_POLICY))


class RetryingTask(Task):
    """A task whose automatic retries wait a jittered backoff that never drops below half of itself, and
    which is given up (``PoisonMessageError``) once handed out more than ``max_deliveries`` times."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        limit = get_settings().max_deliveries
        count = count_delivery(self.request)
        if count is not None and count > limit:
            # raised before the task runs, so no autoretry: on_failure (objects) or the chord's error
            # callback (video parts) writes the row
            raise PoisonMessageError(
                f"given up after {limit} deliver{'y' if limit == 1 else 'ies'}: "
                "the worker process running it died each time"
            )
        return super().__call__(*args, **kwargs)

    def retry(self, *args: Any, countdown: float | None = None, **options: Any) -> Any:
        if countdown is not None:
            countdown = countdown * random.uniform(RETRY_JITTER_FLOOR, 1.0)
        return super().retry(*args, countdown=countdown, **options)


def timed_out(exc: BaseException, what: str) -> AnalysisTimeoutError | None:
    """The row's error for a task time limit: the soft one raises inside the task, the hard one kills its
    process (Celery 5.7 then calls ``on_failure`` and the chord's error callback in the worker's main
    process). None for any other exception."""
    soft_s, hard_s = app.conf.task_soft_time_limit, app.conf.task_time_limit  # as the worker enforces them
    if isinstance(exc, SoftTimeLimitExceeded):
        error = AnalysisTimeoutError(f"{what} did not finish within the soft time limit of {soft_s:g} s")
    elif isinstance(exc, TimeLimitExceeded):
        error = AnalysisTimeoutError(f"{what} ran past the hard time limit of {hard_s:g} s and was stopped")
    else:
        return None
    error.__cause__ = exc
    return error


class ObjectTask(RetryingTask):
    """A task that owns an object's row: when it fails for good, the object gets an error row."""

    media_type = "unknown"

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        try:
            ref = ObjectRef.from_dict(kwargs.get("ref"))  # type: ignore[arg-type]
        except UsageError:  # a message no producer of ours sent: there is no row to name
            logger.error("refused task %s: %s", task_id, exc)
            return
        error = timed_out(exc, "the analysis") or exc
        try:
            rows.write_failure(ref, kwargs.get("scan_id"), error, media_type=self.media_type)
        except Exception:  # the database is down too: the waiting producer reports the scan unfinished
            logger.exception("could not record the failure of %s", ref.result_uri)


def object_task(name: str, *, media_type: str = ObjectTask.media_type) -> Any:
    """Decorator for a task that owns an object's row: ``ObjectTask`` base, bound, retried on transient
    errors, result ignored (the row is the result)."""
    return app.task(
        name=name, base=ObjectTask, media_type=media_type, bind=True, ignore_result=True, **RETRYING
    )


def _sniff(path: Any) -> MediaType:
    try:
        return detect_media_type(path)
    except DeepscanError:
        return "unknown"  # analyze_file finds the same problem and says why


@object_task("deepscan.analyze_object")
def analyze_object(self: Task, *, ref: dict[str, Any], scan_id: int | None) -> None:
    """Analyse one object or archive member: images and audio here, videos and archives handed on."""
    obj = ObjectRef.from_dict(ref)
    path = resources.local_copies().path(obj)
    media_type = _sniff(path)
    if media_type == "video":
        split_video.apply_async(kwargs={"ref": ref, "scan_id": scan_id})
    elif media_type == "archive" and obj.member is None:
        expand_archive.apply_async(kwargs={"ref": ref, "scan_id": scan_id})
    else:
        # The digest of the content before the analysis reads it. A local file is read in place, and may
        # still be being written: a digest taken after the analysis would pin the verdict on a partial file
        # to the finished one, which the next scan then skips as already analysed. Taken first, it names
        # content no newer than what was analysed, so a file that changed meanwhile is analysed again.
        content_sha256 = sha256_file(path)
        if media_type == "archive":
            result = MediaResult(path=obj.result_uri, media_type="archive")
            result.fail(UnsupportedMediaError("an archive inside an archive is not expanded"))
        else:
            result = resources.analyzer().analyze_file(path)
            result.path = obj.result_uri  # not the worker's local copy
        rows.write_row(obj, scan_id, result, content_sha256=content_sha256)


def queue_object(ref: ObjectRef, scan_id: int | None) -> None:
    """Hand one object of a scan to the workers (without a broker: analyse it here, now). Every object
    enters this way: listed by the producer, expanded from an archive, or uploaded to deepscan serve."""
    analyze_object.apply_async(kwargs={"ref": ref.to_dict(), "scan_id": scan_id})


@object_task("deepscan.split_video", media_type="video")
def split_video(self: Task, *, ref: dict[str, Any], scan_id: int | None) -> None:
    """Probe a video, read its provenance, and fan it out: one chord part per segment (and the
    soundtrack), then the verdict."""
    obj, started_s = ObjectRef.from_dict(ref), time.time()
    path = resources.local_copies().path(obj)
    sha256 = sha256_file(path)  # before anything reads it: see ``analyze_object``
    try:
        info = probe_video(path)
    except DeepscanError as e:
        rows.write_failure(obj, scan_id, e, media_type="video")
        return
    provenance = resources.verdict_analyzer().read_provenance(path, "video")
    segment_s = get_settings().video_segment_s
    video_chord(
        obj,
        scan_id,
        info,
        segment_s=segment_s,
        started_s=started_s,
        sha256=sha256,
        provenance=provenance,
    ).delay()


def video_chord(
    obj: ObjectRef,
    scan_id: int | None,
    info: VideoInfo,
    *,
    segment_s: int,
    started_s: float,
    sha256: str,
    provenance: Provenance | None = None,
) -> chord:
    """The chord of one video: ``ceil(duration / segment_s)`` segment parts (plus the soundtrack) whose
    results ``finish_video`` aggregates with the video's provenance (a few findings, not media);
    ``video_failed`` writes an error row if a part fails for good."""
    ref, info_dict = obj.to_dict(), asdict(info)
    header = [
        score_segment.s(ref=ref, info=info_dict, start_s=float(start), duration_s=float(segment_s))
        for start in range(0, math.ceil(info.duration_s), segment_s)
    ]
    if info.has_audio:
        header.append(score_soundtrack.s(ref=ref))
    body = finish_video.s(
        ref=ref,
        scan_id=scan_id,
        info=info_dict,
        started_s=started_s,
        content_sha256=sha256,
        provenance=provenance.to_dict() if provenance is not None else None,
    ).on_error(video_failed.s(ref=ref, scan_id=scan_id))
    return chord(header, body)


@app.task(name="deepscan.score_segment", base=RetryingTask, bind=True, ignore_result=False, **RETRYING)
def score_segment(
    self: Task, *, ref: dict[str, Any], info: dict[str, Any], start_s: float, duration_s: float
) -> dict[str, Any]:
    """Chord part: timeline entries of ``[start_s, start_s + duration_s)``, or why there are none.

    A segment that cannot be decoded is an entry, not an exception; an object that cannot be fetched
    (gone, overwritten) raises, and the chord's error callback writes the video's row.
    """
    path = resources.local_copies().path(ObjectRef.from_dict(ref))
    started = time.perf_counter()
    try:
        timeline = resources.analyzer().score_video_segment(path, VideoInfo(**info), start_s, duration_s)
    except DeepscanError as e:
        return {"start_s": start_s, "error": {"status": e.status, "reason": e.reason}}
    return {
        "start_s": start_s,
        "timeline": [entry.to_dict() for entry in timeline],
        "elapsed_s": round(time.perf_counter() - started, 4),
    }


@app.task(name="deepscan.score_soundtrack", base=RetryingTask, bind=True, ignore_result=False, **RETRYING)
def score_soundtrack(self: Task, *, ref: dict[str, Any]) -> dict[str, Any]:
    """Chord part: the audio verdict of a video's soundtrack (unscored, with the reason, when it cannot be)."""
    path = resources.local_copies().path(ObjectRef.from_dict(ref))
    started = time.perf_counter()
    audio = resources.analyzer().score_soundtrack_of(path)
    return {"audio": audio.to_dict() if audio else None, "elapsed_s": round(time.perf_counter() - started, 4)}


@object_task("deepscan.finish_video", media_type="video")
def finish_video(
    self: Task,
    parts: list[dict[str, Any]],
    *,
    ref: dict[str, Any],
    scan_id: int | None,
    info: dict[str, Any],
    started_s: float,
    content_sha256: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Chord body: the video's verdict from its parts, in any order and with any duplicates, and its
    provenance (idempotent)."""
    obj = ObjectRef.from_dict(ref)
    result = MediaResult(path=obj.result_uri, media_type="video")
    timeline = [TimelineSecond.from_dict(entry) for part in parts for entry in part.get("timeline", [])]
    audio = next((AudioVerdict.from_dict(part["audio"]) for part in parts if part.get("audio")), None)
    analyzer = resources.verdict_analyzer()
    try:
        analyzer.video_verdict(result, VideoInfo(**info), timeline, audio)
    except DeepscanError as e:
        result.fail(e)
    analyzer.apply_provenance(result, Provenance.from_dict(provenance) if provenance else None)
    result.details["parts"] = {
        "count": len(parts),
        "failed_segments": [part for part in parts if "error" in part],
        "compute_s": round(sum(part.get("elapsed_s", 0.0) for part in parts), 4),
    }
    result.elapsed_s = round(time.time() - started_s, 4)  # wall clock, probe to verdict
    rows.write_row(obj, scan_id, result, content_sha256=content_sha256)


@app.task(name="deepscan.video_failed", ignore_result=True)
def video_failed(
    request: Any, exc: BaseException, traceback: Any, *, ref: dict[str, Any], scan_id: int | None
) -> None:
    """Chord error callback: a part (or the aggregation) failed for good, so the video gets an error row.

    Celery calls it in the worker that saw the failure, with the failed request and the exception, and
    never again: when the row cannot be written now (the database is what failed), ``record_failure``
    writes it later, with retries, or the scan would wait for ever for a video whose chord is over.
    """
    error = timed_out(exc, "a part of the video analysis") or DeepscanError(
        f"a part of the video analysis failed: {exc}"
    )
    try:
        rows.write_failure(ObjectRef.from_dict(ref), scan_id, error, media_type="video")
    except Exception:
        logger.exception("could not record the failure of %s now: queued for later", ref.get("uri"))
        record_failure.apply_async(
            kwargs={
                "ref": ref,
                "scan_id": scan_id,
                "status": error.status.value,
                "reason": error.reason,
                "media_type": "video",
            }
        )


@app.task(name="deepscan.record_failure", base=RetryingTask, bind=True, ignore_result=True, **RETRYING)
def record_failure(
    self: Task, *, ref: dict[str, Any], scan_id: int | None, status: str, reason: str, media_type: str
) -> None:
    """The error row of an object whose analysis is over, written with retries (see ``video_failed``)."""
    error = DeepscanError(reason)
    error.status = ResultStatus(status)
    rows.write_failure(ObjectRef.from_dict(ref), scan_id, error, media_type=media_type)


@object_task("deepscan.expand_archive", media_type="archive")
def expand_archive(self: Task, *, ref: dict[str, Any], scan_id: int | None) -> None:
    """List an archive's members (under limits), give the archive its row, queue one task per member."""
    obj = ObjectRef.from_dict(ref)
    path = resources.local_copies().path(obj)
    content_sha256 = sha256_file(path)  # before anything reads it: see ``analyze_object``
    try:
        listing = list_members(path)
        if not listing.members:
            left_out = "; ".join(f"{name!r}: {why}" for name, why in listing.rejected[:MAX_REASONS_SHOWN])
            raise UnsupportedMediaError(f"the archive holds nothing to analyse ({left_out or 'it is empty'})")
    except DeepscanError as e:
        rows.write_failure(obj, scan_id, e, media_type="archive")
        return
    members = [obj.for_member(m.name, m.size_bytes) for m in listing.members]
    rows.record_expansion(obj, scan_id, listing, content_sha256=content_sha256)
    for member in members:
        queue_object(member, scan_id)
