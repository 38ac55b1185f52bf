"""Evaluation of a pack on a labelled dataset: every member and the ensemble, overall and per source.

Image datasets are face crops under ``real/``/``fake/`` folders, scored as crops (the way the members were
trained) or, with ``through_detector``, the way ``deepscan detect`` scores an image: the face detector's
largest box in the file, cut by ``square_crop`` (files in which it finds no face are left out and listed).
Audio datasets are clips in the same layout (scored as the CLI scores a clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ensemble import aggregate
from pipeline.faces import FaceDetector, square_crop
from pipeline.media import load_image
from pipeline.pack import ModelPack
from training.face_datasets import find_face_samples
from training.fitting import Sample, load_crops, split_samples
from training.metrics import CONFIDENCE_LEVEL, Report, auc_difference, report, roc_curve

ENSEMBLE = "ensemble"
HELD_OUT_POOLED = "held_out_pooled"
EVAL_BATCH = 256  # crops loaded and scored at a time: bounds memory on large datasets


@dataclass
class Evaluation:
    """Scores of every scorer (members and ensemble) on one dataset, with labels and sources."""

    labels: np.ndarray  # (N,) 1 = fake
    sources: list[str]
    scores: dict[str, np.ndarray]  # scorer -> (N,)
    thresholds: dict[str, float]
    # True for spoof families: every family is measured against all bona fide items (the per-family EER)
    real_in_every_subset: bool = False
    # spoof families a pack never trained on: measured together, against all bona fide items, as
    # ``held_out_pooled`` (with ``real_in_every_subset``)
    held_out: tuple[str, ...] = ()
    reports: dict[str, dict[str, Report]] = field(default_factory=dict)  # scorer -> subset -> report
    _masks: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._masks = self._subset_masks()
        for scorer, scores in self.scores.items():
            self.reports[scorer] = {"all": report(self.labels, scores, self.thresholds[scorer])}
            for subset, mask in self._masks.items():
                self.reports[scorer][subset] = report(
                    self.labels[mask], scores[mask], self.thresholds[scorer]
                )

    def _subset_masks(self) -> dict[str, np.ndarray]:
        sources = np.asarray(self.sources)
        positives = sources[self.labels == 1] if self.real_in_every_subset else sources
        real = self.labels == 0
        masks = {
            subset: (sources == subset) | real if self.real_in_every_subset else sources == subset
            for subset in sorted(set(positives.tolist()))
        }
        pooled = real | np.isin(sources, list(self.held_out))
        if self.real_in_every_subset and self.held_out and (self.labels[pooled] == 1).any():
            masks[HELD_OUT_POOLED] = pooled
        return masks

    def subset_mask(self, subset: str) -> np.ndarray:
        """(N,) bool: the items a subset's reports were measured on (every item for ``all``)."""
        return self._masks[subset] if subset != "all" else np.ones(len(self.labels), dtype=bool)

    def figures(self, scorer: str) -> dict[str, dict[str, Any]]:
        """One scorer's reports as plain dicts, subset by subset (the form manifests store)."""
        return {subset: r.as_dict() for subset, r in self.reports[scorer].items()}


def evaluate_images(
    pack: ModelPack,
    data: str | Path | Sequence[str | Path],
    *,
    tight_sources: Sequence[str] = (),
    split: str | None = "test",
    through_detector: bool = False,
) -> tuple[Evaluation, list[Path]]:
    """Score the face crops of one folder or several (only the given split of the training split scheme,
    clusters whole, or all); ``tight_sources`` as in ``training.face_datasets``. Returns the evaluation and
    the files left out: those in which the detector found no face (``through_detector`` only)."""
    folders = [data] if isinstance(data, str | Path) else list(data)
    samples = find_face_samples(folders, tight_sources)
    if split is not None:
        samples = split_samples(samples)[split]
    if not samples:
        raise ValueError(f"no labelled images in {', '.join(map(str, folders))} (split {split})")
    detector = FaceDetector() if through_detector else None
    scored, member_scores, missed = [], [], []
    for i in range(0, len(samples), EVAL_BATCH):
        batch = samples[i : i + EVAL_BATCH]
        crops, found = _crops(batch, detector)
        missed += [s.path for s in batch if s not in found]
        scored += found
        member_scores.append(pack.score_faces(crops))
    if not scored:
        raise ValueError(f"no face found in any of the {len(samples)} images")
    manifest = pack.manifest
    every_member = np.concatenate(member_scores)
    scores = {m.name: every_member[:, j] for j, m in enumerate(manifest.image_members)}
    scores[ENSEMBLE] = aggregate(every_member, manifest.aggregation)
    thresholds = {name: 0.5 for name in scores} | {ENSEMBLE: manifest.threshold("image")}
    labels = np.array([s.label for s in scored])
    return Evaluation(labels, [s.source for s in scored], scores, thresholds), missed


def _crops(samples: Sequence[Sample], detector: FaceDetector | None) -> tuple[list[np.ndarray], list[Sample]]:
    """The crops of ``samples`` as training holds them (no detector), or as the image path cuts them: the
    largest face the detector finds, with the samples it found one in."""
    if detector is None:
        return list(load_crops(samples)), list(samples)
    crops, found = [], []
    for sample in samples:
        frame = load_image(sample.path)
        boxes = detector.detect(frame)
        if boxes:
            crops.append(square_crop(frame, boxes[0]))
            found.append(sample)
    return crops, found


