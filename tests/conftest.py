"""Fixtures shared by the whole suite.

Media fixtures are generated (``workers.samples``: public-domain stills, espeak-ng speech, ffmpeg), never
copied from ``../shared/data``; tests that read that data are marked ``shared_data`` and skip cleanly
where it is absent. Services (PostgreSQL, Redis) are real; a missing one is a skip locally and a failure
in CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from db.session import make_engine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLED_PACK = REPO / "pipeline" / "weights" / "default"


def missing_service(message: str) -> None:
    """Skip locally, fail in CI: a test that needs a service must not pass by not running."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"research data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample media set (see ``workers.samples``), generated once per run."""
    from workers.samples import write_samples

    directory = tmp_path_factory.mktemp("samples")
    write_samples(directory)
    return directory


@pytest.fixture(scope="session")
def provenance_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Signed, tampered, tagged and watermarked images and videos (``tests.provenance_media``), by name;
    ``anchors.pem`` is the root of their test certificate chain."""
    from tests.provenance_media import write_provenance_media

    return write_provenance_media(tmp_path_factory.mktemp("provenance"))


@pytest.fixture(scope="session")
def random_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pack of untrained members (random weights): exercises every code path in seconds."""
    import keras

    from pipeline.audio import AudioFrontEnd
    from pipeline.pack import Manifest, MemberSpec, write_manifest
    from training.architectures import build_audio_cnn, build_image_member

    keras.utils.set_random_seed(1)
    directory = tmp_path_factory.mktemp("pack")
    front_end = AudioFrontEnd(window_s=2.0, hop_s=1.0)
    members = []
    for arch, size in (("spectral", (64, 64)), ("densenet121", (32, 32))):
        build_image_member(arch, size).save(directory / f"{arch}.keras")
        members.append(MemberSpec(arch, "image", f"{arch}.keras", size, arch))
    build_audio_cnn(front_end.input_shape).save(directory / "audio_cnn.keras")
    members.append(MemberSpec("audio_cnn", "audio", "audio_cnn.keras", front_end.input_shape, "audio_cnn"))
    write_manifest(
        directory, Manifest(name="test-pack", version="0.0.1", members=tuple(members), audio=front_end)
    )
    return directory


POSTGRES_URL = os.environ.get(
    "DEEPSCAN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_or_skip() -> Engine:
    engine = make_engine(
        make_url(POSTGRES_URL)
        .update_query_dict({"connect_timeout": "3"})
        .render_as_string(hide_password=False)
    )
    try:
        with engine.connect():
            pass
    except OperationalError as e:
        engine.dispose()
        missing_service(f"PostgreSQL unreachable at {make_url(POSTGRES_URL)!r}: {e.orig}")
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database, not yet migrated: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'deepscan.db'}"
        return

    admin = _postgres_or_skip()
    schema = f"deepscan_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        # search_path puts every table, alembic_version included, in the test's own schema.
        yield (
            make_url(POSTGRES_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
