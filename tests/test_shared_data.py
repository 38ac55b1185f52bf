"""The bundled pack on the research data in ``../shared/data`` (skipped where that data is absent)."""

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


def test_bundled_pack_reproduces_the_image_figures_in_its_card(shared_data: Path, analyzer: Analyzer) -> None:
    """The card is rendered from the manifest; `deepscan evaluate` on the same split must measure the same."""
    from training.evaluate import ENSEMBLE, evaluate_images

    manifest = analyzer.pack.manifest
    recorded = manifest.info["image_training"]
    folders = [shared_data / name for name in recorded["data"].split("+")]  # faces, or faces+faces2
    evaluation, _ = evaluate_images(
        analyzer.pack, folders, tight_sources=recorded.get("tight_sources") or (), split="test"
    )
    for subset, figures in recorded["test_ensemble"].items():
        measured = evaluation.reports[ENSEMBLE][subset].as_dict()
        assert measured["n"] == figures["n"], subset
        for key in ("auc", "eer", "accuracy", "ece"):
            assert measured[key] == pytest.approx(figures[key], abs=1e-6), (subset, key)
    for member in manifest.image_members:
        measured_auc = evaluation.reports[member.name]["all"].as_dict()["auc"]
        assert measured_auc == pytest.approx(member.metrics["test_auc"], abs=1e-6), member.name


def test_dfdc_clusters_stay_whole_across_the_split(shared_data: Path) -> None:
    """A real DFDC clip and the fakes made from it show one actor in one scene: one side of the split."""
    from training.face_datasets import find_face_samples
    from training.fitting import split_samples

    samples = find_face_samples([shared_data / "faces2"], tight_sources=["dfdc"])
    dfdc = [s for s in samples if s.source == "dfdc"]
    assert len(dfdc) == 5453 and {s.geometry for s in dfdc} == {"tight"}
    assert {s.source for s in samples} == {"dfdc", "stylegan"}
    side: dict[str, str] = {}
    for split, items in split_samples(samples).items():
        for s in items:
            if s.source == "dfdc":
                assert side.setdefault(s.key, split) == split, s.key
    assert len(side) == 2000
