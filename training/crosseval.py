"""Leave-one-family-out evaluation of audio detectors: train without a generator family, test on it.

For every spoof family of the datasets (each ``source`` of ``audio/neural``, each ``fake/<family>`` of a
spoof corpus), a fold trains without it and scores it:

- **test**: a family with recordings of its own (``AudioItem.collection``: an ``audio/neural`` demo page)
  is tested on all of its clips, its recordings being the real side; a family whose real clips are shared
  (a generated corpus) is tested on its fakes of the test speakers and the real clips of those speakers
  from the same dataset.
- **training**: every other clip except the held-out family's (fakes and collection) and every clip of a
  speaker the test holds (LJSpeech's one voice, say); of these, the speakers of the ``val`` part of
  ``speaker_disjoint_split`` validate (early stopping, calibration) and the others train. Where the
  validation speakers lack a class, every fifth training clip of that class validates instead.

Scorers: member variants trained per fold and Platt-scaled on the fold's validation windows (the
``logmel_stats`` head over window statistics; the networks ``audio_cnn`` over log-mel spectrograms and
``raw_cnn`` over the waveform, RawNet2-style), the issue's floor (a logistic regression over per-band
mean, spread and change), and a fixed pack (the bundled one unless told otherwise), which never trains
here: a family it was trained on is not held out for it, and the tables say which. Clip scores are the
mean of window probabilities, as ``deepscan detect`` computes them. Per family: EER and AUC of its fold;
pooled: the EER over the held-out clips of all folds (and of each dataset's folds) together, each fold
scored by its own model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import AudioFrontEnd
from pipeline.ensemble import aggregate
from pipeline.pack import ModelPack
from training.audio_datasets import AudioItem, held_out, load_audio_datasets, speaker_disjoint_split
from training.audio_windows import WindowFeatures, balanced_batches, window_features
from training.fitting import FitConfig, fit_member
from training.logmel_stats import DEFAULT_HIDDEN, FLOOR_STATISTICS, fit_floor, fit_head
from training.metrics import eer, roc_auc
from training.recipes import (
    DataDirs,
    audio_member_builder,
    clip_scores,
    data_dirs_of,
    fit_aggregation,
    score_audio_clips,
)

logger = logging.getLogger(__name__)

POOLED = "pooled"
FLOOR = "floor"
# the floor was trained on LibriSpeech and audio/neural only (#16)
FLOOR_SOURCES = ("librispeech", "neural")


@dataclass(frozen=True)
class MemberVariant:
    """A member recipe the sweep trains in every fold: a ``logmel_stats`` head over the windows' statistics,
    or the network that reads ``feature`` (``recipes.audio_member_builder``) over the windows themselves."""

    name: str
    feature: str | None = None  # None: the logmel_stats head
    hidden: int = DEFAULT_HIDDEN  # logmel_stats only
    copies: int = 1  # processed copies of every training clip (0: the clips as they are)


# Fixed before the sweep was first run: the member as proposed, and what augmentation and the hidden layer
# add. The networks were added on 2026-12-04, each with one processed copy of every training clip.
VARIANTS = (
    MemberVariant("logmel_stats"),
    MemberVariant("logmel_stats, no copies", copies=0),
    MemberVariant("logmel_stats, logistic", hidden=0),
    MemberVariant("audio_cnn", feature="logmel"),
    MemberVariant("raw_cnn", feature="waveform"),
)
SWEEP_CONFIG = FitConfig(epochs=60, batch_size=128, learning_rate=3e-3, patience=8)
NETWORK_SWEEP_CONFIG = FitConfig(epochs=12, batch_size=32, learning_rate=1e-3, patience=4)


def variants_named(names: Sequence[str]) -> list[MemberVariant]:
    """The ``VARIANTS`` of these names, in that order; all of them for no names."""
    by_name = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown member variants {unknown}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in names] if names else list(VARIANTS)


@dataclass(frozen=True)
class Fold:
    """One held-out family: indices into the sweep's items."""

    family: str
    train: list[int]
    val: list[int]
    test: list[int]
    own_recordings: bool  # the real side of the test is the family's own collection


