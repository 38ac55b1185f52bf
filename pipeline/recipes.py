"""Recipes that turn datasets into pack members: train, score the kept-apart splits, fit the aggregation,
and write the members and the manifest with their measured figures.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import AudioFrontEnd, spectrograms, split_windows
from pipeline.audio_datasets import AudioItem, load_folders, speaker_disjoint_split
from pipeline.ensemble import Aggregation, aggregate, logit
from pipeline.errors import DeepscanError
from pipeline.faces import to_model_input
from pipeline.media import load_audio
from pipeline.metrics import eer, report, threshold_at_fpr
from pipeline.pack import MANIFEST_FILE, Manifest, MemberSpec, read_manifest, write_manifest
from pipeline.training import (
    IMAGE_SUFFIXES,
    Augmentation,
    FitConfig,
    balanced_weights,
    find_labelled_files,
    fit_member,
    load_crops,
    make_array_sequence,
    make_face_sequence,
    split_samples,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberPlan:
    architecture: str
    input_size: tuple[int, int]

    @property
    def name(self) -> str:
        return self.architecture

    @classmethod
    def parse(cls, text: str) -> MemberPlan:
        """``densenet121:96`` or ``xception:128x128`` -> MemberPlan."""
        architecture, _, size = text.partition(":")
        if not size:
            raise ValueError(f"member {text!r} needs an input size, e.g. {architecture}:96")
        h, _, w = size.partition("x")
        return cls(architecture.strip().lower(), (int(h), int(w or h)))


def _existing_members(out_dir: Path, kind: str) -> tuple[list[MemberSpec], Manifest | None]:
    """Members of the other kind already in ``out_dir`` (kept when one kind is retrained)."""
    if not (out_dir / MANIFEST_FILE).is_file():
        return [], None
    manifest = read_manifest(out_dir)
    return [m for m in manifest.members if m.kind != kind], manifest


def _metrics_by_source(
    labels: np.ndarray, scores: np.ndarray, sources: Sequence[str], threshold: float
) -> dict[str, Any]:
    figures: dict[str, Any] = {"all": report(labels, scores, threshold).as_dict()}
    for source in sorted(set(sources)):
        mask = np.array([s == source for s in sources])
        figures[source] = report(labels[mask], scores[mask], threshold).as_dict()
    return figures


def fit_aggregation(val_scores: np.ndarray, val_labels: np.ndarray, *, platt: bool = False) -> Aggregation:
    """Stacking: logistic regression over member logits, fitted on validation scores (calibrates too).

    With one member it is Platt scaling; without ``platt`` a single member is left as it is.
    """
    from sklearn.linear_model import LogisticRegression

    if (val_scores.shape[1] == 1 and not platt) or len(set(val_labels.tolist())) < 2:
        return Aggregation(method="mean")
    # Platt on a generated spoof set: its class ratio is an artefact of how many families we made, so the
    # probabilities are calibrated for equal priors rather than for that ratio.
    model = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced" if platt else None)
    model.fit(logit(val_scores), val_labels)
    return Aggregation(
        method="stacking",
        coefficients=tuple(float(c) for c in model.coef_[0]),
        intercept=float(model.intercept_[0]),
    )


def train_image_members(
    data_dir: str | Path,
    out_dir: str | Path,
    plans: Sequence[MemberPlan],
    *,
    config: FitConfig = FitConfig(),
    pack_name: str = "deepscan-default",
    version: str = "0.1.0",
    target_fpr: float | None = None,
    augmentation: Augmentation | None = Augmentation(),
    limit_per_split: int | None = None,
    verbose: int = 1,
) -> Manifest:
    """Train ``plans`` on the faces under ``data_dir`` and write them, with a manifest, into ``out_dir``.

    Checkpoints go to ``out_dir/checkpoints`` (rerun the same command to resume). The figures stored in
    the manifest are measured on the test split, which no training or fitting step sees.
    """
    from pipeline.models import build_image_member

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = find_labelled_files(data_dir, IMAGE_SUFFIXES)
    if not samples:
        raise DeepscanError(f"no images below real/ or fake/ folders in {data_dir}")
    splits = split_samples(samples)
    if limit_per_split:
        rng = np.random.default_rng(config.seed)  # a subset of both classes, for smoke runs and tests
        splits = {
            k: [v[i] for i in sorted(rng.permutation(len(v))[:limit_per_split])] for k, v in splits.items()
        }
    for name, items in splits.items():
        logger.info("%s: %d images (%d fake)", name, len(items), sum(s.label for s in items))
    crops = {name: load_crops(items) for name, items in splits.items()}
    labels = {name: np.array([s.label for s in items], dtype=np.int64) for name, items in splits.items()}

    specs: list[MemberSpec] = []
    val_scores, test_scores = [], []
    for plan in plans:
        inputs_val = to_model_input(list(crops["val"]), plan.input_size)
        train_seq = make_face_sequence(
            crops["train"], labels["train"], balanced_weights(splits["train"]),
            input_size=plan.input_size, batch_size=config.batch_size, aug=augmentation, seed=config.seed,
        )  # fmt: skip
        model, state = fit_member(
            partial(build_image_member, plan.architecture, plan.input_size),
            plan.name, train_seq, inputs_val, labels["val"], out_dir / "checkpoints", config, verbose=verbose,
        )  # fmt: skip
        val_scores.append(np.asarray(model.predict(inputs_val, batch_size=64, verbose=0)).reshape(-1))
        inputs_test = to_model_input(list(crops["test"]), plan.input_size)
        test_scores.append(np.asarray(model.predict(inputs_test, batch_size=64, verbose=0)).reshape(-1))
        file = f"{plan.name}.keras"
        _save_inference_copy(out_dir / "checkpoints" / f"{plan.name}.best.keras", out_dir / file)
        member_metrics = _metrics_by_source(
            labels["test"], test_scores[-1], [s.source for s in splits["test"]], 0.5
        )
        specs.append(MemberSpec(
            name=plan.name, kind="image", file=file, input_size=plan.input_size, architecture=plan.architecture,
            metrics={"test_auc": member_metrics["all"]["auc"], "best_epoch": state["best_epoch"] + 1,
                     "val_auc": state["best_auc"]},
        ))  # fmt: skip
        (out_dir / f"{plan.name}.report.json").write_text(
            json.dumps({"state": state, "test": member_metrics}, indent=2)
        )

    val_matrix, test_matrix = np.stack(val_scores, axis=1), np.stack(test_scores, axis=1)
    aggregation = fit_aggregation(val_matrix, labels["val"])
    val_ensemble = aggregate(val_matrix, aggregation)
    threshold = threshold_at_fpr(labels["val"], val_ensemble, target_fpr) if target_fpr else 0.5
    test_ensemble = aggregate(test_matrix, aggregation)
    sources = [s.source for s in splits["test"]]
    ensemble_figures = _metrics_by_source(labels["test"], test_ensemble, sources, threshold)
    mean_figures = _metrics_by_source(labels["test"], test_matrix.mean(axis=1), sources, threshold)

    others, previous = _existing_members(out_dir, "image")
    manifest = Manifest(
        name=pack_name,
        version=version,
        members=tuple(specs + others),
        aggregation=aggregation,
        thresholds={**(previous.thresholds if previous else {}), "image": threshold},
        audio=previous.audio if previous else None,
        info={
            **(dict(previous.info) if previous else {}),
            "image_training": {
                "data": str(data_dir.name),
                "split": {k: len(v) for k, v in splits.items()},
                "target_fpr": target_fpr,
                "config": config.__dict__,
                "test_ensemble": ensemble_figures,
                "test_mean": mean_figures,
            },
        },
    )
    return write_manifest(out_dir, manifest)


def _save_inference_copy(checkpoint: Path, target: Path) -> None:
    """Write a model without its optimizer state (a third of the size of an Adam checkpoint)."""
    import keras

    keras.saving.load_model(checkpoint, compile=False).save(target)


def load_audio_windows(
    items: Sequence[AudioItem], front_end: AudioFrontEnd
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectrogram windows of every usable clip. Returns (features (N,F,T,1), labels (N,), clip index (N,))."""
    features, labels, clips = [], [], []
    for i, item in enumerate(items):
        try:
            windows = split_windows(load_audio(item.path, sample_rate_hz=front_end.sample_rate_hz), front_end)
        except DeepscanError as e:
            logger.warning("skipping %s: %s", item.path, e.reason)
            continue
        features.append(spectrograms(windows, front_end))
        labels.extend([item.label] * len(windows))
        clips.extend([i] * len(windows))
    if not features:
        raise DeepscanError("no usable audio clips")
    return np.concatenate(features), np.asarray(labels, dtype=np.int64), np.asarray(clips, dtype=np.int64)