def evaluate_audio(
    pack: ModelPack, data_dir: str | Path | Sequence[str | Path], *, split: str | None = "test"
) -> tuple[Evaluation, list[tuple[Path, str]]]:
    """Score the clips of one dataset folder or several (any layout ``load_audio_dataset`` reads; the
    speaker-disjoint split, or all).

    Returns the evaluation (one subset per spoof family, each against all bona fide clips, plus
    ``held_out_pooled`` when the pack names families held out of its training) and the clips that have
    no score, with the reason (too short, silent, undecodable): they are reported, not dropped.
    """
    from pipeline.analyze import Analyzer
    from pipeline.errors import DeepscanError
    from pipeline.media import load_audio
    from training.audio_datasets import load_audio_datasets, speaker_disjoint_split

    dirs = [data_dir] if isinstance(data_dir, str | Path) else list(data_dir)
    items = load_audio_datasets(dirs)
    if split is not None:
        items = speaker_disjoint_split(items)[split]
    analyzer = Analyzer(pack)
    scored, probabilities, unscored = [], [], []
    for item in items:
        try:
            probabilities.append(analyzer.score_audio(load_audio(item.path)).fake_probability)
            scored.append(item)
        except DeepscanError as e:
            unscored.append((item.path, e.reason))
    if not scored:
        raise ValueError(f"no scorable clips in {', '.join(map(str, dirs))} (split {split})")
    evaluation = Evaluation(
        np.array([i.label for i in scored]),
        [i.family for i in scored],
        {"audio": np.asarray(probabilities, dtype=np.float64)},
        {"audio": pack.manifest.threshold("audio")},
        real_in_every_subset=True,
        held_out=tuple(pack.manifest.info.get("audio_training", {}).get("holdout_families") or ()),
    )
    return evaluation, unscored


COLUMNS = ("n", "n_fake", "auc", "auc_ci", "eer", "accuracy", "f1", "ece", "threshold")
_PERCENT = f"{100 * CONFIDENCE_LEVEL:.0f} %"


def _cell(values: dict[str, object], column: str) -> str:
    if column == "auc_ci":
        return f"{values['auc_low']:.3f}-{values['auc_high']:.3f}"
    value = values[column]
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def ensemble_against_best_member(evaluation: Evaluation) -> dict[str, tuple[str, float, float, float]]:
    """Per subset: the member with the highest AUC there, and AUC(ensemble) - AUC(member) with its interval.

    The difference is DeLong's paired one (``auc_difference``): both scorers judge the same items.
    Subsets without an AUC (one class only) are left out; empty without an ensemble or without members.
    """
    members = [name for name in evaluation.reports if name != ENSEMBLE]
    if ENSEMBLE not in evaluation.reports or not members:
        return {}
    out = {}
    for subset in evaluation.reports[ENSEMBLE]:
        mask = evaluation.subset_mask(subset)
        measured = [name for name in members if np.isfinite(evaluation.reports[name][subset].auc)]
        if not measured:  # a subset of one class has no AUC to compare
            continue
        best = max(measured, key=lambda name: evaluation.reports[name][subset].auc)
        out[subset] = (
            best,
            *auc_difference(
                evaluation.labels[mask], evaluation.scores[ENSEMBLE][mask], evaluation.scores[best][mask]
            ),
        )
    return out


def to_markdown(evaluation: Evaluation) -> str:
    header = [c.replace("auc_ci", f"auc {_PERCENT} CI") for c in COLUMNS]
    lines = ["| scorer | subset | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for scorer, subsets in evaluation.reports.items():
        for subset, r in subsets.items():
            values = r.as_dict()
            lines.append(f"| {scorer} | {subset} | " + " | ".join(_cell(values, c) for c in COLUMNS) + " |")
    lines.append("")
    lines.append(
        "Confusion matrices ([[TN, FP], [FN, TP]]) over all items: "
        + "; ".join(f"{scorer} {subsets['all'].confusion}" for scorer, subsets in evaluation.reports.items())
    )
    comparison = ensemble_against_best_member(evaluation)
    if comparison:
        lines += [
            "",
            f"Ensemble against the best member of each subset (paired DeLong, {_PERCENT} interval):",
            "",
            "| subset | best member | AUC ensemble - member | interval |",
            "|---|---|---|---|",
        ]
        for subset, (member, difference, low, high) in comparison.items():
            lines.append(f"| {subset} | {member} | {difference:+.3f} | {low:+.3f} to {high:+.3f} |")
    return "\n".join(lines) + "\n"


def plot_roc(evaluation: Evaluation, path: str | Path, scorers: Sequence[str] | None = None) -> Path:
    """ROC curves of the chosen scorers over all items, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for scorer in scorers or list(evaluation.scores):
        fpr, tpr, _ = roc_curve(evaluation.labels, evaluation.scores[scorer])
        ax.plot(fpr, tpr, label=f"{scorer} (AUC {evaluation.reports[scorer]['all'].auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="false-positive rate (real called fake)", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