VALIDATION_FALLBACK_EVERY = 5  # a class missing from the validation speakers: every 5th training clip of it


def _validate_every_class(
    items: Sequence[AudioItem], train: list[int], val: list[int]
) -> tuple[list[int], list[int]]:
    """(train, val) where a class the validation speakers lack (all of a fold's remaining fakes can be one
    voice, LJSpeech) takes every ``VALIDATION_FALLBACK_EVERY``-th training clip of that class to validation.
    Those clips share speakers with training: only early stopping and calibration see them, never the test.
    """
    for label in (0, 1):
        if any(items[i].label == label for i in val):
            continue
        moved = set([i for i in train if items[i].label == label][::VALIDATION_FALLBACK_EVERY])
        train, val = [i for i in train if i not in moved], sorted([*val, *moved])
    return train, val


def family_folds(items: Sequence[AudioItem], families: Sequence[str] | None = None) -> list[Fold]:
    """The folds of ``families`` (default: every family with a fake among ``items``), in that order.

    Raises ``ValueError`` for a family without fakes, or a fold whose test, training or validation part
    has no real or no fake clip.
    """
    splits = speaker_disjoint_split(items)
    split_of = {id(item): name for name, part in splits.items() for item in part}
    known = sorted({item.family for item in items if item.label == 1})
    families = list(families) if families else known
    unknown = [f for f in families if f not in known]
    if unknown:
        raise ValueError(f"no fakes of families {unknown}; the data has {', '.join(known)}")
    folds = []
    for family in families:
        own = any(item.collection == family for item in items)
        if own:
            test = [i for i, item in enumerate(items) if held_out(item, [family])]
        else:
            fake_sources = {item.source for item in items if item.family == family}
            test = [
                i
                for i, item in enumerate(items)
                if split_of[id(item)] == "test"
                and (
                    item.family == family
                    or (item.label == 0 and not item.collection and item.source in fake_sources)
                )
            ]
        test_speakers = {items[i].speaker for i in test}
        rest = [
            i
            for i, item in enumerate(items)
            if not held_out(item, [family]) and item.speaker not in test_speakers
        ]
        val = [i for i in rest if split_of[id(items[i])] == "val"]
        train = [i for i in rest if split_of[id(items[i])] != "val"]
        train, val = _validate_every_class(items, train, val)
        for part, indices in (("test", test), ("training", train), ("validation", val)):
            if {items[i].label for i in indices} != {0, 1}:
                raise ValueError(f"fold {family}: the {part} part needs real and fake clips")
        folds.append(Fold(family, train, val, test, own))
    return folds


def training_folders(folds: Sequence[Fold]) -> dict[str, str]:
    """The folder (under ``folds/``) of each fold's members: its own, or that of the first fold with the same
    training and validation clips. Holding out any of one corpus's families (LJSpeech's vocoders and TTS)
    takes the whole corpus out of training, so such folds train the same members: once."""
    first: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {}
    return {
        fold.family: first.setdefault((tuple(fold.train), tuple(fold.val)), fold.family) for fold in folds
    }


@dataclass
class FoldScores:
    """Clip probabilities of one scorer on one fold's test clips (NaN: the clip has no windows)."""

    indices: np.ndarray  # (n,) into the sweep's items
    probabilities: np.ndarray  # (n,)


