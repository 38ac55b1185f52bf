"""Leave-one-family-out folds and the sweep over them, on generated clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.audio_datasets import AudioItem, speaker_disjoint_split
from training.crosseval import family_folds


def corpus_items(n_speakers: int = 40) -> list[AudioItem]:
    """A generated corpus (shared real clips, two families) and a page with its own recordings."""
    items = []
    for s in range(n_speakers):
        items.append(AudioItem(Path(f"spoofs/real/{s}-1-0.wav"), 0, str(s), "bonafide", "spoofs"))
        for family in ("tts", "vocoder"):
            items.append(
                AudioItem(Path(f"spoofs/fake/{family}/{s}-{family}-0.wav"), 1, str(s), family, "spoofs")
            )
    for k in range(6):
        for label, family in ((0, "bonafide"), (1, "page")):
            items.append(
                AudioItem(Path(f"neural/{label}/{k}.flac"), label, "LJSpeech", family, "neural", "page")
            )
    items.append(AudioItem(Path("neural/other.flac"), 1, "LJSpeech", "other_page", "neural", "other_page"))
    items.append(AudioItem(Path("neural/other_real.flac"), 0, "p225", "bonafide", "neural", "other_page"))
    return items


def test_folds_keep_the_family_its_recordings_and_its_speakers_out_of_training() -> None:
    items = corpus_items()
    folds = {fold.family: fold for fold in family_folds(items, ["page", "tts"])}
    assert list(folds) == ["page", "tts"]
    split = {id(item): name for name, part in speaker_disjoint_split(items).items() for item in part}

    page = folds["page"]
    assert page.own_recordings
    assert sorted(page.test) == [i for i, item in enumerate(items) if item.collection == "page"]
    trained = {i for i in page.train + page.val}
    # LJSpeech is the test's voice: the other page's LJSpeech fake is out of training too
    assert all(items[i].speaker != "LJSpeech" for i in trained)
    assert not trained & set(page.test) and not set(page.train) & set(page.val)

    tts = folds["tts"]
    assert not tts.own_recordings
    test = [items[i] for i in tts.test]
    assert {item.family for item in test} == {"tts", "bonafide"} and all(split[id(i)] == "test" for i in test)
    assert all(item.source == "spoofs" for item in test)  # the real side is the held-out fakes' dataset
    trained_items = [items[i] for i in tts.train + tts.val]
    assert all(item.family != "tts" for item in trained_items)
    assert not {item.speaker for item in trained_items} & {item.speaker for item in test}
    assert all(split[id(items[i])] == "val" for i in tts.val)
    assert {item.family for item in trained_items} == {"bonafide", "vocoder", "page", "other_page"}


def test_a_fold_whose_fakes_are_one_training_voice_validates_on_a_fifth_of_them() -> None:
    """audio/neural without a generated corpus: held out the codec page (many voices), every fake left is
    LJSpeech's, one speaker, on the training side of the split; validation takes a fifth of those clips."""
    items = [AudioItem(Path(f"libri/{s}.flac"), 0, str(s), "bonafide", "librispeech") for s in range(40)]
    for page in ("vocoder", "tts"):
        for k in range(10):
            items.append(AudioItem(Path(f"{page}/{k}.flac"), 1, "LJSpeech", page, "neural", page))
        items.append(AudioItem(Path(f"{page}/real.flac"), 0, "LJSpeech", "bonafide", "neural", page))
    for k in range(10):
        for label, family in ((0, "bonafide"), (1, "codec")):
            items.append(
                AudioItem(Path(f"codec/{label}/{k}.flac"), label, f"v{k}", family, "neural", "codec")
            )
    split = {id(item): name for name, part in speaker_disjoint_split(items).items() for item in part}
    assert split[id(items[40])] != "val"  # LJSpeech trains, as it does in the real data
    (fold,) = family_folds(items, ["codec"])
    val_fakes = [i for i in fold.val if items[i].label == 1]
    train_fakes = [i for i in fold.train if items[i].label == 1]
    assert len(val_fakes) == 4 and len(train_fakes) == 16  # every fifth of the 20 LJSpeech fakes
    assert all(items[i].speaker == "LJSpeech" for i in val_fakes) and not set(fold.val) & set(fold.train)
    assert all(split[id(items[i])] == "val" for i in fold.val if items[i].label == 0)  # reals as split