def figures_by_family(
    labels: np.ndarray, scores: np.ndarray, families: Sequence[str], threshold: float
) -> dict[str, Any]:
    """Figures on all clips, then each spoof family against all bona fide clips (the per-family EER)."""
    families_arr = np.asarray(families)
    out: dict[str, Any] = {"all": report(labels, scores, threshold).as_dict()}
    for family in sorted(set(families_arr[labels == 1].tolist())):
        mask = (labels == 0) | (families_arr == family)
        out[family] = report(labels[mask], scores[mask], threshold).as_dict()
    return out


def clip_scores(window_scores: np.ndarray, clips: np.ndarray, n_clips: int) -> np.ndarray:
    """Mean window score per clip (NaN for clips without windows)."""
    sums = np.bincount(clips, weights=window_scores, minlength=n_clips)
    counts = np.bincount(clips, minlength=n_clips)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def train_audio_member(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    front_end: AudioFrontEnd = AudioFrontEnd(),
    config: FitConfig = FitConfig(epochs=15, batch_size=32),
    holdout_families: Sequence[str] = (),
    pack_name: str = "deepscan-default",
    version: str = "0.1.0",
    verbose: int = 1,
) -> Manifest:
    """Train the audio CNN on clips under ``real/`` and ``fake/<family>/`` of ``data_dir``; add it to the pack.

    The split is speaker-disjoint. Spoof families in ``holdout_families`` are kept out of training and
    validation entirely: their test figures are the ones that predict unseen generators.
    """
    from pipeline.models import build_audio_cnn

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = speaker_disjoint_split(load_folders(data_dir))
    held = set(holdout_families)
    for name in ("train", "val"):
        splits[name] = [item for item in splits[name] if item.family not in held]
    for name, items in splits.items():
        logger.info("%s: %d clips (%d spoofed)", name, len(items), sum(i.label for i in items))
    data = {name: load_audio_windows(items, front_end) for name, items in splits.items()}
    x_train, y_train, _ = data["train"]
    weights = np.where(y_train == 1, 0.5 / max(y_train.mean(), 1e-6), 0.5 / max(1 - y_train.mean(), 1e-6))
    order = np.random.default_rng(config.seed).permutation(len(y_train))
    train = (x_train[order], y_train[order].astype(np.float32)[:, None], weights[order].astype(np.float32))
    name = "audio_cnn"
    model, state = fit_member(
        lambda: build_audio_cnn(front_end.input_shape), name, make_array_sequence(*train, batch_size=config.batch_size, seed=config.seed),
        data["val"][0], data["val"][1], out_dir / "checkpoints", config, verbose=verbose,
    )  # fmt: skip
    calibration, threshold, figures = measure_audio_member(model, data, splits, held)
    file = f"{name}.keras"
    _save_inference_copy(out_dir / "checkpoints" / f"{name}.best.keras", out_dir / file)
    spec = MemberSpec(name=name, kind="audio", file=file, input_size=front_end.input_shape, architecture=name,
                      metrics={"test_auc": figures["all"]["auc"], "test_eer": figures["all"]["eer"],
                               "val_auc": state["best_auc"], "best_epoch": state["best_epoch"] + 1})  # fmt: skip
    others, previous = _existing_members(out_dir, "audio")
    base = previous or Manifest(name=pack_name, version=version, members=(spec,))
    manifest = replace(
        base,
        members=tuple(others + [spec]),
        audio=front_end,
        audio_aggregation=calibration,
        thresholds={**base.thresholds, "audio": threshold},
        info={**dict(base.info), "audio_training": {
            "data": data_dir.name, "split_clips": {k: len(v) for k, v in splits.items()},
            "holdout_families": sorted(held), "config": config.__dict__, "test_clips": figures}},
    )  # fmt: skip
    (out_dir / f"{name}.report.json").write_text(json.dumps({"state": state, "test": figures}, indent=2))
    return write_manifest(out_dir, manifest)


