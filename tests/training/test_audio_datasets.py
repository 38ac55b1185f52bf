from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.media import load_audio
from training.audio_datasets import (
    AudioItem,
    held_out,
    load_asvspoof2019_la,
    load_audio_dataset,
    load_audio_datasets,
    load_folders,
    load_in_the_wild,
    load_neural,
    neural_speaker,
    speaker_disjoint_split,
    speaker_from_stem,
)

RATE = 16_000
# ../shared/data beside the repository; absent in a fresh clone, so those tests skip.
SHARED_DATA = (Path(__file__).parents[2] / ".." / "shared" / "data").resolve()
ASVSPOOF_DIR = SHARED_DATA / "audio" / "asvspoof2019_format"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no research data at {SHARED_DATA}")


def write_clip(path: Path, seconds: float = 0.2) -> Path:
    """A tiny 220 Hz tone; the format follows the suffix (wav or flac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), RATE)
    return path


# --- ASVspoof 2019 LA, on the real protocol excerpts and utterances ---------------------------------------


@pytest.mark.shared_data
@needs_shared_data
@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ("ASVspoof2019.LA.cm.train.trn.txt", ("LA_T_1272637", 0, "LA_0079", "bonafide")),
        ("ASVspoof2019.LA.cm.dev.trl.txt", ("LA_D_1003356", 1, "LA_0078", "A04")),
        ("ASVspoof2019.LA.cm.eval.trl.txt", ("LA_E_6163791", 1, "LA_0001", "A09")),
    ],
)
def test_asvspoof_real_protocols(
    protocol: str, expected: tuple[str, int, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    protocol_path = ASVSPOOF_DIR / protocol
    n_lines = sum(1 for line in protocol_path.read_text().splitlines() if line.strip())
    with caplog.at_level(logging.WARNING, logger="training.audio_datasets"):
        items = load_asvspoof2019_la(ASVSPOOF_DIR, protocol_path)
    utterance, label, speaker, family = expected
    assert items == [
        AudioItem(ASVSPOOF_DIR / "flac" / f"{utterance}.flac", label, speaker, family, "asvspoof2019_la")
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"Skipped {n_lines - 1} of {n_lines}" in warnings[0].getMessage()
    audio = load_audio(items[0].path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape[0] > RATE  # over a second of speech


# --- ASVspoof 2019 LA, on generated fixtures --------------------------------------------------------------


def test_asvspoof_official_layout_and_missing_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_clip(tmp_path / "ASVspoof2019_LA_train" / "flac" / "LA_T_0000001.flac")
    write_clip(tmp_path / "flac" / "LA_T_0000002.flac")
    protocol = tmp_path / "protocol.txt"
    protocol.write_text(
        "LA_0079 LA_T_0000001 - - bonafide\n"
        "\n"
        "LA_0080 LA_T_0000002 - A01 spoof\n"
        "LA_0080 LA_T_0000003 - A02 spoof\n"
        "LA_0081 LA_T_0000004 - - bonafide\n"
    )
    with caplog.at_level(logging.WARNING, logger="training.audio_datasets"):
        items = load_asvspoof2019_la(tmp_path, protocol)
    assert [(i.path.parent.parent.name, i.label, i.speaker, i.family) for i in items] == [
        ("ASVspoof2019_LA_train", 0, "LA_0079", "bonafide"),
        (tmp_path.name, 1, "LA_0080", "A01"),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 2 of 4" in warnings[0]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("LA_0079 LA_T_0000009 - bonafide", "expected 5 fields"),
        ("LA_0079 LA_T_0000009 - A01 spoof extra", "expected 5 fields"),
        ("LA_0079 LA_T_0000009 - A01 fake", "key must be one of"),
    ],
)
def test_asvspoof_malformed_line_names_its_number(tmp_path: Path, bad_line: str, message: str) -> None:
    write_clip(tmp_path / "flac" / "LA_T_0000001.flac")
    protocol = tmp_path / "protocol.txt"
    protocol.write_text(f"LA_0079 LA_T_0000001 - - bonafide\n\n{bad_line}\n")
    with pytest.raises(ValueError, match=rf"protocol\.txt:3: {message}"):
        load_asvspoof2019_la(tmp_path, protocol)


# --- In-the-Wild ------------------------------------------------------------------------------------------


def test_in_the_wild_meta(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_clip(tmp_path / "0.wav")
    write_clip(tmp_path / "1.wav")
    (tmp_path / "meta.csv").write_text(
        "file,speaker,label\n0.wav,Alec Guinness,spoof\n1.wav,Alec Guinness,bona-fide\n2.wav,Ayn Rand,spoof\n"
    )
    with caplog.at_level(logging.WARNING, logger="training.audio_datasets"):
        items = load_in_the_wild(tmp_path)
    assert items == [
        AudioItem(tmp_path / "0.wav", 1, "Alec Guinness", "unknown", "in_the_wild"),
        AudioItem(tmp_path / "1.wav", 0, "Alec Guinness", "bonafide", "in_the_wild"),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 1 of 3" in warnings[0]


def test_in_the_wild_bad_label_and_header(tmp_path: Path) -> None:
    write_clip(tmp_path / "0.wav")
    (tmp_path / "meta.csv").write_text("file,speaker,label\n0.wav,A,spoof\n0.wav,A,bonafide\n")
    with pytest.raises(ValueError, match=r"meta\.csv:3: label must be one of"):
        load_in_the_wild(tmp_path)
    (tmp_path / "meta.csv").write_text("path,speaker,label\n0.wav,A,spoof\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_in_the_wild(tmp_path)


# --- real/ and fake/ folders ------------------------------------------------------------------------------


def test_load_folders(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for relative in (
        "Real/19-198-0001.wav",
        "real/nested/alice.flac",
        "fake/espeak/19-espeak-0.wav",
        "fake/griffin_lim/26-griffin_lim-3.wav",
        "FAKE/loose.wav",
        "other/19-198-0002.wav",  # neither real/ nor fake/
    ):
        write_clip(root / relative)
    (root / "fake" / "espeak" / "notes.txt").write_text("not audio")

    items = {item.path.relative_to(root).as_posix(): item for item in load_folders(root)}
    assert {k: (v.label, v.speaker, v.family, v.source) for k, v in items.items()} == {
        "Real/19-198-0001.wav": (0, "19", "bonafide", "corpus"),
        "real/nested/alice.flac": (0, "alice", "bonafide", "corpus"),
        "fake/espeak/19-espeak-0.wav": (1, "19", "espeak", "corpus"),
        "fake/griffin_lim/26-griffin_lim-3.wav": (1, "26", "griffin_lim", "corpus"),
        "FAKE/loose.wav": (1, "loose", "fake", "corpus"),
    }
    assert {item.source for item in load_folders(root, source="mine")} == {"mine"}


@pytest.mark.parametrize(
    ("stem", "speaker"),
    [
        ("19-198-0001", "19"),
        ("1088-129236-0000", "1088"),
        ("19-mel_inversion-0", "19"),
        ("1688-142285-0000_world", "1688-142285-0000_world"),
        ("LA_T_1138215", "LA_T_1138215"),
        ("19-198", "19-198"),
    ],
)
def test_speaker_from_stem(stem: str, speaker: str) -> None:
    assert speaker_from_stem(stem) == speaker


# --- speaker-disjoint split -------------------------------------------------------------------------------


def synthetic_items(n_speakers: int, per_speaker: int = 3) -> list[AudioItem]:
    return [
        AudioItem(Path(f"{s}-{k}.wav"), k % 2, f"spk{s}", "bonafide" if k % 2 == 0 else "x", "test")
        for s in range(n_speakers)
        for k in range(per_speaker)
    ]


def test_split_is_speaker_disjoint_stable_and_near_the_fractions() -> None:
    items = synthetic_items(600)
    splits = speaker_disjoint_split(items)
    assert list(splits) == ["train", "val", "test"]
    speakers = {name: {item.speaker for item in split} for name, split in splits.items()}
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"])
    assert not speakers["val"] & speakers["test"]
    assert sum(len(split) for split in splits.values()) == len(items)
    for name, fraction in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=True):
        assert abs(len(speakers[name]) / 600 - fraction) < 0.06
    # stable: the same speakers land in the same split whatever the order or the company
    reordered = speaker_disjoint_split(list(reversed(items))[: len(items) // 2])
    for name, split in reordered.items():
        assert {item.speaker for item in split} <= speakers[name]


def test_split_fractions_are_checked() -> None:
    items = synthetic_items(5)
    assert speaker_disjoint_split(items, (1.0, 0.0, 0.0))["train"] == items
    assert speaker_disjoint_split([], (0.5, 0.25, 0.25)) == {"train": [], "val": [], "test": []}
    for bad in ((0.7, 0.3), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)):
        with pytest.raises(ValueError, match="fractions"):
            speaker_disjoint_split(items, bad)


# --- audio/neural labels.csv ------------------------------------------------------------------------------

NEURAL_ROWS = (
    "path,label,source,system,corpus\n"
    "real/lfr_codec_audios_demo__T5-TTS__p249_sample_p249_167_with_ref_p249_005_idx_58_GT.flac,real,lfr_codec,GT,VCTK/MLS/DAPS\n"
    "fake/lfr_codec_audios_demo__T5-TTS__p249_sample_p249_167_with_ref_p249_005_idx_58_DAC-7.75kbps.flac,fake,lfr_codec,T5-TTS:DAC-7.75kbps,VCTK/MLS/DAPS\n"
    "fake/lfr_codec_audios_demo__codecs_reconstruction__cml__sp__5870_4006_000050_None_12.1_GT.flac,fake,lfr_codec,codec:DAC,VCTK/MLS/DAPS\n"
    "fake/lfr_codec_audios_demo__codecs_reconstruction__daps__m10_script2_cleanraw_00000023_SpectralCodec.flac,fake,lfr_codec,codec:SpectralCodec,VCTK/MLS/DAPS\n"
    "real/flowvoc_Ground-truth__LJ001-0010.flac,real,flowvoc,GT,LJSpeech\n"
    "fake/flowvoc_TTS__WaveGlow__LJ001-0002.flac,fake,flowvoc,TTS:WaveGlow,LJSpeech\n"
    "fake/missing.flac,fake,flowvoc,TTS:WaveGlow,LJSpeech\n"
)  # fmt: skip


def write_neural(root: Path, rows: str = NEURAL_ROWS) -> Path:
    for line in rows.splitlines()[1:]:
        path = line.split(",")[0]
        if "missing" not in path:
            write_clip(root / path)
    (root / "labels.csv").write_text(rows)
    return root


def test_load_neural(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_neural(tmp_path / "neural")
    with caplog.at_level(logging.WARNING, logger="training.audio_datasets"):
        items = load_neural(root)
    assert [(i.label, i.speaker, i.family, i.source, i.collection, i.corpus) for i in items] == [
        (0, "p249", "bonafide", "neural", "lfr_codec", "VCTK/MLS/DAPS"),
        (1, "p249", "lfr_codec", "neural", "lfr_codec", "VCTK/MLS/DAPS"),
        (1, "mls:sp:5870", "lfr_codec", "neural", "lfr_codec", "VCTK/MLS/DAPS"),
        (1, "m10", "lfr_codec", "neural", "lfr_codec", "VCTK/MLS/DAPS"),
        (0, "LJSpeech", "bonafide", "neural", "flowvoc", "LJSpeech"),
        (1, "LJSpeech", "flowvoc", "neural", "flowvoc", "LJSpeech"),
    ]
    assert (
        items[5].system == "TTS:WaveGlow"
        and items[5].path == root / "fake/flowvoc_TTS__WaveGlow__LJ001-0002.flac"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 1 of 7" in warnings[0]
    assert load_audio_dataset(root) == items  # labels.csv is recognised


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("path,label,source,corpus\nx.flac,fake,a,b\n", "lacks column"),
        ("path,label,source,system,corpus\nx.flac,spoof,a,s,b\n", r"labels\.csv:2: label must be one of"),
        ("path,label,source,system,corpus\nx.flac,fake,,s,b\n", r"labels\.csv:2: empty field"),
    ],
)
def test_load_neural_refuses_malformed_tables(tmp_path: Path, rows: str, message: str) -> None:
    (tmp_path / "labels.csv").write_text(rows)
    with pytest.raises(ValueError, match=message):
        load_neural(tmp_path)


@pytest.mark.parametrize(
    ("name", "corpus", "speaker"),
    [("hifigan_samples__ms__GT__ms_gt_1.flac", "LJSpeech/VCTK", "hifigan:ms"),
     ("hifigan_samples__e2e__HGAN_V1__e2e_hgan_v1_1.flac", "LJSpeech/VCTK", "LJSpeech"),
     ("lfr_codec_audios_demo__codecs_reconstruction__cml__du__4429_3991_000756-0001_None_17.3_GT.flac",
      "VCTK/MLS/DAPS", "mls:du:4429"),
     ("glowtts_wavs__lj_01_gt.flac", "LJSpeech", "LJSpeech")],
)  # fmt: skip
def test_neural_speaker(name: str, corpus: str, speaker: str) -> None:
    assert neural_speaker(name, corpus) == speaker


def test_load_audio_dataset_tells_the_layouts_apart(tmp_path: Path) -> None:
    write_clip(tmp_path / "spoofs" / "real" / "19-198-0001.wav")
    write_clip(tmp_path / "spoofs" / "fake" / "espeak" / "19-espeak-0.wav")
    write_clip(tmp_path / "real" / "librispeech" / "26-495-0000.flac")
    write_clip(tmp_path / "elsewhere" / "26-495-0001.flac")  # not inside real/: no label to give it
    spoofs = load_audio_dataset(tmp_path / "spoofs")
    assert [(i.label, i.family, i.source) for i in spoofs] == [
        (1, "espeak", "spoofs"),
        (0, "bonafide", "spoofs"),
    ]
    (libri,) = load_audio_dataset(tmp_path / "real" / "librispeech")
    assert (libri.label, libri.speaker, libri.family, libri.source) == (0, "26", "bonafide", "librispeech")
    assert load_audio_dataset(tmp_path / "elsewhere") == []
    with pytest.raises(FileNotFoundError):
        load_audio_dataset(tmp_path / "absent")
    both = load_audio_datasets([tmp_path / "spoofs", tmp_path / "real" / "librispeech"])
    assert both == [*spoofs, libri]
    write_clip(tmp_path / "other" / "spoofs" / "real" / "1-1-1.wav")
    with pytest.raises(ValueError, match="different names"):
        load_audio_datasets([tmp_path / "spoofs", tmp_path / "other" / "spoofs"])


def test_a_held_out_family_takes_its_collection_along() -> None:
    real_of_page = AudioItem(Path("r.flac"), 0, "LJSpeech", "bonafide", "neural", collection="flowvoc")
    fake_of_page = AudioItem(Path("f.flac"), 1, "LJSpeech", "flowvoc", "neural", collection="flowvoc")
    shared_real = AudioItem(Path("s.wav"), 0, "19", "bonafide", "spoofs")
    generated = AudioItem(Path("g.wav"), 1, "19", "espeak", "spoofs")
    assert [held_out(i, ["flowvoc"]) for i in (real_of_page, fake_of_page, shared_real, generated)] == [
        True, True, False, False,
    ]  # fmt: skip
    assert [held_out(i, {"espeak"}) for i in (real_of_page, fake_of_page, shared_real, generated)] == [
        False, False, False, True,
    ]  # fmt: skip


@pytest.mark.shared_data
@needs_shared_data
def test_neural_labels_of_the_shared_data() -> None:
    items = load_audio_dataset(SHARED_DATA / "audio" / "neural")
    assert len(items) == 834 and all(i.path.is_file() for i in items)
    fakes = [i for i in items if i.label == 1]
    assert {i.family for i in fakes} == {"diffwave", "flowvoc", "glowtts", "hifigan", "lfr_codec"}
    assert all(i.family == i.collection for i in fakes)
    assert {i.collection for i in items if i.label == 0} == {
        i.family for i in fakes
    }  # every page has recordings
    # LJSpeech is one voice: all of its clips fall into one split
    splits = speaker_disjoint_split(items)
    assert sum(any(i.speaker == "LJSpeech" for i in part) for part in splits.values()) == 1
    libri = load_audio_dataset(SHARED_DATA / "audio" / "real" / "librispeech")
    assert len(libri) == 251 and {i.label for i in libri} == {0} and len({i.speaker for i in libri}) == 251
