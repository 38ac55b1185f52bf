"""Leave one source out for face detectors: train without a source, test on it.

For every image source S of the datasets (``faceswap_lfw``, ``gan_ffhq_tpdne``, ``dfdc``, ``stylegan``, ...)
a fold trains the planned members on the train split of the other sources (with pseudo-fakes of their real
faces when asked), early-stops them and fits their stacking on the val split of the other sources, and
scores S's test split, which nothing in the fold saw: neither S's fakes nor its reals, so a new camera is
as new as a new generator. Beside it, the in-split figure: the same plan trained on every source (fold
``all``), scored on S's test split. The held-out AUC is the number that predicts a generator nobody here has
seen; the gap between the two is what training on a source buys.

A fixed pack (the bundled one unless told otherwise) is scored on the same test items; a source its
training data held is marked ``seen`` (``info.image_training.data`` names the folders, the sources are
read from them).

Each fold keeps its checkpoints and scores under ``out_dir/<fold>``: a rerun resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ensemble import aggregate
from pipeline.faces import to_model_input
from pipeline.pack import ModelPack
from training.fitting import Augmentation, FitConfig, Sample
from training.metrics import auc_interval, roc_auc
from training.pseudofakes import PseudoFakes
from training.recipes import DataDirs, MemberPlan, fit_aggregation, fit_image_member, image_splits

logger = logging.getLogger(__name__)

ALL_SOURCES = "all"  # the in-split fold: every source in training
ENSEMBLE = "ensemble"


def _subset(
    splits: dict[str, list[Sample]], crops: dict[str, np.ndarray], keep: Any
) -> tuple[dict[str, list[Sample]], dict[str, np.ndarray]]:
    """The samples (and their crops) of every split for which ``keep(sample)`` holds."""
    masks = {name: np.array([bool(keep(s)) for s in items], dtype=bool) for name, items in splits.items()}
    return (
        {name: [s for s, m in zip(items, masks[name], strict=True) if m] for name, items in splits.items()},
        {name: crops[name][masks[name]] for name in splits},
    )


def _predict(model_file: Path, plan: MemberPlan, crops: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(model_file, compile=False)
    inputs = to_model_input(list(crops), plan.input_size, plan.crop_geometry)
    return np.asarray(model.predict(inputs, batch_size=64, verbose=0), dtype=np.float64).reshape(-1)


def _run_fold(
    fold: str,
    plans: Sequence[MemberPlan],
    splits: dict[str, list[Sample]],
    crops: dict[str, np.ndarray],
    fold_dir: Path,
    *,
    config: FitConfig,
    augmentation: Augmentation | None,
    pseudo_fakes: PseudoFakes | None,
    verbose: int,
) -> dict[str, Any]:
    """Train the plan without ``fold``'s source (every source for ``all``); scores of the test split."""
    scores_file = fold_dir / "scores.json"
    if scores_file.is_file():
        return dict(json.loads(scores_file.read_text()))
    train, train_crops = _subset(splits, crops, lambda s: s.source != fold)
    logger.info("fold %s: %d train, %d val faces", fold, len(train["train"]), len(train["val"]))
    val_labels = np.array([s.label for s in train["val"]], dtype=np.int64)
    val_matrix, test_matrix = [], []
    for plan in plans:
        fit_image_member(
            plan,
            train,
            train_crops,
            fold_dir / "checkpoints",
            config=config,
            augmentation=augmentation,
            pseudo_fakes=pseudo_fakes,
            verbose=verbose,
        )
        best = fold_dir / "checkpoints" / f"{plan.name}.best.keras"
        val_matrix.append(_predict(best, plan, train_crops["val"]))
        test_matrix.append(_predict(best, plan, crops["test"]))
    aggregation = fit_aggregation(np.stack(val_matrix, axis=1), val_labels)
    member_scores = {plan.name: scores.tolist() for plan, scores in zip(plans, test_matrix, strict=True)}
    ensemble = aggregate(np.stack(test_matrix, axis=1), aggregation)
    result = {"fold": fold, "scores": {**member_scores, ENSEMBLE: ensemble.tolist()}}
    fold_dir.mkdir(parents=True, exist_ok=True)
    scores_file.write_text(json.dumps(result))
    return result


def _pack_sources(pack: ModelPack, data: Sequence[Path]) -> set[str]:
    """The sources among ``data``'s folders that the pack's image training read (by folder name)."""
    from training.face_datasets import find_face_samples

    trained_on = set(str(pack.manifest.info.get("image_training", {}).get("data", "")).split("+"))
    return {s.source for d in data if d.name in trained_on for s in find_face_samples([d])}


