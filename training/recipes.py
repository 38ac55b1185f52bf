"""Recipes that turn datasets into pack members: train, score the kept-apart splits, fit the aggregation,
and write the members and the manifest with their measured figures.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import AudioFrontEnd, split_windows
from pipeline.ensemble import Aggregation, aggregate, logit
from pipeline.errors import DeepscanError, ModelPackError
from pipeline.faces import CROP_GEOMETRIES, to_model_input
from pipeline.media import load_audio
from pipeline.pack import (
    MANIFEST_FILE,
    Manifest,
    MemberSpec,
    ModelPack,
    read_manifest,
    store_float16,
    write_manifest,
)
from training.audio_datasets import AudioItem, held_out, load_audio_datasets, speaker_disjoint_split
from training.audio_windows import balanced_batches, window_features
from training.evaluate import ENSEMBLE, Evaluation, ensemble_against_best_member
from training.face_datasets import face_splits
from training.fitting import (
    Augmentation,
    FitConfig,
    Sample,
    balanced_weights,
    fit_member,
    load_crops,
    make_face_sequence,
)
from training.metrics import eer, roc_auc, threshold_at_fpr
from training.pseudofakes import PseudoFakes

logger = logging.getLogger(__name__)

# one audio dataset folder or several (``deepscan train audio --data DIR --data DIR``)
DataDirs = str | Path | Sequence[str | Path]


def data_dirs_of(data: DataDirs) -> list[Path]:
    """One dataset folder or several, as a list of paths."""
    return [Path(data)] if isinstance(data, str | Path) else [Path(d) for d in data]


def data_label(data: DataDirs) -> str:
    """The names of the dataset folders, as the manifest records them (``spoofs+neural``)."""
    return "+".join(d.name for d in data_dirs_of(data))


@dataclass(frozen=True)
class MemberPlan:
    architecture: str
    input_size: tuple[int, int]
    front_end: str = "pixels"  # or "spectrum" / "residual": see training.architectures.IMAGE_FRONT_ENDS
    crop_geometry: str = "margin"  # or "tight": the face box alone (pipeline.faces.face_region)

    def __post_init__(self) -> None:
        if self.crop_geometry not in CROP_GEOMETRIES:
            raise ValueError(
                f"unknown crop geometry {self.crop_geometry!r}; expected one of {CROP_GEOMETRIES}"
            )

    @property
    def name(self) -> str:
        """``xception``, ``xception_residual``, ``profile_tight``: front end and geometry when not the default."""
        front_end = "" if self.front_end == "pixels" else f"_{self.front_end}"
        geometry = "" if self.crop_geometry == "margin" else f"_{self.crop_geometry}"
        return f"{self.architecture}{front_end}{geometry}"

    @property
    def label(self) -> str:
        """The architecture as the manifest and the model card show it."""
        return self.architecture if self.front_end == "pixels" else f"{self.architecture}+{self.front_end}"

    @classmethod
    def parse(cls, text: str) -> MemberPlan:
        """``densenet121:96``, ``xception:128x128`` or ``xception+spectrum:128`` -> MemberPlan."""
        architecture, _, size = text.partition(":")
        if not size:
            raise ValueError(f"member {text!r} needs an input size, e.g. {architecture}:96")
        h, _, w = size.partition("x")
        architecture, _, front_end = architecture.strip().lower().partition("+")
        return cls(architecture, (int(h), int(w or h)), front_end or "pixels")


def _base_manifest(
    previous: Manifest | None, pack_name: str, version: str | None, members: Sequence[MemberSpec]
) -> Manifest:
    """The pack's manifest to build on: the one in place (a new ``version`` if given), or a new pack."""
    if previous is None:
        return Manifest(name=pack_name, version=version or "0.1.0", members=tuple(members))
    return replace(previous, version=version) if version else previous


