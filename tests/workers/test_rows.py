"""The one row writer: a ``MediaResult`` stored through ``workers.rows`` reads back in its own JSON shape."""

from __future__ import annotations

from pathlib import Path

from db import queries
from db.session import make_engine, migrate, session_factory, session_scope
from pipeline.analyze import MediaResult
from pipeline.provenance import CredentialState, Finding, FindingKind, Provenance, ProvenanceClass
from workers import rows
from workers.storage import ObjectRef


def test_a_row_reads_back_as_the_result_it_was_written_from(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    path = tmp_path / "signed.jpg"
    path.write_bytes(b"not read here")
    claim = Finding(
        FindingKind.C2PA_SOURCE_TYPE, "trainedAlgorithmicMedia", True, ProvenanceClass.AI, "c2pa.created"
    )
    result = MediaResult(
        path=str(path),
        media_type="image",
        label="fake",
        fake_probability=1.0,
        confidence={"real": 0.0, "fake": 1.0},
        provenance=Provenance(findings=(claim,), credentials=CredentialState.TRUSTED),
        details={"verdict_driven_by": "provenance", "detector_fake_probability": 0.2},
    )
    ref = ObjectRef.for_local_file(path)
    try:
        rows.write_row(ref, None, result, content_sha256=ref.sha256, sessions=sessions, model=("m", "1"))
        with session_scope(sessions) as session:
            stored = queries.find_result(session, uri=ref.result_uri)
            assert stored is not None
            assert (stored.provenance, stored.provenance_credentials) == ("ai", "trusted")
            back = queries.result_to_dict(stored)
            assert [r.uri for r in queries.list_results(session, provenance="ai")] == [ref.result_uri]
    finally:
        engine.dispose()
    fresh = result.to_dict()
    assert {k: back[k] for k in fresh} == fresh
    assert back["provenance"]["findings"][0]["value"] == "trainedAlgorithmicMedia"
