"""Choose image members on the validation split, never on test: the stacked ensemble's AUC with and
without each member, cross-validated inside the validation faces.

The pack's card measures each member's contribution on the test split (``member_contributions``); a
choice made from that table leans on test figures. This is the figure to decide by before the test split
is read: the stacking is refitted on four fifths of the validation clusters and scored on the fifth, over
several shuffles, so every validation face is scored by a stacking that never saw its cluster.

    python -m training.member_choice --pack DIR --data ../shared/data/faces --data ../shared/data/faces2 \\
        --tight-sources dfdc
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.ensemble import aggregate
from pipeline.pack import ModelPack
from training.metrics import roc_auc
from training.recipes import fit_aggregation, image_splits

FOLDS, REPEATS = 5, 20


def cross_validated_auc(
    matrix: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    columns: Sequence[int],
    *,
    folds: int = FOLDS,
    repeats: int = REPEATS,
) -> float:
    """Mean over ``repeats`` shuffles of the AUC of out-of-fold stacked scores of ``columns``; a group
    (a clip's cluster) is never split across folds."""
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(repeats):
        fold = group_folds(groups, folds, rng)
        scores = np.empty(len(labels))
        for k in range(folds):
            held = fold == k
            aggregation = fit_aggregation(matrix[~held][:, columns], labels[~held])
            scores[held] = aggregate(matrix[held][:, columns], aggregation)
        aucs.append(roc_auc(labels, scores))
    return float(np.mean(aucs))


def group_folds(groups: Sequence[str], folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per face, the same for every face of a group, the groups shuffled evenly over folds."""
    unique = sorted(set(groups))
    fold_of_group = dict(zip(unique, rng.permutation(len(unique)) % folds, strict=True))
    return np.array([fold_of_group[group] for group in groups])


def compare_members(
    matrix: np.ndarray, labels: np.ndarray, groups: Sequence[str], names: Sequence[str]
) -> dict:
    """The cross-validated ensemble AUC of all members, and of the ensemble without each one."""
    everything = list(range(len(names)))
    full = cross_validated_auc(matrix, labels, groups, everything)
    without = {
        name: cross_validated_auc(matrix, labels, groups, [k for k in everything if k != j])
        for j, name in enumerate(names)
    }
    alone = {name: roc_auc(labels, matrix[:, j]) for j, name in enumerate(names)}
    return {"ensemble": full, "without": without, "alone": alone}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", required=True, type=Path)
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--tight-sources", default="")
    args = parser.parse_args(argv)
    tight = [s for s in args.tight_sources.split(",") if s]
    splits, crops = image_splits(args.data, tight)
    pack = ModelPack.load(args.pack, verify=False)
    names = [member.name for member in pack.manifest.image_members]
    labels = np.array([s.label for s in splits["val"]])
    matrix = pack.score_faces(list(crops["val"]))
    figures = compare_members(matrix, labels, [s.key for s in splits["val"]], names)
    sys.stdout.write(json.dumps({"validation_faces": len(labels), **figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
