"""The embedded job pool of ``deepscan serve``: uploads analysed in this process, a bounded few at a time.

The pack is loaded once per process (``resources.shared_pack``), in the pool's first thread, as the server starts;
each pool thread gets an ``Analyzer`` of its own (its own face detector) over that one pack. At most ``workers`` analyses
run at once and at most ``queue_max`` more wait: an upload beyond that is refused (``PoolBusyError``),
not queued without end. Each upload is deleted as soon as it has been analysed; what an explanation
needs later (the crop of the face that drove the verdict, at most 256 px) is kept with the job. Each
result is also upserted into the results table (uri ``upload://JOB/NAME``), under one scan of kind
``upload`` per request, so ``deepscan results`` and ``deepscan report`` see it.

Jobs live in memory: the newest ``JOBS_KEPT`` finished ones are kept, older ones are forgotten (their
rows stay in the database, where ``GET /api/v1/jobs/{id}`` then points).

With a broker and an upload location (``WorkerHandoff``), the workers analyse the uploads instead: each
is stored where they can read it, queued as an ``analyze_object`` task of the request's scan, and its
result is the row a worker writes, read back from the database by one collector thread. The server still
loads the pack, for the explanations it computes on request.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ScanKind
from db.session import session_scope
from pipeline.analyze import Analyzer, MediaResult
from pipeline.errors import DeepscanError, ResultStatus
from pipeline.faces import DetectorOptions, FaceDetector, FaceVerifier
from pipeline.media import sha256_file
from pipeline.pack import Manifest, ModelPack, read_manifest
from pipeline.provenance import ProvenanceOptions
from workers import rows
from workers.resources import shared_pack
from workers.storage import ObjectRef, local_path, remove_stored, store_file
from workers.web.explanations import ExplainTarget, driving_face, frame_at
from workers.web.figures import explanation_png, timeline_png

logger = logging.getLogger(__name__)

MEDIA_RESULT_FIELDS = tuple(f.name for f in fields(MediaResult))  # a job's result: what detect prints
JOBS_KEPT = 256  # finished jobs remembered; each holds its result and at most a 256 px crop
SHUTDOWN_BEFORE_START = "deepscan serve stopped before analysing this upload: upload it again"
SHUTDOWN_WHILE_RUNNING = (
    "deepscan serve stopped while analysing this upload (it had {grace_s:g} s to finish): upload it again"
)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # analysed: the result says whether there is a verdict (status ok) or why not
    FAILED = "failed"  # the server failed (a bug, the pool shut down), not the media


class ExplainPolicy(str, Enum):
    """When a job's explanation is computed without being asked for (it always can be, on request)."""

    FLAGGED = "flagged"  # for results labelled fake
    ALWAYS = "always"
    NEVER = "never"


class ExplanationStatus(str, Enum):
    NONE = "none"  # nothing to explain: no face, or not an image or video
    AVAILABLE = "available"  # computed on request (GET its URL)
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


class PoolBusyError(DeepscanError):
    """The pool has as many jobs waiting as it may hold: the upload is refused, try again later."""

    status = ResultStatus.BUSY


@dataclass
class Job:
    id: str
    filename: str
    size_bytes: int
    explain: ExplainPolicy
    scan_id: int | None = None
    upload: Path | None = None
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    target: ExplainTarget | None = None
    crop: np.ndarray | None = None  # uint8 RGB (S, S, 3): the face of ``target``, for LIME
    explanation: Future[bytes] | None = None
    explanation_info: dict[str, Any] = field(default_factory=dict)
    timeline: bytes | None = None
    analysis: Future[None] | None = field(default=None, repr=False)  # the pool's handle on _run
    claimed: bool = False  # the row is being written: by the analysis, or by close() giving up on it

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.FAILED)

    @property
    def uri(self) -> str:
        return f"upload://{self.id}/{quote(self.filename)}"

    def explanation_status(self) -> ExplanationStatus:
        if self.crop is None:
            return ExplanationStatus.NONE
        if self.explanation is None:
            return ExplanationStatus.AVAILABLE
        if not self.explanation.done():
            return ExplanationStatus.PENDING
        return ExplanationStatus.FAILED if self.explanation.exception() else ExplanationStatus.READY

    def timings(self) -> dict[str, float | None]:
        """Seconds waiting for the pool, analysing, and from upload to verdict."""

        def between(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 3)

        return {
            "queued_s": between(self.created_at, self.started_at),
            "analysis_s": between(self.started_at, self.finished_at),
            "total_s": between(self.created_at, self.finished_at),
        }