def leave_one_source_out(
    data: DataDirs,
    plans: Sequence[MemberPlan],
    out_dir: str | Path,
    *,
    tight_sources: Sequence[str] = (),
    pseudo_fakes: PseudoFakes | None = None,
    config: FitConfig = FitConfig(),
    augmentation: Augmentation | None = Augmentation(),
    sources: Sequence[str] = (),
    pack: ModelPack | None = None,
    limit_per_split: int | None = None,
    verbose: int = 2,
) -> dict[str, Any]:
    """Run the in-split fold and one fold per source (``sources``, or all of them); returns the figures.

    Figures per source (its test split): AUC with its 95 % interval of each member and of the stacked
    ensemble, in-split and held out, and of ``pack`` if given. Also written to ``out_dir/loso.json``.
    """
    from training.recipes import data_dirs_of

    out_dir = Path(out_dir)
    folders = data_dirs_of(data)
    splits, crops = image_splits(folders, tight_sources, limit_per_split, config.seed)
    test = splits["test"]
    labels = np.array([s.label for s in test], dtype=np.int64)
    test_sources = np.array([s.source for s in test])
    every_source = sorted(set(test_sources))
    folds = list(sources) or every_source
    unknown = set(folds) - set(every_source)
    if unknown:
        raise ValueError(f"no source named {', '.join(sorted(unknown))}; sources: {', '.join(every_source)}")
    runs = {
        fold: _run_fold(
            fold,
            plans,
            splits,
            crops,
            out_dir / fold,
            config=config,
            augmentation=augmentation,
            pseudo_fakes=pseudo_fakes,
            verbose=verbose,
        )
        for fold in [ALL_SOURCES, *folds]
    }

    def figures(scores: Sequence[float] | np.ndarray, source: str) -> dict[str, Any]:
        mask = test_sources == source
        y, p = labels[mask], np.asarray(scores, dtype=np.float64)[mask]
        auc, (low, high) = roc_auc(y, p), auc_interval(y, p)
        return {"auc": auc, "low": low, "high": high, "n_real": int((y == 0).sum()), "n_fake": int(y.sum())}

    table: dict[str, Any] = {"plans": [p.name for p in plans], "sources": {}}
    pack_scores: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    if pack is not None:
        matrix = pack.score_faces(list(crops["test"]))
        label = pack.manifest.label
        pack_scores = {f"{label} ensemble": aggregate(matrix, pack.manifest.aggregation)}
        pack_scores |= {f"{label} {m.name}": matrix[:, j] for j, m in enumerate(pack.manifest.image_members)}
        seen = _pack_sources(pack, folders)
    for source in folds:
        row: dict[str, Any] = {
            "in_split": {k: figures(v, source) for k, v in runs[ALL_SOURCES]["scores"].items()},
            "held_out": {k: figures(v, source) for k, v in runs[source]["scores"].items()},
        }
        if pack_scores:
            row["pack"] = {k: figures(v, source) for k, v in pack_scores.items()}
            row["pack_seen"] = source in seen
        table["sources"][source] = row
    table["settings"] = {
        "data": [str(f) for f in folders],
        "tight_sources": list(tight_sources),
        "pseudo_fakes": pseudo_fakes.__dict__ if pseudo_fakes else None,
        "config": config.__dict__,
        "limit_per_split": limit_per_split,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loso.json").write_text(json.dumps(table, indent=1))
    return table


def to_markdown(table: dict[str, Any]) -> str:
    """One row per source: the ensemble's and each member's AUC held out and in-split, and the pack's."""
    scorers = [ENSEMBLE, *table["plans"]]
    header = ["source", "test real/fake"]
    header += [f"{s} held out" for s in scorers] + [f"{s} in-split" for s in scorers]
    first: dict[str, Any] = next(iter(table["sources"].values()), {})
    pack_scorers = list(first.get("pack", {}))
    header += pack_scorers
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for source, row in table["sources"].items():
        counts = row["held_out"][ENSEMBLE]
        cells = [source, f"{counts['n_real']}/{counts['n_fake']}"]
        cells += [_cell(row["held_out"][s]) for s in scorers] + [_cell(row["in_split"][s]) for s in scorers]
        seen = " (seen)" if row.get("pack_seen") else ""
        cells += [_cell(row["pack"][s]) + seen for s in pack_scorers]
        lines.append("| " + " | ".join(cells) + " |")
    settings = table["settings"]
    lines += [
        "",
        "Cells: AUC [95 % DeLong interval] on the source's test split. Held out: trained without the source "
        "(fakes and reals); in-split: trained on every source. Pseudo-fakes: "
        f"{settings['pseudo_fakes'] or 'none'}; tight-crop sources: {', '.join(settings['tight_sources']) or 'none'}.",
    ]
    return "\n".join(lines) + "\n"


def _cell(figures: dict[str, Any]) -> str:
    if not np.isfinite(figures["auc"]):
        return "-"
    return f"{figures['auc']:.3f} [{figures['low']:.2f}, {figures['high']:.2f}]"