def _figures(
    labels: np.ndarray,
    scores: np.ndarray,
    subsets: Sequence[str],
    threshold: float,
    *,
    per_family: bool = False,
    held_out: Sequence[str] = (),
) -> dict[str, Any]:
    """Figures on all items and per subset (``Evaluation``'s subsets), as the manifest stores them."""
    evaluation = Evaluation(
        labels,
        list(subsets),
        {"s": scores},
        {"s": threshold},
        real_in_every_subset=per_family,
        held_out=tuple(held_out),
    )
    return evaluation.figures("s")


def fit_aggregation(
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    *,
    platt: bool = False,
    sample_weight: np.ndarray | None = None,
) -> Aggregation:
    """Stacking: logistic regression over member logits, fitted on validation scores (calibrates too).

    With one member it is Platt scaling; without ``platt`` a single member is left as it is. The logits
    are standardised for the fit, so the regularisation weighs every member alike: a member whose
    outputs span a narrow range (common for a backbone trained from scratch) is not silenced by the
    size of the coefficient it needs. The stored coefficients apply to raw logits. ``sample_weight``
    weighs the validation items (``benchmarks/stacking_by_source.py`` tries each source alike).
    """
    from sklearn.linear_model import LogisticRegression

    if (val_scores.shape[1] == 1 and not platt) or len(set(val_labels.tolist())) < 2:
        return Aggregation(method="mean")
    logits = logit(val_scores)
    centre, spread = logits.mean(axis=0), logits.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)  # a constant member gets a zero coefficient either way
    # Platt on a generated spoof set: its class ratio is an artefact of how many families we made, so the
    # probabilities are calibrated for equal priors rather than for that ratio.
    model = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced" if platt else None)
    model.fit((logits - centre) / spread, val_labels, sample_weight=sample_weight)
    coefficients = model.coef_[0] / spread
    return Aggregation(
        method="stacking",
        coefficients=tuple(float(c) for c in coefficients),
        intercept=float(model.intercept_[0] - coefficients @ centre),
    )