@dataclass
class CrossEvaluation:
    items: list[AudioItem]
    folds: list[Fold]
    scores: dict[str, dict[str, FoldScores]] = field(default_factory=dict)  # scorer -> family -> scores
    # families a scorer trained on (the fixed pack's): not held out for it
    seen: dict[str, set[str]] = field(default_factory=dict)

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return np.array([self.items[i].label for i in indices], dtype=np.int64)

    def figures(self, scorer: str, families: Sequence[str]) -> dict[str, Any]:
        """EER, AUC and counts over the test clips of the folds of ``families`` pooled."""
        parts = [self.scores[scorer][f] for f in families if f in self.scores[scorer]]
        indices = np.concatenate([p.indices for p in parts])
        probabilities = np.concatenate([p.probabilities for p in parts])
        usable = np.isfinite(probabilities)
        labels = self.labels(indices)[usable]
        return {
            "eer": float(eer(labels, probabilities[usable])[0]),
            "auc": float(roc_auc(labels, probabilities[usable])),
            "n_real": int((labels == 0).sum()),
            "n_fake": int((labels == 1).sum()),
        }

    def groups(self) -> dict[str, list[str]]:
        """Pooled groups: every fold, and the folds of each dataset the held-out fakes come from."""
        by_source: dict[str, list[str]] = {}
        for fold in self.folds:
            source = next(self.items[i].source for i in fold.test if self.items[i].label == 1)
            by_source.setdefault(source, []).append(fold.family)
        groups = {POOLED: [f.family for f in self.folds]}
        if len(by_source) > 1:
            groups |= {f"{POOLED} {source}": families for source, families in by_source.items()}
        seen = set().union(*self.seen.values()) if self.seen else set()
        if seen:  # the families no scorer trained on: the one pool every scorer is measured on alike
            groups[f"{POOLED}, held out by all"] = [f.family for f in self.folds if f.family not in seen]
        return groups

    def to_dict(self) -> dict[str, Any]:
        families = [f.family for f in self.folds]
        return {
            "folds": [
                {
                    "family": f.family,
                    "train": len(f.train),
                    "val": len(f.val),
                    "test": len(f.test),
                    "own_recordings": f.own_recordings,
                }
                for f in self.folds
            ],  # fmt: skip
            "figures": {
                scorer: {
                    **{family: self.figures(scorer, [family]) for family in families},
                    **{group: self.figures(scorer, members) for group, members in self.groups().items()},
                }
                for scorer in self.scores
            },
            "seen": {scorer: sorted(seen) for scorer, seen in self.seen.items()},
            "clips": {
                scorer: {
                    family: [
                        {
                            "path": str(self.items[i].path),
                            "label": self.items[i].label,
                            "p": round(float(p), 6),
                        }
                        for i, p in zip(s.indices, s.probabilities, strict=True)
                    ]
                    for family, s in per_family.items()
                }
                for scorer, per_family in self.scores.items()
            },
        }


def _clip_probabilities(window_p: np.ndarray, features: WindowFeatures, indices: list[int]) -> np.ndarray:
    """Mean window probability of each clip in ``indices`` (NaN for a clip without windows)."""
    position = {index: k for k, index in enumerate(indices)}
    clips = np.array([position[c] for c in features.clips], dtype=np.int64)
    return clip_scores(window_p, clips, len(indices))


def _windows(features: WindowFeatures, indices: list[int], *, copies: bool = False) -> WindowFeatures:
    return features.of_clips(set(indices), copies=copies)


def _fit_network(
    train: WindowFeatures, val: WindowFeatures, front_end: AudioFrontEnd, checkpoint_dir: Path, name: str,
    config: FitConfig,
) -> Any:  # fmt: skip
    """The network that reads ``front_end``'s inputs, trained on the windows of ``train`` (class- and
    dataset-balanced), early-stopped on the window AUC of ``val``."""
    _, build = audio_member_builder(front_end)
    model, _ = fit_member(
        lambda: build(front_end.input_shape), name, balanced_batches(train, config), val.x, val.labels,
        checkpoint_dir, config, verbose=0,
    )  # fmt: skip
    return model


def _member_scores(
    fold: Fold, features: WindowFeatures, variant: MemberVariant, front_end: AudioFrontEnd,
    checkpoint_dir: Path, config: FitConfig,
) -> np.ndarray:  # fmt: skip
    """Clip probabilities of ``variant`` trained on the fold (``features``: the statistics for a
    ``logmel_stats`` variant, the windows' inputs for a network) on its test clips; its checkpoints go to
    ``checkpoint_dir``, where a finished training is reused."""
    train = _windows(features, fold.train, copies=variant.copies > 0)
    if variant.copies > 0:
        train = train.subset(train.copies <= variant.copies)
    val = _windows(features, fold.val)
    name = variant.name.replace(", ", "_").replace(" ", "_")
    if variant.feature is None:
        model = fit_head(train, val, checkpoint_dir, name, hidden=variant.hidden, config=config)[0]
    else:
        network_front_end = replace(front_end, feature=variant.feature)
        model = _fit_network(train, val, network_front_end, checkpoint_dir, name, config)

    def predict(windows: WindowFeatures) -> np.ndarray:
        return np.asarray(model.predict(windows.x, batch_size=64, verbose=0), dtype=np.float64).reshape(-1, 1)

    calibration = fit_aggregation(predict(val), val.labels, platt=True)
    test = _windows(features, fold.test)
    return _clip_probabilities(aggregate(predict(test), calibration), test, fold.test)


