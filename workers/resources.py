"""What a process holds on to between objects: the loaded pack, the database sessions, fetched objects.

A worker's prefork children build these lazily, after the fork (an engine or a TensorFlow runtime must
never cross a fork): the pack's models (loaded once per process, whoever asks first: a task or the web
app's jobs), an analyzer per thread over them (keyed by the pack directory and the provenance options),
a verdict-only analyzer for the light queue (thresholds and provenance, no models), the session factory,
and the cache of fetched objects. The embedded path (``deepscan detect``) opens its own with
``load_pack`` and ``open_sessions``, which migrate and check first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, migrate, session_factory, session_scope
from pipeline.analyze import Analyzer, PackBatcher
from pipeline.errors import ModelPackError
from pipeline.faces import DetectorOptions, FaceDetector
from pipeline.pack import ModelPack, read_manifest
from pipeline.provenance import ProvenanceOptions
from workers import metrics
from workers.errors import StorageError, UsageError
from workers.settings import Settings, get_settings
from workers.storage import LocalCopies

logger = logging.getLogger(__name__)


# -- the pack ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _pulled(models_uri: str, cache_dir: Path, endpoint_url: str | None) -> Path:
    from workers.modelstore import pull_pack

    return pull_pack(models_uri, cache_dir=cache_dir, endpoint_url=endpoint_url)


def models_dir() -> Path:
    """The configured pack's directory: ``DEEPSCAN_MODELS_URI`` pulled into the cache once per process
    (a cached, verified pack is not downloaded again), else ``DEEPSCAN_MODELS_DIR``."""
    settings = get_settings()
    if settings.models_uri:
        return _pulled(settings.models_uri, settings.models_cache_dir, settings.s3_endpoint_url)
    return settings.models_dir


def pack_directory() -> Path:
    """``models_dir()`` for the commands: a pack that cannot be pulled is a usage error."""
    try:
        return models_dir()
    except (ModelPackError, StorageError) as e:
        raise UsageError(f"cannot pull the model pack {get_settings().models_uri}: {e.reason}") from e


@contextmanager
def _usage_error_unless_loaded(directory: Path) -> Iterator[None]:
    """A pack in ``directory`` that will not load is a usage error (the commands, the web app)."""
    try:
        yield
    except ModelPackError as e:
        raise UsageError(f"cannot load the model pack in {directory}: {e.reason}") from e


def load_pack(models: str | Path | None = None) -> ModelPack:
    """The pack in ``models`` (default: the configured one); a pack that will not load is a usage error."""
    directory = Path(models) if models else pack_directory()
    with _usage_error_unless_loaded(directory):
        return ModelPack.load(directory)


_packs: dict[Path, ModelPack] = {}
_packs_lock = threading.Lock()  # threads asking at once wait for one load, not load a pack each


def _loaded(directory: Path) -> ModelPack:
    """The pack in ``directory``, loaded once per process whoever asks first (a worker's tasks, the web
    app's jobs) and shared by its threads."""
    with _packs_lock:
        if directory not in _packs:
            logger.info("loading the model pack in %s", directory)
            started = time.perf_counter()
            _packs[directory] = ModelPack.load(directory)
            metrics.MODEL_LOAD_SECONDS.observe(time.perf_counter() - started)
        return _packs[directory]


def shared_pack(directory: Path) -> ModelPack:
    """The pack of this process in ``directory`` (the web app's jobs); one that will not load is a usage
    error."""
    with _usage_error_unless_loaded(directory):
        return _loaded(directory)


def provenance_options(settings: Settings | None = None) -> ProvenanceOptions:
    """The provenance policy and the C2PA trust anchors (the PEM text of ``DEEPSCAN_C2PA_TRUST_ANCHORS``)."""
    settings = settings or get_settings()
    path = settings.c2pa_trust_anchors
    return ProvenanceOptions(
        policy=settings.provenance_policy, trust_anchors_pem=_trust_anchors(path) if path else None
    )


def detector_options(settings: Settings | None = None) -> DetectorOptions:
    """How faces are searched, as ``DEEPSCAN_FACE_SEARCH`` says: thorough (the default) or fast."""
    settings = settings or get_settings()
    return DetectorOptions(halved_pyramid=settings.face_search == "fast")


@lru_cache(maxsize=2)
def _trust_anchors(path: Path) -> str:
    """The PEM text of a trust anchors file, read once per process."""
    try:
        anchors = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"DEEPSCAN_C2PA_TRUST_ANCHORS: cannot read {path}: {e}") from e
    if "-----BEGIN CERTIFICATE-----" not in anchors:
        raise UsageError(f"DEEPSCAN_C2PA_TRUST_ANCHORS: {path} holds no PEM certificate")
    return anchors