def train_image_members(
    data: DataDirs,
    out_dir: str | Path,
    plans: Sequence[MemberPlan],
    *,
    tight_sources: Sequence[str] = (),
    pseudo_fakes: PseudoFakes | None = None,
    config: FitConfig = FitConfig(),
    pack_name: str = "deepscan-default",
    version: str | None = None,
    target_fpr: float | None = None,
    augmentation: Augmentation | None = Augmentation(),
    limit_per_split: int | None = None,
    verbose: int = 1,
) -> Manifest:
    """Train ``plans`` on the faces of the folders in ``data`` and write them, with a manifest, into ``out_dir``.

    ``tight_sources`` names the sources whose crops are the face box alone (``training.face_datasets``);
    ``pseudo_fakes`` adds self-blended images and local edits of the training reals. Checkpoints go to
    ``out_dir/checkpoints`` (rerun the same command to resume). The figures stored in the manifest are
    measured on the test split, which no training or fitting step sees.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits, crops = image_splits(data, tight_sources, limit_per_split, config.seed)
    specs: list[MemberSpec] = []
    for plan in plans:
        state = fit_image_member(
            plan,
            splits,
            crops,
            out_dir / "checkpoints",
            config=config,
            augmentation=augmentation,
            pseudo_fakes=pseudo_fakes,
            verbose=verbose,
        )
        file = f"{plan.name}.keras"
        _save_inference_copy(out_dir / "checkpoints" / f"{plan.name}.best.keras", out_dir / file)
        specs.append(
            MemberSpec(
                name=plan.name,
                kind="image",
                file=file,
                input_size=plan.input_size,
                architecture=plan.label,
                metrics={"best_epoch": state["best_epoch"] + 1, "val_auc": state["best_auc"]},
                crop_geometry=plan.crop_geometry,
            )
        )
        (out_dir / f"{plan.name}.report.json").write_text(
            json.dumps({"state": state, "config": config.__dict__}, indent=2)
        )
    # read now, not before training: the pack may have changed meanwhile (an audio member trained beside)
    previous = read_manifest(out_dir) if (out_dir / MANIFEST_FILE).is_file() else None
    trained = {spec.name for spec in specs}
    kept = [m for m in previous.members if m.name not in trained] if previous else []
    base = _base_manifest(previous, pack_name, version, specs)
    write_manifest(out_dir, replace(base, members=(*kept, *specs)))
    return fit_image_ensemble(
        out_dir,
        splits,
        crops,
        target_fpr=target_fpr,
        info={
            "data": data_label(data),
            "tight_sources": list(tight_sources),
            "pseudo_fakes": pseudo_fakes.__dict__ if pseudo_fakes else None,
            "config": config.__dict__,
        },
    )


def fit_image_member(
    plan: MemberPlan,
    splits: dict[str, list[Sample]],
    crops: dict[str, np.ndarray],
    checkpoint_dir: Path,
    *,
    config: FitConfig,
    augmentation: Augmentation | None = Augmentation(),
    pseudo_fakes: PseudoFakes | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """Train one planned member on the train split, keeping the epoch with the best val AUC.

    Returns the run state; the best model is ``checkpoint_dir/<name>.best.keras``.
    """
    from training.architectures import build_image_member

    labels = {name: np.array([s.label for s in items], dtype=np.int64) for name, items in splits.items()}
    train_seq = make_face_sequence(
        crops["train"],
        labels["train"],
        balanced_weights(splits["train"]),
        input_size=plan.input_size,
        batch_size=config.batch_size,
        aug=augmentation,
        seed=config.seed,
        geometry=plan.crop_geometry,
        pseudo_fakes=pseudo_fakes,
    )
    _, state = fit_member(
        partial(build_image_member, plan.architecture, plan.input_size, front_end=plan.front_end),
        plan.name,
        train_seq,
        to_model_input(list(crops["val"]), plan.input_size, plan.crop_geometry),
        labels["val"],
        checkpoint_dir,
        config,
        verbose=verbose,
    )
    return state


def image_splits(
    data: DataDirs, tight_sources: Sequence[str] = (), limit_per_split: int | None = None, seed: int = 0
) -> tuple[dict[str, list[Sample]], dict[str, np.ndarray]]:
    """The train/val/test split of the faces in ``data`` (clusters whole) and their margin crops."""
    splits = face_splits(data_dirs_of(data), tight_sources, limit_per_split=limit_per_split, seed=seed)
    return splits, {name: load_crops(items) for name, items in splits.items()}


def refit_image_ensemble(
    data: DataDirs,
    pack_dir: str | Path,
    *,
    tight_sources: Sequence[str] = (),
    target_fpr: float | None = None,
    limit_per_split: int | None = None,
    seed: int = 0,
    drop: Sequence[str] = (),
) -> Manifest:
    """Train nothing: refit the stacking and threshold of the pack's image members and measure them again.

    The image members named in ``drop`` leave the pack first, with their files (a member that a better one
    replaces, say). Until the refit is written the pack averages the members that stay, so it loads and
    scores at every step.
    """
    pack_dir = Path(pack_dir)
    previous = read_manifest(pack_dir)
    unknown = set(drop) - {m.name for m in previous.image_members}
    if unknown:
        raise DeepscanError(f"the pack in {pack_dir} has no image member {', '.join(sorted(unknown))}")
    kept = tuple(m for m in previous.members if m.name not in drop)
    if not any(m.kind == "image" for m in kept):
        raise DeepscanError(f"the pack in {pack_dir} has no image members to fuse")
    if drop:
        previous = write_manifest(pack_dir, replace(previous, members=kept, aggregation=Aggregation()))
        for member in drop:
            for leftover in (pack_dir / f"{member}.keras", pack_dir / f"{member}.report.json"):
                leftover.unlink(missing_ok=True)
    splits, crops = image_splits(data, tight_sources, limit_per_split, seed)
    kept_info = ("data", "tight_sources", "pseudo_fakes", "config")
    info = {k: v for k, v in previous.info.get("image_training", {}).items() if k in kept_info}
    return fit_image_ensemble(pack_dir, splits, crops, target_fpr=target_fpr, info=info)


def fit_image_ensemble(
    pack_dir: Path,
    splits: dict[str, list[Any]],
    crops: dict[str, np.ndarray],
    *,
    target_fpr: float | None = None,
    info: dict[str, Any] | None = None,
) -> Manifest:
    """Fuse every image member of the pack and measure members and ensemble on the test split.

    The aggregation is stacking fitted on the validation split; the threshold is the one that gives
    ``target_fpr`` on validation (0.5 without a target). Members already in the pack (trained by an earlier
    run) take part like the new ones. Each member's figures are for its raw output at 0.5.
    """
    pack = ModelPack.load(pack_dir, verify=False)
    labels = {k: np.array([s.label for s in v], dtype=np.int64) for k, v in splits.items()}
    sources = [s.source for s in splits["test"]]
    val_matrix = pack.score_faces(list(crops["val"]))
    test_matrix = pack.score_faces(list(crops["test"]))
    aggregation = fit_aggregation(val_matrix, labels["val"])
    val_ensemble = aggregate(val_matrix, aggregation)
    threshold = threshold_at_fpr(labels["val"], val_ensemble, target_fpr) if target_fpr else 0.5
    names = [member.name for member in pack.manifest.image_members]
    test_scores = {name: test_matrix[:, j] for j, name in enumerate(names)}
    test_scores[ENSEMBLE] = aggregate(test_matrix, aggregation)
    thresholds = {name: 0.5 for name in names} | {ENSEMBLE: threshold}
    evaluation = Evaluation(labels["test"], sources, test_scores, thresholds)
    mean_figures = _figures(labels["test"], test_matrix.mean(axis=1), sources, 0.5)
    members, member_figures = [], {}
    for j, member in enumerate(pack.manifest.image_members):
        figures = evaluation.figures(member.name)
        member_figures[member.name] = figures
        # "val_auc" stays the early-stopping figure of the member's own training, whose split may be an
        # older pack's; "split_val_auc" is on the validation split this stacking was fitted on.
        measured = {
            "split_val_auc": roc_auc(labels["val"], val_matrix[:, j]),
            "test_auc": figures["all"]["auc"],
        }
        members.append(replace(member, metrics={**member.metrics, **measured}))
        _update_report(pack_dir / f"{member.name}.report.json", test=figures)
    against_best: dict[str, dict[str, Any]] = {
        subset: {"member": member, "difference": difference, "low": low, "high": high}
        for subset, (member, difference, low, high) in ensemble_against_best_member(evaluation).items()
    }
    contributions = member_contributions(
        (val_matrix, labels["val"]), (test_matrix, labels["test"]), names, test_scores[ENSEMBLE]
    )
    manifest = replace(
        pack.manifest,
        members=(*members, *pack.manifest.audio_members),
        aggregation=aggregation,
        thresholds={**pack.manifest.thresholds, "image": threshold},
        info={
            **dict(pack.manifest.info),
            "image_training": {
                **(info or {}),
                "split": {k: len(v) for k, v in splits.items()},
                "target_fpr": target_fpr,
                "test_ensemble": evaluation.figures(ENSEMBLE),
                "test_mean": mean_figures,
                "members": member_figures,
                "test_against_best_member": against_best,
                "test_member_contribution": contributions,
            },
        },
    )
    return write_manifest(pack_dir, manifest)


def member_contributions(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    names: Sequence[str],
    ensemble_test: np.ndarray,
) -> dict[str, dict[str, float]]:
    """What each member adds: the stacking refitted on validation without it, and on the test split
    AUC(ensemble) - AUC(ensemble without the member) with DeLong's paired interval.

    ``val`` and ``test`` are (member score matrix, labels); ``ensemble_test`` the full ensemble's test
    scores. An interval above 0 says the member earns its place on this split; one that includes 0 says
    the split cannot tell. Empty for a single member.
    """
    from training.metrics import auc_difference

    if len(names) < 2:
        return {}
    (val_matrix, val_labels), (test_matrix, test_labels) = val, test
    out = {}
    for j, name in enumerate(names):
        others = [k for k in range(len(names)) if k != j]
        aggregation = fit_aggregation(val_matrix[:, others], val_labels)
        without = aggregate(test_matrix[:, others], aggregation)
        difference, low, high = auc_difference(test_labels, ensemble_test, without)
        out[name] = {
            "without_auc": roc_auc(test_labels, without),
            "difference": difference,
            "low": low,
            "high": high,
        }
    return out


def _update_report(path: Path, **fields: Any) -> None:
    """Set ``fields`` in a member's ``<name>.report.json``, keeping what else it holds."""
    report = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**report, **fields}, indent=2))


