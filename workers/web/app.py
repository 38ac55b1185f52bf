"""The web app and REST API of ``deepscan serve`` (FastAPI).

``GET /`` is the upload page; ``/api/v1`` the API, documented at ``/docs``. Uploads become jobs of the
embedded pool (``workers.web.jobs``), one job per file; results, scans and their figures are read from the
results table. With ``DEEPSCAN_API_TOKEN`` set, every ``/api/v1`` route wants ``Authorization: Bearer
TOKEN``; the page, its assets, ``/docs``, ``/healthz`` and ``/metrics`` hold no data and stay open.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db import queries
from db.models import Result
from db.session import session_scope
from workers import metrics
from workers.celery_app import GPU_QUEUE, LIGHT_QUEUE
from workers.errors import ScanError, UsageError
from workers.resources import detector_options, open_sessions, provenance_options
from workers.settings import Settings
from workers.web.explanations import seconds_of
from workers.web.figures import timeline_png
from workers.web.jobs import (
    ExplainPolicy,
    ExplanationStatus,
    Job,
    JobPool,
    PoolBusyError,
    Upload,
    WorkerHandoff,
)

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
API = "/api/v1"
JOBS_PATH = f"{API}/jobs"
MAX_FILES_PER_REQUEST = 64
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 500
EXPLANATION_WAIT_S = 600.0  # a GET of an explanation waits this long for the pool before giving up
COPY_BLOCK_BYTES = 1 << 20
MIB = 1 << 20
# Every body but an upload's is a small JSON object (a scan request: a URI, its S3 key at most 1024 bytes,
# and a flag); FastAPI reads a body whole before a route runs (TokenGate refuses one without the token
# first), so each needs a bound.
JSON_MAX_BYTES = 64 << 10
ROW_ID_MAX = 2**31 - 1  # ids are INTEGER columns (db.models): PostgreSQL's int4, the narrower database
NAME_MAX_BYTES = 255  # a file name on ext4, XFS and most others (NAME_MAX)
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
UNAUTHORISED = "a valid bearer token is required (Authorization: Bearer ...)"


# -- schemas (what /docs shows) -------------------------------------------------------------------------


class JobCreated(BaseModel):
    id: str
    status: str
    filename: str
    url: str = Field(description="GET it for the status and, when done, the result")


class JobView(JobCreated):
    size_bytes: int
    created_at: str
    timings: dict[str, float | None]
    result: dict[str, Any] | None = Field(
        None, description="when done: exactly the JSON of `deepscan detect` (MediaResult.to_dict())"
    )
    error: str | None = None
    explanation: dict[str, Any]
    explanation_url: str | None = Field(None, description="PNG: the face beside its LIME explanation")
    timeline_url: str | None = Field(None, description="PNG: P(fake) per second of a video")


class ResultsPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null: last page")


class ScanRequest(BaseModel):
    uri: str = Field(description="s3://bucket/prefix, or a folder the workers can read")
    force: bool = Field(False, description="re-analyse objects already analysed with this model version")


class ScanStarted(BaseModel):
    scan_id: int
    uri: str
    queued: int
    skipped: int
    url: str


# -- the request body size limit ------------------------------------------------------------------------


def _too_large(limit_bytes: int, *, upload: bool) -> HTTPException:
    if upload:
        return HTTPException(
            413,
            f"the upload is larger than the limit of {limit_bytes / MIB:g} MB (DEEPSCAN_UPLOAD_MAX_MB): "
            "send fewer or smaller files per request",
        )
    return HTTPException(
        413, f"the request body is larger than {limit_bytes} bytes: files go to POST {JOBS_PATH}"
    )


class BodyLimit:
    """Refuse a request body over its limit with a 413 that says so: ``upload_bytes`` for ``POST
    /api/v1/jobs``, ``JSON_MAX_BYTES`` for any other.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body is counted
    as it arrives and refused once it passes the limit (raised as an HTTPException, which FastAPI's
    body parser lets through to the handler).
    """

    def __init__(self, app: ASGIApp, upload_bytes: int) -> None:
        self.app, self.upload_bytes = app, upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and get_route_path(scope) == JOBS_PATH  # without --root-path
        limit_bytes = self.upload_bytes if upload else JSON_MAX_BYTES
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
            error = _too_large(limit_bytes, upload=upload)
            response = JSONResponse(
                {"detail": error.detail}, status_code=413, headers={"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit_bytes:
                    raise _too_large(limit_bytes, upload=upload)
            return message

        await self.app(scope, counted, send)


class TokenGate:
    """Refuse a request to the API without the server's bearer token before its body is read.

    FastAPI reads a body (an upload is spooled to disk, up to ``DEEPSCAN_UPLOAD_MAX_MB``) before it runs
    a route's dependencies, so ``authorised`` alone lets anyone make the server receive one. ``authorised``
    still guards every API route (and states the scheme in /docs); this only answers first.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = get_route_path(scope) if scope["type"] == "http" else ""  # without --root-path's prefix
        if self.token and (path == API or path.startswith(f"{API}/")):
            # the first Authorization header, as HTTPBearer (``authorised``) reads it
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
            scheme, given = get_authorization_scheme_param(header)
            if scheme.lower() != "bearer" or not token_matches(given, self.token):
                response = JSONResponse(
                    {"detail": UNAUTHORISED},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- helpers --------------------------------------------------------------------------------------------


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat()


def job_view(job: Job) -> JobView:
    url = f"{JOBS_PATH}/{job.id}"
    result = job.result or {}
    explanation = job.explanation_status()
    return JobView(
        id=job.id,
        status=job.status.value,
        filename=job.filename,
        url=url,
        size_bytes=job.size_bytes,
        created_at=_iso(job.created_at),
        timings=job.timings(),
        result=job.result,
        error=job.error,
        explanation={"status": explanation.value, **job.explanation_info},
        explanation_url=None if explanation is ExplanationStatus.NONE else f"{url}/explanation.png",
        timeline_url=f"{url}/timeline.png" if result.get("timeline") else None,
    )


def safe_filename(name: str | None) -> str:
    """The last path component of a client's file name, without control characters, at most
    ``NAME_MAX_BYTES`` of UTF-8 (``upload`` if none). The workers store an upload under this name, so it
    is never ``.`` or ``..`` either, and fits a file system's name."""
    base = _UNSAFE_NAME.sub("_", re.split(r"[/\\]", name or "")[-1]).strip()
    base = base.encode()[:NAME_MAX_BYTES].decode(errors="ignore")
    return base if base.strip(".") else "upload"


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, value = text.split(":", 1)
        last_id = int(value)
        if prefix != "id" or not 0 <= last_id <= ROW_ID_MAX:
            raise ValueError(text)
        return last_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise HTTPException(400, f"not a cursor this API gave out: {cursor!r}") from e


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def start_scan(uri: str, *, force: bool, settings: Settings, sessions: sessionmaker[Session]) -> ScanStarted:
    """Start a scan of ``uri`` for the workers: the one place the API does it.

    Today a scan needs the broker (``workers.producer.start_scan``); when scans can run in-process,
    this is the function to switch. Raises ``ScanError`` without a broker or when it is unreachable,
    ``UsageError`` for a bad URI.
    """
    if settings.broker_url is None:
        raise ScanError(
            "scans run on the distributed workers and no broker is configured: set DEEPSCAN_BROKER_URL "
            "(e.g. redis://127.0.0.1:6379/0) and start `deepscan worker`, or analyse a folder with "
            "`deepscan detect FOLDER`, or upload files to POST /api/v1/jobs"
        )
    from workers import producer

    started = producer.start_scan(uri, force=force, sessions=sessions)
    assert started is not None  # only scheduled scans are skipped
    return ScanStarted(
        scan_id=started.scan_id,
        uri=started.uri,
        queued=started.queued,
        skipped=started.skipped,
        url=f"{API}/scans/{started.scan_id}",
    )


# -- dependencies ---------------------------------------------------------------------------------------

# a result or scan id: beyond ROW_ID_MAX the database fails on it (a 500), rather than finding nothing
RowId = Annotated[int, PathParam(ge=1, le=ROW_ID_MAX)]

bearer = HTTPBearer(auto_error=False, description="DEEPSCAN_API_TOKEN, when the server has one")


def token_matches(given: str, token: str) -> bool:
    """Whether a client's bearer token is the server's (in constant time)."""
    return secrets.compare_digest(given.encode(), token.encode())


def authorised(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    token: str = request.app.state.api_token
    if not token:
        return
    if credentials is None or not token_matches(credentials.credentials, token):
        raise HTTPException(401, UNAUTHORISED, headers={"WWW-Authenticate": "Bearer"})


def pool(request: Request) -> JobPool:
    jobs: JobPool = request.app.state.pool
    return jobs


def sessions(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory


def no_such_job(job_id: str) -> HTTPException:
    return HTTPException(404, f"no job {job_id} (jobs are kept in memory while the server runs)")


def job_or_404(job_id: str, jobs: JobPool) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise no_such_job(job_id)
    return job


def result_or_404(session: Session, result_id: int) -> Result:
    result = session.get(Result, result_id)
    if result is None:
        raise HTTPException(404, f"no result {result_id}")
    return result


# -- the app --------------------------------------------------------------------------------------------


def worker_handoff(settings: Settings) -> WorkerHandoff | None:
    """Where uploads go when the workers analyse them: a broker and ``DEEPSCAN_UPLOAD_URI`` both set."""
    if settings.broker_url is None:
        return None
    if settings.upload_uri is None:
        logger.warning(
            "DEEPSCAN_UPLOAD_URI is not set: uploads are analysed in this server, not by the workers"
        )
        return None
    # a job waits for its row through a worker's hard time limit and one redelivery at most
    return WorkerHandoff(
        settings.upload_uri, settings.s3_endpoint_url, timeout_s=2.0 * settings.visibility_timeout_s
    )


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app for ``settings``. Its lifespan migrates the database and starts the job pool."""
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    limit_bytes = int(settings.upload_max_mb * MIB)
    templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sessions = open_sessions(settings.database_url)
        with tempfile.TemporaryDirectory(prefix="deepscan-uploads-") as uploads:
            pool = JobPool(
                settings.models_dir,
                workers=settings.web_workers,
                queue_max=settings.web_queue_max,
                explain_samples=settings.explain_samples,
                score_soundtrack=settings.score_soundtrack,
                provenance=provenance_options(settings),
                detector=detector_options(settings),
                sessions=sessions,
                handoff=worker_handoff(settings),
            )
            app.state.pool, app.state.sessions, app.state.uploads = pool, sessions, Path(uploads)
            try:
                yield
            finally:  # before the uploads folder goes: what runs gets the grace period, the rest a row
                await asyncio.to_thread(pool.close, settings.shutdown_grace_s)

    app = FastAPI(
        title="deepscan",
        summary="Find deepfakes in images, videos and audio.",
        version="1",
        lifespan=lifespan,
    )
    app.state.api_token = token
    app.add_middleware(BodyLimit, upload_bytes=limit_bytes)
    app.add_middleware(TokenGate, token=token)  # added last: runs first, before a byte of body is read
    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")
    # Prometheus metrics (workers.metrics), open like /healthz: counts and latencies, no media and no rows
    queues = (LIGHT_QUEUE, GPU_QUEUE) if settings.broker_url else ()
    app.mount("/metrics", metrics.asgi_app(broker_url=settings.broker_url, queues=queues))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "token_required": bool(token),
                "upload_max_mb": settings.upload_max_mb,
                "model": request.app.state.pool.manifest.label,
                "explain_samples": settings.explain_samples,
            },
        )

    @app.get("/healthz", tags=["server"])
    def healthz(jobs: Annotated[JobPool, Depends(pool)]) -> dict[str, Any]:
        """Whether the server is up and its model pack loaded (no token needed)."""
        return {
            "status": "ok",
            "model": jobs.manifest.label,
            "ready": jobs.ready,
            "analysed_by": "workers" if jobs.handoff else "server",
            "active_jobs": jobs.active(),
        }

    api = APIRouter(prefix=API, dependencies=[Depends(authorised)])

    @api.post("/jobs", status_code=202, response_model=JobCreated | list[JobCreated], tags=["jobs"])
    def create_jobs(
        request: Request,
        jobs: Annotated[JobPool, Depends(pool)],
        file: Annotated[list[UploadFile], File(description="one or more media files")],
        explain: Annotated[
            ExplainPolicy, Form(description="compute the LIME explanation: for fakes, always or never")
        ] = ExplainPolicy.FLAGGED,
    ) -> JobCreated | list[JobCreated] | JSONResponse:
        """Analyse uploaded files: one job per file. One file: its job; several: a list, in upload order."""
        if len(file) > MAX_FILES_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_FILES_PER_REQUEST} files per request")
        uploads: list[Upload] = []
        directory: Path = request.app.state.uploads
        try:
            for part in file:
                fd, name = tempfile.mkstemp(dir=directory)  # a generated name: never the client's
                with open(fd, "wb") as out:
                    shutil.copyfileobj(part.file, out, COPY_BLOCK_BYTES)
                path = Path(name)
                uploads.append(Upload(safe_filename(part.filename), path, path.stat().st_size))
            created = jobs.submit(uploads, explain=explain)
        except PoolBusyError as e:
            for upload in uploads:
                upload.path.unlink(missing_ok=True)
            raise HTTPException(503, e.reason, headers={"Retry-After": "10"}) from e
        except BaseException:
            for upload in uploads:
                upload.path.unlink(missing_ok=True)
            raise
        views = [
            JobCreated(id=j.id, status=j.status.value, filename=j.filename, url=f"{JOBS_PATH}/{j.id}")
            for j in created
        ]
        if len(views) == 1:
            return JSONResponse(views[0].model_dump(), status_code=202, headers={"Location": views[0].url})
        return views

    @api.get(
        "/jobs/{job_id}",
        response_model=JobView,
        responses={303: {"description": "a job this server no longer holds: its stored result"}},
        tags=["jobs"],
    )
    def get_job(
        job_id: str,
        jobs: Annotated[JobPool, Depends(pool)],
        db: Annotated[sessionmaker[Session], Depends(sessions)],
    ) -> Any:
        """A job's status and, when done, its result, explanation status and figure URLs. A job the server
        no longer holds (it restarted, or the job is older than the last 256) answers 303 with its row in
        the results table, where the job got that far."""
        job = jobs.get(job_id)
        if job is not None:
            return job_view(job)
        with session_scope(db) as session:
            stored = queries.find_upload(session, job_id=job_id)
            if stored is not None:
                return RedirectResponse(f"{API}/results/{stored.id}", status_code=303)
        raise no_such_job(job_id)

    png = {"content": {"image/png": {}}, "description": "PNG"}

    @api.get("/jobs/{job_id}/explanation.png", response_class=Response, responses={200: png}, tags=["jobs"])
    async def get_explanation(job_id: str, jobs: Annotated[JobPool, Depends(pool)]) -> Response:
        """The face that drove the verdict beside its LIME explanation; computed on first request."""
        job = job_or_404(job_id, jobs)
        if not job.finished:
            raise HTTPException(409, f"job {job_id} is still {job.status.value}: ask again when it is done")
        try:
            future = jobs.request_explanation(job)
        except LookupError as e:
            raise HTTPException(404, str(e)) from e
        # Awaited, not waited for on a thread: a sync route runs on one of AnyIO's worker threads (40, shared
        # by every sync route and dependency), and a few dozen requests waiting for the pool would hold them
        # all. Shielded: a timeout, or a client that goes away, must not cancel what other requests share.
        try:
            data = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), EXPLANATION_WAIT_S)
        except asyncio.TimeoutError as e:
            raise HTTPException(503, "the explanation is still being computed: ask again later") from e
        except Exception as e:
            logger.exception("explanation of job %s failed", job_id)
            raise HTTPException(500, f"the explanation failed: {type(e).__name__}: {e}") from e
        return Response(data, media_type="image/png")

    @api.get("/jobs/{job_id}/timeline.png", response_class=Response, responses={200: png}, tags=["jobs"])
    def get_job_timeline(job_id: str, jobs: Annotated[JobPool, Depends(pool)]) -> Response:
        """P(fake) per second of a video job, with the threshold and the soundtrack's verdict."""
        try:
            return Response(jobs.timeline_png(job_or_404(job_id, jobs)), media_type="image/png")
        except LookupError as e:
            raise HTTPException(404, str(e)) from e

    @api.get("/results", response_model=ResultsPage, tags=["results"])
    def list_results(
        db: Annotated[sessionmaker[Session], Depends(sessions)],
        scan: Annotated[int | None, Query(ge=1, le=ROW_ID_MAX, description="only this scan's rows")] = None,
        label: Literal["fake", "real"] | None = None,
        status: Annotated[str | None, Query(description="ok, no_face, decode_error, ...")] = None,
        min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
        provenance: Annotated[
            Literal["ai", "camera", "none"] | None, Query(description="what the file says of its origin")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> ResultsPage:
        """Stored results with the filters of `deepscan results`, in id order, a page at a time."""
        with session_scope(db) as session:
            rows = queries.list_results(
                session,
                scan_id=scan,
                label=label,
                status=status,
                min_probability=min_probability,
                provenance=provenance,
                after_id=decode_cursor(cursor) if cursor else None,
                limit=limit + 1,
            )
            items = [queries.result_to_dict(r) for r in rows[:limit]]
        return ResultsPage(
            items=items, next_cursor=encode_cursor(items[-1]["id"]) if len(rows) > limit else None
        )

    @api.get("/results/{result_id}", tags=["results"])
    def get_result(
        result_id: RowId, db: Annotated[sessionmaker[Session], Depends(sessions)]
    ) -> dict[str, Any]:
        """One stored result, with its per-second frames for a video."""
        with session_scope(db) as session:
            return queries.result_to_dict(result_or_404(session, result_id))

    @api.get(
        "/results/{result_id}/timeline.png", response_class=Response, responses={200: png}, tags=["results"]
    )
    def get_result_timeline(
        result_id: RowId,
        db: Annotated[sessionmaker[Session], Depends(sessions)],
        jobs: Annotated[JobPool, Depends(pool)],
    ) -> Response:
        """P(fake) per second of a stored video result."""
        with session_scope(db) as session:
            row = queries.result_to_dict(result_or_404(session, result_id))
        seconds = seconds_of(row)
        if not seconds:
            raise HTTPException(404, f"result {result_id} has no timeline: it is not a decoded video")
        return Response(timeline_png(row, threshold=jobs.image_threshold), media_type="image/png")

    @api.get("/scans", tags=["scans"])
    def list_scans(db: Annotated[sessionmaker[Session], Depends(sessions)]) -> list[dict[str, Any]]:
        """Every scan with its counts (queued, skipped, done, ok, fake, real, expanded, errors), as `deepscan scans`."""
        with session_scope(db) as session:
            return [_jsonable(row) for row in queries.scan_counts(session)]

    @api.get("/scans/{scan_id}", tags=["scans"])
    def get_scan(scan_id: RowId, db: Annotated[sessionmaker[Session], Depends(sessions)]) -> dict[str, Any]:
        with session_scope(db) as session:
            rows = queries.scan_counts(session, scan_id=scan_id)
        if not rows:
            raise HTTPException(404, f"no scan {scan_id}")
        return _jsonable(rows[0])

    @api.post(
        "/scans",
        status_code=202,
        response_model=ScanStarted,
        tags=["scans"],
        responses={503: {"description": "no broker configured, or it is unreachable"}},
    )
    def create_scan(
        body: ScanRequest, db: Annotated[sessionmaker[Session], Depends(sessions)]
    ) -> ScanStarted:
        """Queue a scan of a bucket prefix or folder for the workers (needs DEEPSCAN_BROKER_URL)."""
        try:
            return start_scan(body.uri, force=body.force, settings=settings, sessions=db)
        except UsageError as e:
            raise HTTPException(400, e.reason) from e
        except ScanError as e:
            raise HTTPException(503, e.reason) from e

    app.include_router(api)
    return app