def _floor_scores(
    fold: Fold, features: WindowFeatures, bands: int, sources: Sequence[str] | None
) -> np.ndarray | None:
    train = _windows(features, fold.train)
    if sources is not None:
        train = train.subset(np.array([features.items[c].source in sources for c in train.clips], dtype=bool))
        if set(train.labels.tolist()) != {0, 1}:
            return None
    model = fit_floor(train.columns(FLOOR_STATISTICS, bands))
    test = _windows(features, fold.test).columns(FLOOR_STATISTICS, bands)
    return _clip_probabilities(model.predict_proba(test.x)[:, 1], test, fold.test)


def leave_one_family_out(
    data: DataDirs,
    out_dir: str | Path,
    *,
    families: Sequence[str] | None = None,
    variants: Sequence[MemberVariant] = VARIANTS,
    pack: ModelPack | None = None,
    front_end: AudioFrontEnd = AudioFrontEnd(),
    config: FitConfig = SWEEP_CONFIG,
    network_config: FitConfig = NETWORK_SWEEP_CONFIG,
    copies: int | None = None,
) -> CrossEvaluation:
    """Run the sweep over the datasets in ``data`` and write ``crosseval.json`` (figures and every clip
    score) into ``out_dir``; fold checkpoints go to ``out_dir/folds`` (a rerun resumes them: remove the
    folder to train again) and window statistics and inputs to ``out_dir/cache``.

    ``front_end`` (logmel) cuts the windows; a network reading another feature gets the same windows.
    ``pack``, if given, is scored on every fold's test clips as it is; the families it was trained on
    (``pack_training_families``) are marked as seen. ``copies`` (default: the most any variant of a
    feature uses) processed copies of every clip are computed once for all folds.
    """
    out_dir = Path(out_dir)
    items = load_audio_datasets(data_dirs_of(data))
    folds = family_folds(items, families)
    inputs: dict[str | None, WindowFeatures] = {}  # feature (None: the statistics) -> every window
    for feature in (None, *dict.fromkeys(v.feature for v in variants if v.feature)):
        of_feature = [v.copies for v in variants if v.feature == feature]
        n_copies = max(of_feature, default=0) if copies is None else copies
        inputs[feature] = window_features(
            items, replace(front_end, feature=feature or "logmel"), copies=n_copies, seed=config.seed,
            cache_dir=out_dir / "cache", statistics=feature is None,
        )  # fmt: skip
    features = inputs[None]
    bands = front_end.n_mels
    evaluation = CrossEvaluation(items, folds)
    trained_in = training_folders(folds)
    for fold in folds:
        test = np.asarray(fold.test, dtype=np.int64)
        logger.info(
            "fold %s: %d train, %d val, %d test clips", fold.family, len(fold.train), len(fold.val), len(test)
        )
        checkpoints = out_dir / "folds" / trained_in[fold.family]
        if trained_in[fold.family] != fold.family:
            logger.info(
                "fold %s trains on the clips of fold %s: its members are reused",
                fold.family,
                checkpoints.name,
            )
        for variant in variants:
            fit_config = config if variant.feature is None else network_config
            p = _member_scores(fold, inputs[variant.feature], variant, front_end, checkpoints, fit_config)
            evaluation.scores.setdefault(variant.name, {})[fold.family] = FoldScores(test, p)
        for scorer, sources in ((FLOOR, FLOOR_SOURCES), (f"{FLOOR}, all training data", None)):
            floor = _floor_scores(fold, features, bands, sources)
            if floor is not None:
                evaluation.scores.setdefault(scorer, {})[fold.family] = FoldScores(test, floor)
    if pack is not None:
        _score_pack(evaluation, pack, pack_training_families(pack))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "crosseval.json").write_text(json.dumps(evaluation.to_dict(), indent=1))
    return evaluation