def _save_inference_copy(checkpoint: Path, target: Path) -> None:
    """Write a model without its optimizer state, weights stored as float16 (a sixth of an Adam checkpoint).

    Every figure the recipes report is measured on this copy, as ``deepscan detect`` will load it.
    """
    import keras

    keras.saving.load_model(checkpoint, compile=False).save(target)
    store_float16(target)


def _usable_clips(
    items: Sequence[AudioItem], layout: AudioFrontEnd
) -> Iterator[tuple[AudioItem, np.ndarray]]:
    """(item, windows (N, window_samples)) for every clip that cuts into windows; the rest are logged."""
    for item in items:
        try:
            yield item, split_windows(load_audio(item.path, sample_rate_hz=layout.sample_rate_hz), layout)
        except DeepscanError as e:
            logger.warning("skipping %s: %s", item.path, e.reason)


def clip_scores(window_scores: np.ndarray, clips: np.ndarray, n_clips: int) -> np.ndarray:
    """Mean window score per clip (NaN for clips without windows)."""
    sums = np.bincount(clips, weights=window_scores, minlength=n_clips)
    counts = np.bincount(clips, minlength=n_clips)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def audio_member_builder(front_end: AudioFrontEnd) -> tuple[str, Callable[[tuple[int, int]], Any]]:
    """(architecture, builder) of the network member that reads ``front_end``'s windows."""
    from training.architectures import build_audio_cnn, build_raw_cnn

    return ("raw_cnn", build_raw_cnn) if front_end.feature == "waveform" else ("audio_cnn", build_audio_cnn)


