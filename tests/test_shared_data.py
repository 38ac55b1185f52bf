"""The bundled pack on the research clips in ``../shared/data/videos`` (skipped where that data is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.analyze import Analyzer
from pipeline.pack import ModelPack
from tests.conftest import BUNDLED_PACK

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(ModelPack.load(BUNDLED_PACK))


def test_every_research_clip_gets_a_verdict_with_faces_found(shared_data: Path, analyzer: Analyzer) -> None:
    clips = sorted((shared_data / "videos").glob("*.mp4"))
    assert len(clips) == 4
    for clip in clips:
        row = analyzer.analyze_file(clip).to_dict()
        assert row["status"] == "ok", (clip.name, row["reason"])
        seconds = row["timeline"]
        with_faces = sum(1 for entry in seconds if entry["n_faces"] > 0)
        assert with_faces >= 0.5 * len(seconds), (
            f"{clip.name}: faces in only {with_faces}/{len(seconds)} seconds"
        )
        assert 0.0 <= row["fake_probability"] <= 1.0