def pack_training_families(pack: ModelPack) -> set[str]:
    """The spoof families a pack's audio members were trained on, as far as its manifest says.

    Packs made by ``deepscan train audio`` on a generated corpus (the bundled one) trained on every
    ``training.spoofs`` family but those ``info.audio_training.holdout_families`` names.
    """
    from training.spoofs import ALL_FAMILIES

    training = pack.manifest.info.get("audio_training", {})
    return set(ALL_FAMILIES) - set(training.get("holdout_families") or ()) if training else set()


def sweep_table(
    data: DataDirs,
    out_dir: str | Path,
    *,
    families: Sequence[str] = (),
    variants: Sequence[str] = (),
    pack: ModelPack | None = None,
    markdown: str | Path | None = None,
) -> str:
    """``deepscan evaluate --kind audio --leave-one-out``: run the sweep (``variants`` by name, default
    all), return its table (and write it to ``markdown`` if given)."""
    evaluation = leave_one_family_out(
        data, out_dir, families=list(families) or None, variants=variants_named(variants), pack=pack
    )
    table = to_markdown(evaluation)
    if markdown:
        Path(markdown).write_text(table)
    return table


def _score_pack(evaluation: CrossEvaluation, pack: ModelPack, seen: set[str]) -> None:
    """Every fold's test clips scored by ``pack`` as ``deepscan detect`` scores them (fusion), and by each
    of its audio members alone (mean window score). ``seen``: families it was trained on."""
    needed = sorted({i for fold in evaluation.folds for i in fold.test})
    windows, clips, usable = score_audio_clips(pack, [evaluation.items[i] for i in needed])
    position = {id(item): k for k, item in enumerate(usable)}
    label = pack.manifest.label
    columns = {f"{label} fusion": aggregate(windows, pack.manifest.audio_aggregation)}
    for j, member in enumerate(pack.manifest.audio_members):
        columns[f"{label} {member.name}"] = windows[:, j]
    for name, window_p in columns.items():
        per_clip = clip_scores(window_p, clips, len(usable))
        for fold in evaluation.folds:
            p = np.array([per_clip[position[id(evaluation.items[i])]] if id(evaluation.items[i]) in position
                          else np.nan for i in fold.test])  # fmt: skip
            evaluation.scores.setdefault(name, {})[fold.family] = FoldScores(np.asarray(fold.test), p)
        evaluation.seen[name] = set(seen)


def to_markdown(evaluation: CrossEvaluation) -> str:
    """Per-family and pooled EER (AUC) of every scorer; a family a scorer trained on is marked ``seen``."""
    families = [f.family for f in evaluation.folds]
    groups = evaluation.groups()
    header = ["scorer", *groups, *families]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scorer in evaluation.scores:
        seen = evaluation.seen.get(scorer, set())
        cells = [scorer]
        for members in groups.values():
            unseen = [f for f in members if f not in seen]
            cells.append(_cell(evaluation.figures(scorer, unseen)) if unseen else "-")
        for family in families:
            cell = _cell(evaluation.figures(scorer, [family]))
            cells.append(f"{cell} (seen)" if family in seen else cell)
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(
        f"{family} {evaluation.figures(next(iter(evaluation.scores)), [family])['n_real']}/"
        f"{evaluation.figures(next(iter(evaluation.scores)), [family])['n_fake']}"
        for family in families
    )
    lines += [
        "",
        f"Cells: EER (AUC) over the fold's held-out clips. Real/fake test clips per fold: {counts}.",
    ]
    if evaluation.seen:
        lines.append("Pooled cells of a fixed pack leave out the families it was trained on (marked seen).")
    return "\n".join(lines) + "\n"


def _cell(figures: dict[str, Any]) -> str:
    return f"{100 * figures['eer']:.1f} % ({figures['auc']:.3f})"
