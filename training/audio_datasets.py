"""Loaders that turn anti-spoofing corpora on disk into one flat list of labelled clips.

Five layouts are read: the ASVspoof 2019 LA countermeasure protocol, In-the-Wild's ``meta.csv``, the
``labels.csv`` of ``../shared/data/audio/neural`` (neural vocoders, codecs and TTS with their recordings),
plain ``real/`` / ``fake/`` folders (what :func:`training.spoofs.build_spoof_dataset` writes), and a folder
of bona fide speech inside a ``real/`` directory (LibriSpeech). :func:`load_audio_dataset` tells them
apart; every loader returns :class:`AudioItem` rows and never decodes audio; decoding stays in
:mod:`pipeline.media`.

:func:`speaker_disjoint_split` then assigns whole speakers to train / val / test, so a detector is never
scored on a voice it was trained on.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)

LABEL_BONAFIDE = 0
LABEL_SPOOF = 1
FAMILY_BONAFIDE = "bonafide"
# In-the-Wild does not say which tool made each fake.
FAMILY_UNKNOWN = "unknown"

SOURCE_ASVSPOOF2019_LA = "asvspoof2019_la"
SOURCE_IN_THE_WILD = "in_the_wild"

# ../shared/data/audio/neural/labels.csv: "path,label,source,system,corpus" (labels real / fake). ``source``
# is the demo page a clip was taken from, which is also its generator family: the recordings a page's
# fakes were made from come from the same page.
NEURAL_LABELS_FILE = "labels.csv"
_NEURAL_COLUMNS = ("path", "label", "source", "system", "corpus")
_NEURAL_LABELS = {"real": LABEL_BONAFIDE, "fake": LABEL_SPOOF}
# Speakers the neural clips' names give away: VCTK (p225 ...), Multilingual LibriSpeech ("cml__LANG__SPEAKER_"),
# DAPS (f1 ... m10). Elsewhere the speaker is the corpus: LJSpeech is one voice. The HiFi-GAN page mixes
# LJSpeech and VCTK: its "ms" (multi-speaker) set is VCTK, whose speakers it does not name, and its other
# sets (single speaker, end-to-end, ablation) are LJSpeech, as in the paper (Kong et al., 2020).
_NEURAL_SPEAKERS = (
    re.compile(r"(?:^|_)(?P<speaker>p\d{3})_sample_"),
    re.compile(r"__cml__(?P<lang>[a-z]{2})__(?P<speaker>\d+)_"),
    re.compile(r"__daps__(?P<speaker>[fm]\d+)_"),
)
_NEURAL_MULTI_SPEAKER_SET = re.compile(r"^(?P<page>[^_]+)_\w*?__ms__")

# ASVspoof 2019 LA CM protocol: "SPEAKER_ID AUDIO_FILE_NAME - SYSTEM_ID KEY" (ASVspoof 2019 evaluation
# plan, section on protocols); SYSTEM_ID is "-" for bona fide speech and A01..A19 for spoofs.
_ASVSPOOF_FIELDS = 5
_ASVSPOOF_KEYS = {"bonafide": LABEL_BONAFIDE, "spoof": LABEL_SPOOF}
_ASVSPOOF_AUDIO_SUFFIX = ".flac"
# The official archive puts audio in LA/ASVspoof2019_LA_{train,dev,eval}/flac/.
_ASVSPOOF_OFFICIAL_GLOB = "ASVspoof2019_LA_*/flac"

# In-the-Wild (Müller et al., Interspeech 2022) meta.csv: "file,speaker,label".
_ITW_COLUMNS = ("file", "speaker", "label")
_ITW_LABELS = {"bona-fide": LABEL_BONAFIDE, "spoof": LABEL_SPOOF}

_CLASS_DIRS = {"real": LABEL_BONAFIDE, "fake": LABEL_SPOOF}
_FOLDER_FAMILY_FAKE = "fake"
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma"})

# LibriSpeech names utterances SPEAKER-CHAPTER-UTT (e.g. 19-198-0001). The middle field also accepts
# word characters so that generated fakes named SPEAKER-FAMILY-N (e.g. 19-griffin_lim-0) keep the speaker
# of the real clip they were made from.
_LIBRISPEECH_STEM = re.compile(r"^(?P<speaker>[A-Za-z0-9]+)-(?P<middle>\w+)-(?P<utt>\d+)$")

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
_FRACTION_TOLERANCE = 1e-6
_HASH_HEX_DIGITS = 13  # 52 bits of the sha1: exact in a float64 mantissa, so the position stays below 1


@dataclass(frozen=True)
class AudioItem:
    """One labelled clip on disk.

    ``label`` is 1 for spoof / fake and 0 for bona fide / real. ``family`` names the generator (``A01``
    for ASVspoof, a folder name for folder datasets, the demo page for ``audio/neural``) and is
    ``bonafide`` for real speech. ``source`` names the dataset the clip came from. ``collection`` names the
    family whose own recordings a real clip is (``audio/neural``: a demo page's ground truth, and that
    page's fakes), empty where real clips are shared by every family; holding a family out of training
    holds out its collection too. ``system`` (the generator within the family) and ``corpus`` (of the
    recordings) are what ``labels.csv`` says, where a dataset says it.
    """

    path: Path
    label: int
    speaker: str
    family: str
    source: str
    collection: str = ""
    system: str = ""
    corpus: str = ""


def speaker_from_stem(stem: str) -> str:
    """The speaker id in a file stem: the first field of ``SPEAKER-CHAPTER-UTT``, else the whole stem."""
    match = _LIBRISPEECH_STEM.match(stem)
    return match.group("speaker") if match else stem


def _asvspoof_audio_dirs(root: Path) -> list[Path]:
    return [root / "flac", *sorted(p for p in root.glob(_ASVSPOOF_OFFICIAL_GLOB) if p.is_dir())]


def load_asvspoof2019_la(root: str | Path, protocol_file: str | Path) -> list[AudioItem]:
    """Read an ASVspoof 2019 LA countermeasure protocol.

    Each line is ``SPEAKER UTT - SYSTEM KEY`` (``LA_0079 LA_T_1004644 - A01 spoof``). Audio is looked up
    at ``root/flac/UTT.flac`` and then in the official ``root/ASVspoof2019_LA_*/flac/`` folders. Entries
    whose audio is missing are skipped with one warning giving their count (protocol excerpts list more
    utterances than are shipped). Blank lines are ignored.

    Raises ``ValueError`` naming the line number for a line that is not five fields or whose key is
    neither ``bonafide`` nor ``spoof``; ``FileNotFoundError`` when the protocol file does not exist.
    """
    root, protocol_file = Path(root), Path(protocol_file)
    audio_dirs = _asvspoof_audio_dirs(root)
    items: list[AudioItem] = []
    missing = 0
    with protocol_file.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != _ASVSPOOF_FIELDS:
                raise ValueError(
                    f"{protocol_file}:{line_number}: expected {_ASVSPOOF_FIELDS} fields "
                    f"'SPEAKER UTT - SYSTEM KEY', got {len(fields)}: {line.strip()!r}"
                )
            speaker, utterance, _, system, key = fields
            if key not in _ASVSPOOF_KEYS:
                raise ValueError(
                    f"{protocol_file}:{line_number}: key must be one of {sorted(_ASVSPOOF_KEYS)}, got {key!r}"
                )
            label = _ASVSPOOF_KEYS[key]
            path = next(
                (p for d in audio_dirs if (p := d / f"{utterance}{_ASVSPOOF_AUDIO_SUFFIX}").is_file()), None
            )
            if path is None:
                missing += 1
                continue
            family = FAMILY_BONAFIDE if label == LABEL_BONAFIDE else system
            items.append(AudioItem(path, label, speaker, family, SOURCE_ASVSPOOF2019_LA))
    if missing:
        logger.warning(
            "Skipped %d of %d entries in %s whose audio is not under %s",
            missing,
            missing + len(items),
            protocol_file,
            root,
        )
    return items


def _table_reader(f: TextIO, path: Path, columns: Sequence[str]) -> csv.DictReader[str]:
    """A reader of the CSV ``f`` (read from ``path``) whose header has every one of ``columns``."""
    reader = csv.DictReader(f)
    absent = [c for c in columns if c not in (reader.fieldnames or [])]
    if absent:
        raise ValueError(f"{path}: header lacks column(s) {absent}; expected {','.join(columns)}")
    return reader


def load_in_the_wild(root: str | Path) -> list[AudioItem]:
    """Read In-the-Wild's ``root/meta.csv`` (header ``file,speaker,label``; labels ``bona-fide``/``spoof``).

    Audio is at ``root/<file>``. Spoofs get the family ``unknown``: the dataset does not name the tool.
    Rows whose audio is missing are skipped with one warning giving their count. Raises ``ValueError``
    for a missing column or an unknown label (naming the line number).
    """
    root = Path(root)
    meta = root / "meta.csv"
    items: list[AudioItem] = []
    missing = 0
    with meta.open(encoding="utf-8", newline="") as f:
        reader = _table_reader(f, meta, _ITW_COLUMNS)
        for row in reader:
            line_number = reader.line_num
            label_text = (row["label"] or "").strip()
            if label_text not in _ITW_LABELS:
                raise ValueError(
                    f"{meta}:{line_number}: label must be one of {sorted(_ITW_LABELS)}, got {label_text!r}"
                )
            file_name, speaker = (row["file"] or "").strip(), (row["speaker"] or "").strip()
            if not file_name:
                raise ValueError(f"{meta}:{line_number}: empty 'file' field")
            path = root / file_name
            if not path.is_file():
                missing += 1
                continue
            label = _ITW_LABELS[label_text]
            family = FAMILY_BONAFIDE if label == LABEL_BONAFIDE else FAMILY_UNKNOWN
            items.append(AudioItem(path, label, speaker, family, SOURCE_IN_THE_WILD))
    if missing:
        logger.warning(
            "Skipped %d of %d rows in %s whose audio is missing", missing, missing + len(items), meta
        )
    return items


def load_folders(root: str | Path, *, source: str | None = None) -> list[AudioItem]:
    """Every audio file (by suffix) below a ``real/`` or ``fake/`` directory (any case) under ``root``.

    The class comes from the outermost such directory below ``root``. ``family`` is the directory right
    below ``fake/`` when the file sits deeper, else ``fake``; real files get ``bonafide``. ``speaker`` is
    the first field of a ``SPEAKER-CHAPTER-UTT`` stem (which also matches generated ``SPEAKER-FAMILY-N``
    fakes), else the whole stem. ``source`` defaults to the name of ``root``. Sorted by path.
    """
    root = Path(root)
    source = source if source is not None else root.name
    items: list[AudioItem] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        parts = path.relative_to(root).parts[:-1]
        class_index = next((i for i, part in enumerate(parts) if part.lower() in _CLASS_DIRS), None)
        if class_index is None:
            continue
        label = _CLASS_DIRS[parts[class_index].lower()]
        if label == LABEL_BONAFIDE:
            family = FAMILY_BONAFIDE
        else:
            family = parts[class_index + 1] if class_index + 1 < len(parts) else _FOLDER_FAMILY_FAKE
        items.append(AudioItem(path, label, speaker_from_stem(path.stem), family, source))
    return items


def neural_speaker(file_name: str, corpus: str) -> str:
    """The speaker of an ``audio/neural`` clip: from its name where it says (VCTK, MLS, DAPS), else the corpus.

    A clip of a page that mixes corpora (``LJSpeech/VCTK``) belongs to the first of them, unless its name
    marks a multi-speaker set (``__ms__``): those clips are one group per page (``hifigan:ms``).
    """
    for pattern in _NEURAL_SPEAKERS:
        match = pattern.search(file_name)
        if match:
            lang = match.groupdict().get("lang")
            return f"mls:{lang}:{match.group('speaker')}" if lang else match.group("speaker")
    multi = _NEURAL_MULTI_SPEAKER_SET.match(file_name)
    if multi:
        return f"{multi.group('page')}:ms"
    return corpus.split("/")[0]


def load_neural(root: str | Path, *, source: str | None = None) -> list[AudioItem]:
    """Read ``root/labels.csv`` (header ``path,label,source,system,corpus``; labels ``real`` / ``fake``).

    Audio is at ``root/<path>``. The csv's ``source`` (the demo page) is the family of its fakes and the
    ``collection`` of all its clips, real and fake; ``speaker`` comes from :func:`neural_speaker`.
    ``source`` (the dataset) defaults to the name of ``root``. Rows whose audio is missing are skipped with
    one warning giving their count. Raises ``ValueError`` for a missing column, an unknown label or an
    empty field (naming the line number).
    """
    root = Path(root)
    dataset = source if source is not None else root.name
    table = root / NEURAL_LABELS_FILE
    items: list[AudioItem] = []
    missing = 0
    with table.open(encoding="utf-8", newline="") as f:
        reader = _table_reader(f, table, _NEURAL_COLUMNS)
        for row in reader:
            fields = {c: (row[c] or "").strip() for c in _NEURAL_COLUMNS}
            if fields["label"] not in _NEURAL_LABELS:
                raise ValueError(
                    f"{table}:{reader.line_num}: label must be one of {sorted(_NEURAL_LABELS)}, "
                    f"got {fields['label']!r}"
                )
            empty = [c for c in ("path", "source") if not fields[c]]
            if empty:
                raise ValueError(f"{table}:{reader.line_num}: empty field(s) {empty}")
            path = root / fields["path"]
            if not path.is_file():
                missing += 1
                continue
            label = _NEURAL_LABELS[fields["label"]]
            family = FAMILY_BONAFIDE if label == LABEL_BONAFIDE else fields["source"]
            speaker = neural_speaker(path.name, fields["corpus"] or fields["source"])
            items.append(AudioItem(path, label, speaker, family, dataset, fields["source"], fields["system"],
                                   fields["corpus"]))  # fmt: skip
    if missing:
        logger.warning(
            "Skipped %d of %d rows in %s whose audio is missing", missing, missing + len(items), table
        )
    return items


def load_bonafide(root: str | Path, *, source: str | None = None) -> list[AudioItem]:
    """Every audio file (by suffix) below ``root``, all bona fide: a corpus of real speech (LibriSpeech).

    ``speaker`` is the first field of a ``SPEAKER-CHAPTER-UTT`` stem, else the whole stem; ``source``
    defaults to the name of ``root``. Sorted by path.
    """
    root = Path(root)
    source = source if source is not None else root.name
    return [
        AudioItem(path, LABEL_BONAFIDE, speaker_from_stem(path.stem), FAMILY_BONAFIDE, source)
        for path in sorted(root.rglob("*"))
        if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()
    ]


def load_audio_dataset(root: str | Path) -> list[AudioItem]:
    """The labelled clips of one dataset folder, whichever layout it has.

    ``labels.csv`` with the ``audio/neural`` header: :func:`load_neural`; ``meta.csv``: In-the-Wild;
    ``real/`` and ``fake/`` folders below ``root``: :func:`load_folders`; a folder that itself sits inside a
    ``real/`` directory (``../shared/data/audio/real/librispeech``): :func:`load_bonafide`. Empty when
    ``root`` holds no labelled clip; raises ``FileNotFoundError`` when it does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset folder {root}")
    if (root / NEURAL_LABELS_FILE).is_file():
        return load_neural(root)
    if (root / "meta.csv").is_file():
        return load_in_the_wild(root)
    items = load_folders(root)
    if not items and any(part.lower() == "real" for part in root.resolve().parts):
        items = load_bonafide(root)
    return items


def held_out(item: AudioItem, families: Iterable[str]) -> bool:
    """Whether ``item`` belongs to one of ``families``: a fake of the family, or a clip of its collection."""
    families = set(families)
    return item.family in families or item.collection in families


def load_audio_datasets(roots: Iterable[str | Path]) -> list[AudioItem]:
    """The clips of several dataset folders (:func:`load_audio_dataset`), in the order given.

    Raises ``ValueError`` when two folders share a name: items name their dataset by the folder's name.
    """
    folders = [Path(root) for root in roots]
    names = [folder.name for folder in folders]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"dataset folders must have different names; repeated: {repeated}")
    return [item for folder in folders for item in load_audio_dataset(folder)]