@dataclass(frozen=True)
class Upload:
    """A file received and stored under a generated name, waiting for a job."""

    filename: str  # as the client named it (its last path component only)
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class WorkerHandoff:
    """Where uploads go for the distributed workers (``DEEPSCAN_UPLOAD_URI``), and how long a job waits for
    its row before it fails (a worker's hard time limit and a redelivery, at most)."""

    upload_uri: str  # s3://bucket/prefix/ or file:///folder/, with the trailing slash
    endpoint_url: str | None
    timeout_s: float
    poll_s: float = 0.5

    def send(self, job: Job) -> ObjectRef:
        """Store the job's upload under ``upload_uri`` and queue its analysis in the job's scan."""
        from workers.tasks import queue_object

        assert job.upload is not None
        ref = store_file(job.upload, self.location(job), endpoint_url=self.endpoint_url)
        queue_object(ref, job.scan_id)
        return ref

    def location(self, job: Job) -> str:
        """Where the job's upload is stored: ``UPLOAD_URI/JOB/NAME``, the name one path component.

        An S3 URI carries its key as is; a file URI is quoted (``Path.as_uri``), since it is unquoted
        back to a path: a client's name of ``..%2f..%2fx`` stays that name, it does not climb out.
        """
        if self.upload_uri.startswith("s3://"):
            return f"{self.upload_uri}{job.id}/{job.filename}"
        return (local_path(self.upload_uri) / job.id / job.filename).as_uri()