def train_audio_member(
    data_dir: DataDirs,
    out_dir: str | Path,
    *,
    front_end: AudioFrontEnd = AudioFrontEnd(),
    config: FitConfig = FitConfig(epochs=15, batch_size=32),
    holdout_families: Sequence[str] = (),
    copies: int = 1,
    name: str | None = None,
    pack_name: str = "deepscan-default",
    version: str | None = None,
    cache_dir: Path | None = None,
    verbose: int = 1,
) -> Manifest:
    """Train an audio CNN on the clips of ``data_dir`` (one dataset folder or several, any layout
    ``load_audio_dataset`` reads) and add it to the pack: ``audio_cnn`` over a spectrogram front end,
    ``raw_cnn`` over the ``waveform`` one (``audio_member_builder``).

    The member is named ``audio_<feature>`` unless ``name`` says otherwise; a member of that name is
    replaced, other audio members stay and are fused with it (``fit_audio_fusion``). The split is
    speaker-disjoint. Spoof families in ``holdout_families`` (their fakes, and the recordings of their
    collection) are kept out of training and validation entirely: their test figures are the ones that
    predict unseen generators. Training windows are the clips as they are plus ``copies`` processed copies
    of each (class-neutral degradations), in batches where every dataset weighs alike within its class:
    the recipe the leave-one-family-out sweep measures (``training.crosseval``, variant ``audio_cnn``).
    With ``cache_dir`` the windows' inputs are kept there and read back next time.
    """
    architecture, build = audio_member_builder(front_end)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"audio_{front_end.feature}"
    _audio_pack_with(out_dir, name, front_end)  # refuses windows the pack cannot fuse, before training
    splits = _audio_splits(data_dir, holdout_families)
    windows = partial(window_features, front_end=front_end, seed=config.seed, cache_dir=cache_dir,
                                statistics=False)  # fmt: skip
    train, val = windows(splits["train"], copies=copies), windows(splits["val"])
    recipe = {"copies": copies, "train_windows": len(train.labels), "val_windows": len(val.labels)}
    logger.info("%s: %d training windows (the clips and %d processed copies of each), %d validation", name,
                recipe["train_windows"], copies, recipe["val_windows"])  # fmt: skip
    batches = balanced_batches(train, config)  # shuffled: a copy of the windows
    del train
    _, state = fit_member(
        lambda: build(front_end.input_shape),
        name,
        batches,
        val.x,
        val.labels,
        out_dir / "checkpoints",
        config,
        verbose=verbose,
    )
    file = f"{name}.keras"
    _save_inference_copy(out_dir / "checkpoints" / f"{name}.best.keras", out_dir / file)
    spec = MemberSpec(
        name=name,
        kind="audio",
        file=file,
        input_size=front_end.input_shape,
        architecture=architecture,
        metrics={"val_auc": state["best_auc"], "best_epoch": state["best_epoch"] + 1},
        front_end=front_end,
    )
    previous, members, layout = _audio_pack_with(out_dir, name, front_end)  # read again: it may have changed
    base = _base_manifest(previous, pack_name, version, [spec])
    write_manifest(out_dir, replace(base, members=(*members, spec), audio=layout))
    (out_dir / f"{name}.report.json").write_text(
        json.dumps({"state": state, "config": config.__dict__, "recipe": recipe}, indent=2)
    )
    return fit_audio_fusion(data_dir, out_dir, holdout_families=holdout_families, config=config)


