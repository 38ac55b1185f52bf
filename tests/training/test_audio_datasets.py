from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.media import load_audio
from training.audio_datasets import (
    AudioItem,
    load_asvspoof2019_la,
    load_folders,
    load_in_the_wild,
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