class JobPool:
    """Analyses uploads on a bounded pool of threads (or hands them to the workers); see the module
    docstring."""

    def __init__(
        self,
        models_dir: Path,
        *,
        workers: int = 1,
        queue_max: int = 32,
        explain_samples: int = 128,
        score_soundtrack: bool = True,
        provenance: ProvenanceOptions | None = None,
        detector: DetectorOptions | None = None,
        sessions: sessionmaker[Session] | None = None,
        jobs_kept: int = JOBS_KEPT,
        handoff: WorkerHandoff | None = None,
    ) -> None:
        if handoff is not None and sessions is None:
            raise ValueError("jobs handed to the workers are read back from the database: sessions needed")
        self.models_dir = models_dir
        self.manifest = read_manifest(models_dir)
        self.workers, self.queue_max, self.jobs_kept = workers, queue_max, jobs_kept
        self.explain_samples = explain_samples
        self.score_soundtrack = score_soundtrack
        self.provenance = provenance or ProvenanceOptions()
        self.detector = detector or DetectorOptions()
        self.sessions = sessions
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deepscan-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pack: Future[ModelPack] = self._executor.submit(self._load)
        self.handoff = handoff
        self._sent: dict[str, tuple[Job, ObjectRef, float]] = {}  # job id -> (job, stored ref, when sent)
        self._closing = threading.Event()
        self._collector: threading.Thread | None = None

    # -- the pack -----------------------------------------------------------------------------------------

    def _load(self) -> ModelPack:
        started = time.perf_counter()
        pack = shared_pack(self.models_dir)
        # Traced here, not on the first upload: benchmarks/web_latency.py measured a first explanation of
        # 53 s against 20-22 s for the next ones when its batch of 64 was traced on first use.
        pack.warm_up()
        FaceVerifier().warm_up()  # shared by the jobs' detectors
        logger.info("model pack %s ready in %.1f s", pack.manifest.label, time.perf_counter() - started)
        return pack

    @property
    def ready(self) -> bool:
        """Whether the pack is loaded (jobs submitted before then wait for it)."""
        return self._pack.done() and self._pack.exception() is None

    def wait_ready(self, timeout_s: float | None = None) -> ModelPack:
        return self._pack.result(timeout=timeout_s)

    def _analyzer(self) -> Analyzer:
        analyzer: Analyzer | None = getattr(self._local, "analyzer", None)
        if analyzer is None:
            analyzer = Analyzer(
                self._pack.result(),
                FaceDetector(self.detector),
                score_soundtrack=self.score_soundtrack,
                provenance=self.provenance,
            )
            self._local.analyzer = analyzer
        return analyzer

    @property
    def image_threshold(self) -> float:
        return self.manifest.threshold("image")

    # -- jobs ---------------------------------------------------------------------------------------------

    def active(self) -> int:
        """Jobs queued or running."""
        with self._lock:  # uploads add and forget jobs on other threads
            return self._active()

    def _active(self) -> int:
        """``active``, for a caller that holds the lock."""
        return sum(not job.finished for job in self._jobs.values())

    def submit(self, uploads: list[Upload], *, explain: ExplainPolicy = ExplainPolicy.FLAGGED) -> list[Job]:
        """Queue one job per upload, all or none: raises ``PoolBusyError`` when they would not fit."""
        with self._lock:
            if self._closing.is_set():
                raise PoolBusyError("deepscan serve is shutting down: try again later")
            active = self._active()
            if len(uploads) > self.workers + self.queue_max - active:
                raise PoolBusyError(
                    f"{active} jobs are queued or running and at most {self.workers + self.queue_max} "
                    f"may be: {len(uploads)} more do not fit, try again later"
                )
            scan_id = self._create_scan(len(uploads))
            jobs = [
                Job(uuid.uuid4().hex, u.filename, u.size_bytes, explain, scan_id=scan_id, upload=u.path)
                for u in uploads
            ]
            for job in jobs:
                self._jobs[job.id] = job
            self._forget_old()
        for job in jobs:
            job.analysis = self._executor.submit(self._run, job)
        return jobs

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def _forget_old(self) -> None:
        excess = len(self._jobs) - self.jobs_kept
        for job_id in [j.id for j in self._jobs.values() if j.finished][: max(0, excess)]:
            del self._jobs[job_id]

    def _run(self, job: Job) -> None:
        job.status, job.started_at = JobStatus.RUNNING, time.time()
        assert job.upload is not None
        if self.handoff is not None:
            if self._claim(job):  # from here the row is the workers' to write, or ours if the send fails
                self._hand_off(job, self.handoff)
            return
        status, result, error = JobStatus.FAILED, None, None
        owns_row = False
        try:
            analyzer = self._analyzer()
            analysed = analyzer.analyze_file(job.upload)
            analysed.path = job.filename
            as_dict = analysed.to_dict()
            self._keep_explain_target(job, analyzer, as_dict)
            # hashed before the claim: once close() has its answer the upload may be gone
            content_sha256 = sha256_file(job.upload) if self.sessions is not None else None
            owns_row = self._claim(job)
            if owns_row:
                self._record(job, analysed, analyzer.pack.manifest, self._ref(job, content_sha256))
                status, result = JobStatus.DONE, as_dict
        except Exception as e:  # analyze_file records bad media itself: this is a failure of ours
            owns_row = owns_row or self._claim(job)
            if owns_row:
                logger.exception("job %s (%s) failed", job.id, job.filename)
                error = f"{type(e).__name__}: {e}"
                self._record_failure(job, error)
        if not owns_row:  # close() stopped waiting and wrote the job's row: what this found is dropped
            logger.info("job %s (%s) ended after the server stopped waiting for it", job.id, job.filename)
            return
        self._finish(job, status, result, error)

    def _claim(self, job: Job) -> bool:
        """Whether the caller is the one to write ``job``'s row: the first to ask."""
        with self._lock:
            first, job.claimed = not job.claimed, True
            return first

    def _finish(self, job: Job, status: JobStatus, result: dict[str, Any] | None, error: str | None) -> None:
        """Remove the upload, then publish the outcome; explain it when the job's policy says so."""
        if job.upload is not None:
            job.upload.unlink(missing_ok=True)
            job.upload = None
        # the status goes last: a client that sees the job finished sees its result and timings too
        job.result, job.error, job.finished_at = result, error, time.time()
        job.status = status
        if (
            job.crop is not None
            and not self._closing.is_set()
            and (
                job.explain is ExplainPolicy.ALWAYS
                or (job.explain is ExplainPolicy.FLAGGED and (result or {}).get("label") == "fake")
            )
        ):
            self.request_explanation(job)

    # -- jobs the workers analyse ---------------------------------------------------------------------------

    def _hand_off(self, job: Job, handoff: WorkerHandoff) -> None:
        try:
            ref = handoff.send(job)
        except Exception as e:  # the store or the broker is down: the server's failure, not the media's
            logger.exception("job %s (%s) could not be handed to the workers", job.id, job.filename)
            error = f"{type(e).__name__}: {e}"
            self._record_failure(job, error)
            self._finish(job, JobStatus.FAILED, None, error)
            return
        with self._lock:
            self._sent[job.id] = (job, ref, time.monotonic())
            if self._collector is None:
                self._collector = threading.Thread(target=self._collect, name="deepscan-collect", daemon=True)
                self._collector.start()

    def _collect(self) -> None:
        """Read back the rows of the jobs the workers have, until the pool closes."""
        assert self.handoff is not None and self.sessions is not None
        while not self._closing.wait(self.handoff.poll_s):
            with self._lock:
                sent = list(self._sent.values())
            for job, ref, since in sent:
                try:
                    self._collect_one(job, ref, since, self.handoff, self.sessions)
                except Exception as e:
                    logger.exception("job %s (%s): reading its row failed", job.id, job.filename)
                    self._done_with(job, ref, JobStatus.FAILED, None, f"{type(e).__name__}: {e}")

    def _collect_one(
        self, job: Job, ref: ObjectRef, since: float, handoff: WorkerHandoff, sessions: sessionmaker[Session]
    ) -> None:
        with session_scope(sessions) as session:
            row = queries.find_result(session, uri=ref.result_uri)
            stored = queries.result_to_dict(row) if row is not None and row.scan_id == job.scan_id else None
        if stored is None:
            if time.monotonic() - since > handoff.timeout_s:
                why = f"no result from the workers within {handoff.timeout_s:g} s"
                self._done_with(job, ref, JobStatus.FAILED, None, why)
            return
        result = {name: stored[name] for name in MEDIA_RESULT_FIELDS}  # the JSON shape of detect
        result["path"] = job.filename
        self._keep_explain_target(job, self._analyzer(), result)
        self._done_with(job, ref, JobStatus.DONE, result, None)

    def _done_with(
        self, job: Job, ref: ObjectRef, status: JobStatus, result: dict[str, Any] | None, error: str | None
    ) -> None:
        assert self.handoff is not None
        with self._lock:
            self._sent.pop(job.id, None)
        if status is JobStatus.FAILED:  # no row from the workers (yet): this one says why; theirs replaces it
            self._record_failure(job, error or "no result from the workers", ref)
        try:
            remove_stored(ref, endpoint_url=self.handoff.endpoint_url)
        except DeepscanError as e:
            logger.warning("job %s: the stored upload %s stays: %s", job.id, ref.uri, e.reason)
        self._finish(job, status, result, error)

    # -- explanations ---------------------------------------------------------------------------------------

    def _keep_explain_target(self, job: Job, analyzer: Analyzer, result: dict[str, Any]) -> None:
        """Cut the face that drove the verdict out of the upload while it is still there."""
        target = driving_face(result) if result["status"] == "ok" else None
        if target is None or job.upload is None:
            return
        try:
            frame = frame_at(job.upload, result["media_type"], target.t_s)
        except DeepscanError as e:
            logger.warning("no frame to explain for job %s: %s", job.id, e.reason)
            return
        job.target, job.crop = target, analyzer.explanation_crop(frame, target.box)

    def _create_scan(self, total: int) -> int | None:
        if self.sessions is None:
            return None
        with session_scope(self.sessions) as session:
            return queries.create_scan(
                session,
                uri="upload",
                kind=ScanKind.UPLOAD,
                model_name=self.manifest.name,
                model_version=self.manifest.version,
                total=total,
            ).id

    def _ref(self, job: Job, content_sha256: str | None = None) -> ObjectRef:
        """The key of the job's row when this server analyses the upload: ``upload://JOB/NAME``."""
        return ObjectRef(uri=job.uri, sha256=content_sha256, size_bytes=job.size_bytes)

    def _record(self, job: Job, result: MediaResult, manifest: Manifest, ref: ObjectRef) -> None:
        """Upsert the job's row and complete its scan when it was the request's last file."""
        if self.sessions is None:
            return
        rows.write_row(
            ref,
            job.scan_id,
            result,
            content_sha256=ref.sha256,
            sessions=self.sessions,
            model=(manifest.name, manifest.version),
        )

    def _record_failure(self, job: Job, reason: str, ref: ObjectRef | None = None) -> None:
        """The row of a job the server failed (status ``error``, ``reason``), under ``ref`` (default: the
        job's own key; a job handed to the workers fails under the key of its stored copy, which a late
        row of theirs replaces): every upload keeps one row."""
        failed = MediaResult(path=job.filename).fail(DeepscanError(reason))
        try:
            self._record(job, failed, self.manifest, ref or self._ref(job))
        except Exception:  # the database itself failed: the job still finishes, its error says why
            logger.exception("job %s (%s): its error row could not be written", job.id, job.filename)

    # -- figures ------------------------------------------------------------------------------------------

    def request_explanation(self, job: Job) -> Future[bytes]:
        """The PNG of the job's explanation, computed on the pool once (later calls share it).

        Raises ``LookupError`` when the job has nothing to explain.
        """
        with self._lock:
            if job.crop is None:
                raise LookupError("nothing to explain: the job's result shows no face")
            if job.explanation is None:
                job.explanation = self._executor.submit(self._explain, job)
            return job.explanation

    def _explain(self, job: Job) -> bytes:
        assert job.crop is not None and job.target is not None
        analyzer = self._analyzer()
        started = time.perf_counter()
        explanation = analyzer.explain_crop(job.crop, num_samples=self.explain_samples)
        elapsed_s = time.perf_counter() - started
        where = "" if job.target.t_s is None else f"second {job.target.t_s:.0f}: "
        threshold = analyzer.image_threshold
        label = "fake" if explanation.fake_probability >= threshold else "real"
        png = explanation_png(
            explanation,
            threshold=threshold,
            title=f"{where}P(fake) {explanation.fake_probability:.3f}: {label} (threshold {threshold:.3f})",
        )
        for_fake, for_real = explanation.shown_weights()
        job.explanation_info = {
            "t_s": job.target.t_s,
            "fake_probability": round(explanation.fake_probability, 6),
            "towards_fake": [round(w, 5) for w in for_fake],
            "towards_real": [round(w, 5) for w in for_real],
            "fit_r2": round(explanation.fit_r2, 4),
            "num_samples": explanation.num_samples,
            "elapsed_s": round(elapsed_s, 2),
        }
        logger.info("explained job %s in %.1f s", job.id, elapsed_s)
        return png

    def timeline_png(self, job: Job) -> bytes:
        """The P(fake)-per-second plot of a video job (rendered once). Raises ``LookupError`` otherwise."""
        result = job.result or {}
        if not result.get("timeline"):
            raise LookupError("no timeline: the job is not a decoded video")
        if job.timeline is None:
            job.timeline = timeline_png(result, threshold=self.image_threshold)
        return job.timeline

    def close(self, grace_s: float = 0.0) -> None:
        """Stop taking work: uploads are refused, jobs still waiting are not started, and the analyses
        running get up to ``grace_s`` to finish. A job left unfinished either way fails, with a row that says
        the server stopped (upload it again): every upload keeps one row. Jobs handed to the workers are
        theirs to finish. An analysis that outlasts the grace period still runs until it ends (Python waits
        for it at exit), then drops what it found. Uploads left on disk are the caller's to remove.
        """
        self._closing.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            here = [job for job in self._jobs.values() if not job.finished and not job.claimed]
        # a cancelled future never counts as done for wait(): only the analyses started are waited for
        wait([job.analysis for job in here if job.analysis and not job.analysis.cancelled()], timeout=grace_s)
        for job in here:
            running = job.status is JobStatus.RUNNING
            if not self._claim(job):
                continue  # finished in time, or handed to the workers
            reason = SHUTDOWN_WHILE_RUNNING.format(grace_s=grace_s) if running else SHUTDOWN_BEFORE_START
            logger.warning("job %s (%s): %s", job.id, job.filename, reason)
            self._record_failure(job, reason)
            self._finish(job, JobStatus.FAILED, None, reason)