@lru_cache(maxsize=2)
def _batcher(directory: Path, batch_wait_ms: int) -> PackBatcher | None:
    """The batcher the threads of this process share over its pack, when batching is on."""
    return PackBatcher(_loaded(directory), max_wait_s=batch_wait_ms / 1000) if batch_wait_ms else None


_per_thread = threading.local()


def analyzer() -> Analyzer:
    """The analyzer of this thread over the pack of this process, its models loaded on first use.

    A prefork worker's process runs one task at a time; a threaded worker (``--pool threads``) runs
    several, each thread with an analyzer (and a face detector) of its own over the one pack, sharing
    forward passes when ``DEEPSCAN_BATCH_WAIT_MS`` is set.
    """
    settings = get_settings()
    key = (
        models_dir(),
        settings.score_soundtrack,
        provenance_options(settings),
        settings.batch_wait_ms,
        detector_options(settings),
    )
    cached: tuple[tuple[Any, ...], Analyzer] | None = getattr(_per_thread, "analyzer", None)
    if cached is None or cached[0] != key:
        batcher = _batcher(key[0], settings.batch_wait_ms)
        made = Analyzer(
            _loaded(key[0]),
            FaceDetector(key[4]),
            score_soundtrack=key[1],
            provenance=key[2],
            batcher=batcher,
        )
        _per_thread.analyzer = cached = (key, made)
    return cached[1]


@lru_cache(maxsize=2)
def _verdict_analyzer(directory: Path, provenance: ProvenanceOptions) -> Analyzer:
    return Analyzer(ModelPack(directory, read_manifest(directory), {}), provenance=provenance)


def verdict_analyzer() -> Analyzer:
    """An analyzer with the pack's manifest only: enough for ``video_verdict``, no model in memory.

    A worker that already loaded the models uses those.
    """
    directory = models_dir()
    if directory in _packs:
        return analyzer()
    return _verdict_analyzer(directory, provenance_options())


@lru_cache(maxsize=2)
def _identity(directory: Path) -> tuple[str, str]:
    manifest = read_manifest(directory)
    return manifest.name, manifest.version


def model_identity() -> tuple[str, str]:
    """(name, version) of the configured pack, read from its manifest once per process."""
    return _identity(models_dir())


# -- the database -----------------------------------------------------------------------------------------


def open_sessions(database_url: str | None = None) -> sessionmaker[Session]:
    """Migrate the database to the latest schema and return a session factory for it."""
    url = database_url or get_settings().database_url
    migrate(url)
    return session_factory(make_engine(url))


@contextmanager
def open_database(database_url: str | None = None) -> Iterator[Session]:
    """One session (one transaction) on a migrated database: for the query commands."""
    with session_scope(open_sessions(database_url)) as session:
        yield session


@lru_cache(maxsize=2)
def _sessions(database_url: str) -> sessionmaker[Session]:
    return session_factory(make_engine(database_url))


def process_sessions() -> sessionmaker[Session]:
    """The session factory of this process. The schema is migrated by ``deepscan worker`` / ``scan``."""
    return _sessions(get_settings().database_url)


# -- fetched objects --------------------------------------------------------------------------------------


_every_copies: list[LocalCopies] = []
_every_copies_lock = threading.Lock()


def local_copies() -> LocalCopies:
    """The fetched objects of this thread: a threaded worker's threads never evict a file another is
    reading (a prefork child has one thread, so one cache)."""
    copies: LocalCopies | None = getattr(_per_thread, "copies", None)
    if copies is None:
        copies = _per_thread.copies = LocalCopies(endpoint_url=get_settings().s3_endpoint_url)
        with _every_copies_lock:
            _every_copies.append(copies)
    return copies


def close_local_copies() -> None:
    """Delete the fetched objects of every thread of this process."""
    with _every_copies_lock:
        for copies in _every_copies:
            copies.close()