def _audio_pack_with(
    out_dir: Path, name: str, front_end: AudioFrontEnd
) -> tuple[Manifest | None, list[MemberSpec], AudioFrontEnd]:
    """The pack in ``out_dir`` (if any), its members other than ``name``, and the window layout they share.

    Raises ``ModelPackError`` when ``front_end`` cuts other windows than the pack's audio members do.
    """
    previous = read_manifest(out_dir) if (out_dir / MANIFEST_FILE).is_file() else None
    if previous and any(m.name == name and m.kind != "audio" for m in previous.members):
        raise ModelPackError(f"{name} is the name of one of the pack's image members: choose another")
    members = [m for m in previous.members if m.name != name] if previous else []
    layout = previous.audio if previous and any(m.kind == "audio" for m in members) else front_end
    if layout is None or not front_end.same_windows(layout):
        raise ModelPackError(
            f"{name} would cut windows of {front_end.window_s} s every {front_end.hop_s} s; the pack's other "
            f"audio members use {layout.window_s if layout else '?'} s every {layout.hop_s if layout else '?'} s, "
            "and members are fused window by window"
        )
    return previous, members, layout


def _audio_splits(data: DataDirs, holdout_families: Sequence[str]) -> dict[str, list[AudioItem]]:
    """Speaker-disjoint splits of every clip of the dataset folders; the held-out families (their fakes
    and their collections) only in test."""
    splits = speaker_disjoint_split(load_audio_datasets(data_dirs_of(data)))
    for split in ("train", "val"):
        splits[split] = [item for item in splits[split] if not held_out(item, holdout_families)]
    for split, items in splits.items():
        logger.info("%s: %d clips (%d spoofed)", split, len(items), sum(i.label for i in items))
    return splits