def _speaker_position(speaker: str) -> float:
    """A stable number in [0, 1) for a speaker: the leading bits of the sha1 of its id."""
    digest = hashlib.sha1(speaker.encode("utf-8")).hexdigest()
    return int(digest[:_HASH_HEX_DIGITS], 16) / float(16**_HASH_HEX_DIGITS)


def speaker_disjoint_split(
    items: Iterable[AudioItem], fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS
) -> dict[str, list[AudioItem]]:
    """Assign whole speakers to ``train`` / ``val`` / ``test`` by the sha1 of the speaker id.

    A speaker's position in [0, 1) is fixed by its id, so the split is stable across runs, machines and
    added data; no speaker appears in two splits. The fractions apply to speakers, not clips, and are met
    only on average (a handful of speakers may all land in one split). All three keys are always present;
    item order within a split follows the input. Raises ``ValueError`` unless ``fractions`` are three
    non-negative numbers summing to 1.
    """
    if len(fractions) != len(SPLIT_NAMES) or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be {len(SPLIT_NAMES)} non-negative numbers, got {tuple(fractions)}")
    if abs(sum(fractions) - 1.0) > _FRACTION_TOLERANCE:
        raise ValueError(f"fractions must sum to 1, got {sum(fractions)}")
    bounds = (fractions[0], fractions[0] + fractions[1])
    splits: dict[str, list[AudioItem]] = {name: [] for name in SPLIT_NAMES}
    positions: dict[str, float] = {}
    for item in items:
        position = positions.get(item.speaker)
        if position is None:
            position = positions[item.speaker] = _speaker_position(item.speaker)
        name = "train" if position < bounds[0] else "val" if position < bounds[1] else "test"
        splits[name].append(item)
    return splits
