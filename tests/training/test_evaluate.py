from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.pack import ModelPack
from tests.training.test_recipes import make_dataset
from training.evaluate import (
    ENSEMBLE,
    Evaluation,
    ensemble_against_best_member,
    evaluate_audio,
    evaluate_images,
    plot_roc,
    to_markdown,
)
from training.metrics import roc_auc
from workers.samples import write_wav


def test_every_member_and_the_ensemble_per_source(random_pack: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "faces", per_class=6)
    evaluation, missed = evaluate_images(ModelPack.load(random_pack), data, split=None)
    assert missed == []
    assert set(evaluation.reports) == {"spectral", "densenet121", ENSEMBLE}
    assert set(evaluation.reports[ENSEMBLE]) == {"all", "gan", "swap"}
    assert evaluation.reports[ENSEMBLE]["all"].n == 24 and evaluation.reports["spectral"]["swap"].n == 12
    table = to_markdown(evaluation)
    # 9 scorer x subset rows, then the ensemble against the best member: a header and a row per subset
    assert table.count("\n| ") == 9 + 4 and "| ensemble | gan |" in table
    r = evaluation.reports[ENSEMBLE]["gan"]
    assert f"| {r.auc:.3f} | {r.auc_low:.3f}-{r.auc_high:.3f} |" in table
    assert plot_roc(evaluation, tmp_path / "roc.png").stat().st_size > 1000


def test_through_the_detector_each_file_is_scored_as_detect_scores_it(
    random_pack: Path, tmp_path: Path
) -> None:
    """The largest detected face cut from the file, as the image path cuts it; faceless files left out."""
    import cv2

    from pipeline.analyze import Analyzer
    from pipeline.media import load_image

    data = make_dataset(tmp_path / "faces", per_class=2)
    blank = data / "gan" / "real" / "blank.jpg"
    cv2.imwrite(str(blank), np.full((128, 128, 3), 90, np.uint8))
    pack = ModelPack.load(random_pack)
    evaluation, missed = evaluate_images(pack, data, split=None, through_detector=True)
    assert blank in missed and len(missed) + len(evaluation.labels) == 9
    analyzer = Analyzer(pack, score_soundtrack=False)
    kept = sorted(set(data.rglob("*.jpg")) - set(missed))
    (scored,) = analyzer.score_frames([load_image(kept[0])])  # its largest face first
    assert np.isclose(evaluation.scores[ENSEMBLE], scored.face_probabilities[0], atol=1e-5).any()


def test_spoof_families_are_each_measured_against_all_real_clips() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1])
    families = ["bonafide", "bonafide", "tts", "tts", "vocoder", "vocoder"]
    scores = np.array([0.1, 0.4, 0.9, 0.8, 0.3, 0.2])
    evaluation = Evaluation(labels, families, {"audio": scores}, {"audio": 0.5}, real_in_every_subset=True)
    reports = evaluation.reports["audio"]
    assert set(reports) == {"all", "tts", "vocoder"}
    assert (reports["tts"].n, reports["tts"].auc) == (4, 1.0)
    assert (reports["vocoder"].n, reports["vocoder"].auc) == (4, 0.5)  # wins 2 of 4 pairs


def test_audio_clips_without_a_score_are_reported(random_pack: Path, samples: Path, tmp_path: Path) -> None:
    data = tmp_path / "speech"
    for rel in ("real/19-198-0001.wav", "real/26-495-0000.wav", "fake/espeak/19-espeak-0.wav"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(samples / "speech.wav", data / rel)
    write_wav(data / "fake" / "espeak" / "26-espeak-0.wav", np.zeros(100, np.float32))
    evaluation, unscored = evaluate_audio(ModelPack.load(random_pack), data, split=None)
    assert evaluation.reports["audio"]["all"].n == 3 and set(evaluation.reports["audio"]) == {"all", "espeak"}
    assert [(p.name, "too_short" if "lasts" in why else why) for p, why in unscored] == [
        ("26-espeak-0.wav", "too_short")
    ]
    with pytest.raises(ValueError, match="no scorable clips"):
        evaluate_audio(ModelPack.load(random_pack), data / "fake", split=None)


def test_audio_families_the_pack_held_out_are_pooled(
    random_pack: Path, samples: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from pipeline.pack import read_manifest, write_manifest

    pack_dir = tmp_path / "pack"
    shutil.copytree(random_pack, pack_dir)
    manifest = read_manifest(pack_dir)
    write_manifest(pack_dir, replace(manifest, info={"audio_training": {"holdout_families": ["flite"]}}))
    data = tmp_path / "speech"
    for rel in (
        "real/19-198-0001.wav",
        "real/26-495-0000.wav",
        "fake/espeak/19-espeak-0.wav",
        "fake/flite/26-flite-0.wav",
    ):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(samples / "speech.wav", data / rel)
    evaluation, _ = evaluate_audio(ModelPack.load(pack_dir), data, split=None)
    reports = evaluation.reports["audio"]
    assert set(reports) == {"all", "espeak", "flite", "held_out_pooled"}
    assert (reports["held_out_pooled"].n, reports["held_out_pooled"].n_fake) == (3, 1)  # both real + flite
    assert (
        "held_out_pooled"
        not in evaluate_audio(ModelPack.load(random_pack), data, split=None)[0].reports["audio"]
    )


def test_the_ensemble_is_compared_with_the_best_member_of_each_subset() -> None:
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 60)
    sources = ["a"] * 60 + ["b"] * 60
    strong_on_a = np.where(np.arange(120) < 60, labels * 2.0, 0.0) + rng.normal(0, 1, 120)
    strong_on_b = np.where(np.arange(120) >= 60, labels * 2.0, 0.0) + rng.normal(0, 1, 120)
    scores = {"m_a": strong_on_a, "m_b": strong_on_b, ENSEMBLE: strong_on_a + strong_on_b}
    evaluation = Evaluation(labels, sources, scores, dict.fromkeys(scores, 0.5))
    comparison = ensemble_against_best_member(evaluation)
    assert [comparison[s][0] for s in ("a", "b")] == ["m_a", "m_b"]
    for subset, (member, difference, low, high) in comparison.items():
        mask = evaluation.subset_mask(subset)
        expected = roc_auc(labels[mask], scores[ENSEMBLE][mask]) - roc_auc(labels[mask], scores[member][mask])
        assert difference == pytest.approx(expected) and low < difference < high
    # on each source the other member is noise, which costs the ensemble against that source's expert
    assert comparison["a"][1] < 0 and comparison["b"][1] < 0
    assert ensemble_against_best_member(Evaluation(labels, sources, {"m": strong_on_a}, {"m": 0.5})) == {}
