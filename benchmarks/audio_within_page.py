"""In-distribution check of the log-mel statistics: how well they separate each ``audio/neural`` page's
fakes from its own recordings when that page is trained on (5-fold cross-validation within the page).

Not a held-out figure: it says whether the statistics carry the information at all, next to the
leave-one-family-out sweep, which says whether it transfers. Reads the statistics the sweep cached:

    python benchmarks/audio_within_page.py [--sweep build/crosseval]

(after ``deepscan evaluate --kind audio --leave-one-out --data build/spoofs --data ../shared/data/audio/neural
--data ../shared/data/audio/real/librispeech --out build/crosseval``; the same ``--data`` folders here).
Each clip is the mean of its windows' statistics (the clips as they are, no processed copies), read by
a standardised logistic regression (C = 0.1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.audio_datasets import load_audio_datasets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=Path("build/crosseval"))
    parser.add_argument(
        "--data", type=Path, action="append",
        help="the sweep's --data folders, in its order (default: build/spoofs, audio/neural, LibriSpeech)",
    )  # fmt: skip
    args = parser.parse_args()
    data = args.data or [
        Path("build/spoofs"),
        SHARED / "audio" / "neural",
        SHARED / "audio" / "real" / "librispeech",
    ]
    items = load_audio_datasets(data)
    (cache,) = sorted((args.sweep / "cache").glob("logmel_stats-*.npz"))
    with np.load(cache) as stored:
        x, clips, copies = stored["x"], stored["clips"], stored["copies"]
    keep = copies == 0
    x, clips = x[keep], clips[keep]
    counts = np.bincount(clips, minlength=len(items))
    sums = np.zeros((len(items), x.shape[1]))
    np.add.at(sums, clips, x)
    print("| page | clips (real/fake) | within-page 5-fold AUC |")
    print("|---|---|---|")
    for page in sorted({i.collection for i in items if i.collection}):
        index = [k for k, i in enumerate(items) if i.collection == page and counts[k]]
        features = sums[index] / counts[index, None]
        labels = np.array([items[k].label for k in index])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        p = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
        print(f"| {page} | {(labels == 0).sum()}/{labels.sum()} | {roc_auc_score(labels, p):.3f} |")


if __name__ == "__main__":
    main()