def score_audio_clips(
    pack: ModelPack, items: Sequence[AudioItem]
) -> tuple[np.ndarray, np.ndarray, list[AudioItem]]:
    """Window scores of every audio member for every usable clip.

    Returns (scores (N, M_audio), clip index (N,) into the returned items, the usable items).
    """
    if pack.manifest.audio is None:
        raise DeepscanError("the pack has no audio member")
    scores: list[np.ndarray] = []
    clips: list[int] = []
    usable: list[AudioItem] = []
    for item, windows in _usable_clips(items, pack.manifest.audio):
        scores.append(pack.score_audio_windows(windows))
        clips.extend([len(usable)] * len(windows))
        usable.append(item)
    if not usable:
        raise DeepscanError("no usable audio clips")
    return np.concatenate(scores), np.asarray(clips, dtype=np.int64), usable


def fit_audio_fusion(
    data_dir: DataDirs,
    pack_dir: str | Path,
    *,
    holdout_families: Sequence[str] = (),
    config: FitConfig | None = None,
) -> Manifest:
    """Fuse the pack's audio members and measure them: the audio aggregation, threshold and figures.

    The aggregation is a logistic regression over the members' window logits, fitted on validation windows
    with balanced classes (with one member it is Platt scaling). The generated set's spoof-to-real ratio is
    an artefact of how many families were made, so probabilities are calibrated for equal priors. The clip
    threshold sits at the validation EER point. Test figures: all clips, each family against all real
    clips, the held-out families pooled; for the fusion and for each member alone (Platt-scaled alike).
    """
    pack_dir = Path(pack_dir)
    pack = ModelPack.load(pack_dir, verify=False)
    splits = _audio_splits(data_dir, holdout_families)
    held = set(holdout_families)
    scored = {split: score_audio_clips(pack, splits[split]) for split in ("val", "test")}
    val_windows, val_clips, val_items = scored["val"]
    window_labels = np.array([val_items[c].label for c in val_clips])

    def measure(columns: list[int]) -> tuple[Aggregation, float, dict[str, Any], float]:
        fusion = fit_aggregation(val_windows[:, columns], window_labels, platt=True)

        def per_clip(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
            windows, clips, items = scored[split]
            probabilities = clip_scores(aggregate(windows[:, columns], fusion), clips, len(items))
            return probabilities, np.array([i.label for i in items]), [i.family for i in items]

        val_scores, val_labels, _ = per_clip("val")
        _, threshold = eer(val_labels, val_scores)
        test_scores, labels, families = per_clip("test")
        figures = _figures(labels, test_scores, families, threshold, per_family=True, held_out=sorted(held))
        return fusion, float(threshold), figures, roc_auc(val_labels, val_scores)

    members = pack.manifest.audio_members
    measured = {m.name: measure([j]) for j, m in enumerate(members)}
    member_figures = {name: figures for name, (_, _, figures, _) in measured.items()}
    fusion, threshold, figures, _ = measure(list(range(len(members))))
    for name, member_test in member_figures.items():
        _update_report(pack_dir / f"{name}.report.json", test=member_test)
    manifest = pack.manifest
    updated = tuple(
        replace(
            m,
            metrics={
                **m.metrics,
                "split_val_auc": measured[m.name][3],
                "test_auc": member_figures[m.name]["all"]["auc"],
                "test_eer": member_figures[m.name]["all"]["eer"],
            },
        )
        if m.kind == "audio"
        else m
        for m in manifest.members
    )
    manifest = replace(
        manifest,
        members=updated,
        audio_aggregation=fusion,
        thresholds={**manifest.thresholds, "audio": threshold},
        info={
            **dict(manifest.info),
            "audio_training": {
                "data": data_label(data_dir),
                "split_clips": {k: len(v) for k, v in splits.items()},
                "holdout_families": sorted(held),
                "config": config.__dict__ if config else None,
                "test_clips": figures,
                "members": member_figures,
            },
        },
    )
    return write_manifest(pack_dir, manifest)


def copy_pack(source: Path, target: Path) -> None:
    """Copy a pack's manifest and member files (no checkpoints) to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(source)
    for member in manifest.members:
        shutil.copy2(source / member.file, target / member.file)
    shutil.copy2(source / MANIFEST_FILE, target / MANIFEST_FILE)
