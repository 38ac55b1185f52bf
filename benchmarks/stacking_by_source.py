"""Stacking that weighs every face source alike, against the pack's (every validation face alike).

The pack's stacking is a logistic regression over its members' logits fitted on the validation faces,
where DFDC is about half. The variant weighs each (source, class) cell of the validation split alike. Both
are compared by 5-fold cross-validation on the validation split, folds whole by cluster (a DFDC clip and
its fakes together), on out-of-fold scores: AUC over all faces and the mean of the per-source AUCs. The
test split is not read.

    python benchmarks/stacking_by_source.py [--pack DIR] [--data DIR ...] [--tight-sources dfdc]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDS = 5


def cell_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Weights under which every (source, class) cell sums to the same, normalised to a mean of 1."""
    weights = np.zeros(len(labels))
    for source, label in set(zip(sources.tolist(), labels.tolist(), strict=True)):
        cell = (sources == source) & (labels == label)
        weights[cell] = 1.0 / cell.sum()
    return weights * len(labels) / weights.sum()


def main() -> None:
    from sklearn.model_selection import GroupKFold

    from pipeline.ensemble import aggregate
    from pipeline.pack import ModelPack
    from training.metrics import roc_auc
    from training.recipes import fit_aggregation, image_splits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=REPO / "pipeline" / "weights" / "default")
    parser.add_argument("--data", type=Path, action="append")
    parser.add_argument("--tight-sources", default="dfdc")
    args = parser.parse_args()
    data = args.data or [SHARED / "faces", SHARED / "faces2"]
    splits, crops = image_splits(data, [s for s in args.tight_sources.split(",") if s])
    val = splits["val"]
    scores = ModelPack.load(args.pack, verify=False).score_faces(list(crops["val"]))
    labels = np.array([s.label for s in val])
    sources = np.array([s.source for s in val])
    clusters = np.array([s.key for s in val])
    report = {}
    for variant, weighted in (("every face alike (the pack's)", False), ("every source alike", True)):
        out_of_fold = np.zeros(len(labels))
        for fit, held in GroupKFold(FOLDS).split(scores, labels, clusters):
            weights = cell_weights(labels[fit], sources[fit]) if weighted else None
            aggregation = fit_aggregation(scores[fit], labels[fit], sample_weight=weights)
            out_of_fold[held] = aggregate(scores[held], aggregation)
        per_source = {
            s: roc_auc(labels[sources == s], out_of_fold[sources == s]) for s in sorted(set(sources))
        }
        report[variant] = {
            "all": round(roc_auc(labels, out_of_fold), 4),
            "mean_per_source": round(float(np.nanmean(list(per_source.values()))), 4),  # NaN: one class
            "per_source": {k: round(v, 4) for k, v in per_source.items()},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