def measure_audio_member(
    model: Any,
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    splits: dict[str, list[AudioItem]],
    held: set[str],
) -> tuple[Aggregation, float, dict[str, Any]]:
    """Calibrate window scores (Platt, on validation windows), pick the clip threshold at the validation
    EER point, then measure the test clips with both.

    ``data`` holds each split's windows as ``load_audio_windows`` returns them. Class weighting in
    training moves the scores away from 0.5, so the threshold comes from data the test never sees.
    Returns (calibration, threshold, figures: all clips, each family against all real clips, the held-out pool).
    """

    def windows(split: str) -> np.ndarray:
        return np.asarray(model.predict(data[split][0], batch_size=64, verbose=0)).reshape(-1, 1)

    calibration = fit_aggregation(windows("val"), data["val"][1], platt=True)

    def per_clip(split: str) -> tuple[np.ndarray, list[AudioItem]]:
        calibrated = aggregate(windows(split), calibration)
        scores = clip_scores(calibrated, data[split][2], len(splits[split]))
        keep = ~np.isnan(scores)
        return scores[keep], [item for item, k in zip(splits[split], keep, strict=True) if k]

    val_scores, val_items = per_clip("val")
    _, threshold = eer(np.array([i.label for i in val_items]), val_scores)
    test_scores, test_items = per_clip("test")
    labels = np.array([i.label for i in test_items])
    figures = figures_by_family(labels, test_scores, [i.family for i in test_items], threshold)
    if held:
        mask = np.array([i.label == 0 or i.family in held for i in test_items])
        figures["held_out_pooled"] = report(labels[mask], test_scores[mask], threshold).as_dict()
    return calibration, float(threshold), figures


def copy_pack(source: Path, target: Path) -> None:
    """Copy a pack's manifest and member files (no checkpoints) to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(source)
    for member in manifest.members:
        shutil.copy2(source / member.file, target / member.file)
    shutil.copy2(source / MANIFEST_FILE, target / MANIFEST_FILE)
