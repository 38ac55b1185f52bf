"""Detection metrics on (labels, scores) pairs; label 1 = fake, score = P(fake).

Own implementations (numpy only) so that figures in model cards do not depend on a library's defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    return labels, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half). NaN if one class."""
    labels, scores = _check(labels, scores)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over runs of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (descending). Returns (fpr, tpr, thr)."""
    labels, scores = _check(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((1 - labels).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, scores[distinct]]
    return fpr, tpr, thresholds


def eer(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs (linear interpolation between ROC points)."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fpr - fnr
    i = int(np.flatnonzero(diff >= 0)[0]) if np.any(diff >= 0) else len(diff) - 1
    if i == 0:
        return float(fpr[0]), float(thresholds[0])
    d0, d1 = diff[i - 1], diff[i]
    t = d0 / (d0 - d1) if d1 != d0 else 0.0
    rate = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    threshold = (
        thresholds[i]
        if not np.isfinite(thresholds[i - 1])
        else thresholds[i - 1] + t * (thresholds[i] - thresholds[i - 1])
    )
    return float(rate), float(threshold)


def threshold_at_fpr(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on these data stays at or below ``target_fpr``."""
    labels, scores = _check(labels, scores)
    negatives = np.sort(scores[labels == 0])[::-1]
    if negatives.size == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * negatives.size))  # how many real items may score above it
    if allowed >= negatives.size:
        return float(negatives[-1])
    return float(np.nextafter(negatives[allowed], np.inf))


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> float:
    """ECE over equal-width bins of P(fake): mean |accuracy - confidence| weighted by bin size."""
    labels, scores = _check(labels, scores)
    bins = np.minimum((scores * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() * abs(labels[mask].mean() - scores[mask].mean())
    return float(total / max(len(scores), 1))


@dataclass(frozen=True)
class Report:
    n: int
    n_fake: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    auc: float
    eer: float
    ece: float
    threshold: float
    confusion: tuple[tuple[int, int], tuple[int, int]]  # [[TN, FP], [FN, TP]]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def report(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> Report:
    labels, scores = _check(labels, scores)
    predicted = (scores >= threshold).astype(np.int64)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Report(
        n=len(labels),
        n_fake=int(labels.sum()),
        accuracy=(tp + tn) / max(len(labels), 1),
        precision=precision,
        recall=recall,
        f1=f1,
        auc=roc_auc(labels, scores),
        eer=eer(labels, scores)[0] if 0 < labels.sum() < len(labels) else float("nan"),
        ece=expected_calibration_error(labels, scores),
        threshold=threshold,
        confusion=((tn, fp), (fn, tp)),
    )
