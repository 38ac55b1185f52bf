"""The logmel_stats audio member: its statistics, the head's weights, and a pack it ships in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import AudioFrontEnd
from pipeline.layers import LOGMEL_STATISTICS, LogMelStatistics
from training.audio_datasets import AudioItem, load_audio_datasets
from training.audio_windows import WindowFeatures, balanced_window_weights, statistic_columns, window_features
from training.spoofs import NO_PROCESSING


def test_statistic_columns_pick_blocks_of_the_full_layer() -> None:
    bands = 6
    x = np.random.default_rng(0).normal(size=(2, bands, 30, 1)).astype(np.float32)
    full = np.asarray(LogMelStatistics()(x))
    for chosen in (("mean", "std", "delta"), ("band_delta",), ("std", "delta2")):
        np.testing.assert_allclose(
            full[:, statistic_columns(chosen, bands)],
            np.asarray(LogMelStatistics(statistics=chosen)(x)),
            rtol=1e-6,
        )
    assert len(statistic_columns(LOGMEL_STATISTICS, bands)) == full.shape[1] == 5 * bands - 1


def test_every_dataset_and_class_weighs_alike() -> None:
    items = [
        AudioItem(Path("a"), 0, "1", "bonafide", "librispeech"),
        AudioItem(Path("b"), 0, "2", "bonafide", "neural", "page"),
        AudioItem(Path("c"), 1, "3", "page", "neural", "page"),
    ]
    clips = np.array([0, 0, 0, 0, 1, 2, 2])  # librispeech has four windows, the page's real clip one
    labels = np.array([items[c].label for c in clips])
    features = WindowFeatures(np.zeros((7, 1), np.float32), labels, clips, np.zeros(7, np.int64), items)
    weights = balanced_window_weights(features)
    assert weights.mean() == pytest.approx(1.0)
    total = {(items[c].source, items[c].label): 0.0 for c in clips}
    for c, w in zip(clips, weights, strict=True):
        total[(items[c].source, items[c].label)] += float(w)
    assert total[("librispeech", 0)] == pytest.approx(total[("neural", 0)])  # each real dataset: a quarter
    assert total[("neural", 1)] == pytest.approx(
        total[("librispeech", 0)] + total[("neural", 0)]
    )  # fakes: half


def test_window_features_of_clips_and_their_processed_copies(tmp_path: Path) -> None:
    from tests.training.test_recipes import make_audio_dataset

    data = make_audio_dataset(tmp_path / "tones", n_speakers=3)
    items = load_audio_datasets([data])
    front_end = AudioFrontEnd(window_s=1.0, hop_s=1.0)  # two windows of each 2 s clip
    features = window_features(items, front_end, copies=1, cache_dir=tmp_path / "cache")
    assert features.x.shape == (len(items) * 2 * 2, 5 * front_end.n_mels - 1)
    assert set(features.copies.tolist()) == {0, 1} and np.array_equal(
        features.labels, np.array([items[c].label for c in features.clips])
    )
    originals = features.of_clips({0, 1}, copies=False)
    assert set(originals.clips.tolist()) == {0, 1} and set(originals.copies.tolist()) == {0}
    # a copy is a processed clip: its statistics differ; without processing they would not
    assert not np.allclose(features.x[features.copies == 0], features.x[features.copies == 1])
    same = window_features(items[:2], front_end, copies=1, processing=NO_PROCESSING)
    np.testing.assert_allclose(same.x[same.copies == 0], same.x[same.copies == 1], atol=1e-4)
    # read back from the cache, not computed again
    (cached,) = (tmp_path / "cache").glob("*.npz")
    again = window_features(items, front_end, copies=1, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.x, features.x)
    with pytest.raises(ValueError, match="logmel front end"):
        window_features(items, AudioFrontEnd(feature="cqt", hop_length=128))
    assert cached.is_file()


@pytest.mark.slow
def test_a_logmel_stats_member_ships_in_a_pack_and_scores_through_it(tmp_path: Path) -> None:
    from pipeline.analyze import Analyzer
    from pipeline.media import load_audio
    from pipeline.pack import ModelPack
    from tests.training.test_recipes import make_audio_dataset
    from workers.cli import main

    data = make_audio_dataset(tmp_path / "tones", n_speakers=24)
    pack_dir = tmp_path / "pack"
    assert main([
        "train", "audio", "--architecture", "logmel_stats", "--data", str(data), "--out", str(pack_dir),
        "--epochs", "4", "--copies", "1", "--hidden", "8", "--holdout-families", "click",
        "--member-name", "audio_stats",
    ]) == 0  # fmt: skip
    for wrong in (["--member-name", "../x"], ["--member-name", "audio_stats", "--fuse-only"]):
        assert main(["train", "audio", "--data", str(data), "--out", str(pack_dir), *wrong]) == 2
    pack = ModelPack.load(pack_dir)  # checksums verified
    (member,) = pack.manifest.audio_members
    assert (member.name, member.architecture, member.front_end) == (
        "audio_stats", "logmel_stats", AudioFrontEnd.for_feature("logmel"),
    )  # fmt: skip
    info = pack.manifest.info["audio_training"]
    assert info["holdout_families"] == ["click"] and "held_out_pooled" in info["test_clips"]
    report = json.loads((pack_dir / "audio_stats.report.json").read_text())
    assert report["recipe"]["copies"] == 1 and report["recipe"]["train_windows"] > 0
    # the pack's ordinary audio path scores a clip with it
    verdict = Analyzer(pack).score_audio(load_audio(next((data / "real").iterdir())))
    assert verdict.fake_probability is not None and 0.0 <= verdict.fake_probability <= 1.0
    assert verdict.windows == 1
    # members saved as float16 reload and score the tones apart from the chirps
    clips = sorted((data / "fake" / "tone").iterdir())[:4] + sorted((data / "real").iterdir())[:4]
    scores = [Analyzer(pack).score_audio(load_audio(p)).fake_probability for p in clips]
    assert np.mean(scores[:4]) > np.mean(scores[4:])