def test_folds_refuse_unknown_families_and_one_class_parts() -> None:
    items = corpus_items()
    with pytest.raises(ValueError, match="no fakes of families"):
        family_folds(items, ["festival"])
    no_reals = [item for item in items if not (item.collection == "page" and item.label == 0)]
    with pytest.raises(ValueError, match="fold page: the test part needs real and fake"):
        family_folds(no_reals, ["page"])
    assert [fold.family for fold in family_folds(items)] == ["other_page", "page", "tts", "vocoder"]


def test_folds_that_train_on_the_same_clips_share_their_members() -> None:
    """Holding out either of one voice's two vocoders takes that voice out of training: both folds train on
    the same clips, so the second reuses the first one's members."""
    from training.crosseval import training_folders

    items = [item for item in corpus_items() if item.source == "spoofs"]  # families tts and vocoder
    for family in ("diffwave", "hifigan"):
        for k in range(10):
            items.append(AudioItem(Path(f"{family}/{k}.flac"), 1, "LJSpeech", family, "neural", family))
        items.append(AudioItem(Path(f"{family}/real.flac"), 0, "LJSpeech", "bonafide", "neural", family))
    folds = family_folds(items, ["diffwave", "hifigan", "tts"])
    assert (folds[0].train, folds[0].val) == (folds[1].train, folds[1].val)
    assert training_folders(folds) == {"diffwave": "diffwave", "hifigan": "diffwave", "tts": "tts"}


@pytest.mark.slow
def test_the_sweep_trains_scores_and_reports_every_fold(tmp_path: Path, random_pack: Path) -> None:
    from pipeline.audio import AudioFrontEnd
    from pipeline.pack import ModelPack
    from tests.training.test_recipes import make_audio_dataset
    from training.crosseval import MemberVariant, leave_one_family_out, to_markdown
    from training.fitting import FitConfig

    data = make_audio_dataset(tmp_path / "tones", n_speakers=30)
    pack = ModelPack.load(random_pack)
    front_end = AudioFrontEnd(window_s=2.0, hop_s=1.0)  # the random pack's windows
    variants = (
        MemberVariant("stats", hidden=0, copies=1),
        MemberVariant("raw", feature="waveform", copies=0),
    )
    sweep = leave_one_family_out(
        data, tmp_path / "sweep", variants=variants, pack=pack, front_end=front_end,
        config=FitConfig(epochs=3, batch_size=16, patience=3),
        network_config=FitConfig(epochs=1, batch_size=16, patience=1),
    )  # fmt: skip
    assert [fold.family for fold in sweep.folds] == ["click", "tone"]
    assert set(sweep.scores) == {
        "stats",
        "raw",
        "floor, all training data",
        "test-pack@0.0.1 fusion",
        "test-pack@0.0.1 audio_cnn",
    }
    for scorer, per_family in sweep.scores.items():
        for fold in sweep.folds:
            scores = per_family[fold.family]
            assert scores.probabilities.shape == (len(fold.test),)
            assert np.all((scores.probabilities >= 0) & (scores.probabilities <= 1)), scorer
    figures = sweep.figures("stats", ["click", "tone"])
    assert figures["n_fake"] == sum(sweep.items[i].label for fold in sweep.folds for i in fold.test)
    assert 0.0 <= figures["eer"] <= 1.0
    table = to_markdown(sweep)
    assert table.startswith("| scorer | pooled | click | tone |") and "| stats |" in table
    stored = json.loads((tmp_path / "sweep" / "crosseval.json").read_text())
    assert stored["figures"]["stats"]["pooled"]["eer"] == pytest.approx(figures["eer"])
    assert len(stored["clips"]["stats"]["tone"]) == len(sweep.folds[1].test)
    # the statistics and the raw network's windows are cached: a second sweep reads them back
    assert list((tmp_path / "sweep" / "cache").glob("logmel_stats-*.npz"))
    assert list((tmp_path / "sweep" / "cache").glob("waveform_inputs-*.npz"))
    # a network trained in every fold: a checkpoint per fold
    assert all(
        (tmp_path / "sweep" / "folds" / family / "raw.best.keras").is_file() for family in ("click", "tone")
    )
