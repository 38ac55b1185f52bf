"""Detection metrics on (labels, scores) pairs; label 1 = fake, score = P(fake).

Own implementations (numpy only) so that figures in model cards do not depend on a library's defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE_LEVEL = 0.95  # of the AUC intervals the reports carry


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
    ranks = _midranks(scores[None, :])[0]
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of the rows of ``x`` (K, N) along axis 1, tied values sharing the mean of their ranks."""
    order = np.argsort(x, axis=1, kind="mergesort")
    ranks = np.empty_like(x, dtype=np.float64)
    for k in range(x.shape[0]):
        sorted_x = x[k, order[k]]
        boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
        starts, ends = np.r_[0, boundaries], np.r_[boundaries, x.shape[1]]
        ranks[k, order[k]] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of K scorers on the same items and the covariance of their estimates (DeLong et al., 1988).

    ``scores`` is (N,) or (K, N); returns (AUCs (K,), covariance (K, K)). The covariance comes from each
    item's placement value (the share of the other class it outranks, ties counting one half), in the
    rank form of Sun and Xu (2014). Needs both classes; with one fake or one real item the covariance
    has no degrees of freedom and is NaN.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != labels.shape[0]:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    fake, real = scores[:, labels == 1], scores[:, labels == 0]
    m, n = fake.shape[1], real.shape[1]
    if m == 0 or n == 0:
        nan = np.full(scores.shape[0], np.nan)
        return nan, np.full((len(nan), len(nan)), np.nan)
    combined = _midranks(np.concatenate([fake, real], axis=1))
    fake_placements = (combined[:, :m] - _midranks(fake)) / n  # share of real items each fake one outranks
    real_placements = 1.0 - (combined[:, m:] - _midranks(real)) / m
    aucs = fake_placements.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        covariance = (
            np.atleast_2d(np.cov(fake_placements)) / m + np.atleast_2d(np.cov(real_placements)) / n
            if m > 1 and n > 1
            else np.full((len(aucs), len(aucs)), np.nan)
        )
    return aucs, covariance


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def auc_interval(
    labels: np.ndarray, scores: np.ndarray, level: float = CONFIDENCE_LEVEL
) -> tuple[float, float]:
    """Confidence interval of the AUC: DeLong's standard error, on the logit scale so it stays in [0, 1].

    On 23 fakes and 66 real items an AUC near 0.93 spans about 0.86-0.97; an interval says how far a
    figure from a small split can be trusted. An AUC of exactly 0 or 1 has no spread among its
    placements and gives a zero-width interval; fewer than two items of a class give NaN.
    """
    aucs, covariance = delong(labels, scores)
    auc, variance = float(aucs[0]), float(covariance[0, 0])
    if not np.isfinite(variance):
        return float("nan"), float("nan")
    if auc <= 0.0 or auc >= 1.0:
        return auc, auc
    half = _z(level) * np.sqrt(variance) / (auc * (1.0 - auc))  # delta method: d logit(a) / da = 1/(a(1-a))
    centre = np.log(auc / (1.0 - auc))
    low, high = 1.0 / (1.0 + np.exp(-(centre - half))), 1.0 / (1.0 + np.exp(-(centre + half)))
    return float(low), float(high)


def auc_difference(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, level: float = CONFIDENCE_LEVEL
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same items and its confidence interval (DeLong's paired test).

    The two scorers' errors are correlated (they judge the same items), so the interval of the
    difference is much narrower than the two AUC intervals side by side suggest.
    Returns (difference, low, high).
    """
    aucs, covariance = delong(labels, np.stack([np.reshape(scores_a, -1), np.reshape(scores_b, -1)]))
    difference = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    if not np.isfinite(variance):
        return difference, float("nan"), float("nan")
    half = _z(level) * np.sqrt(max(variance, 0.0))
    return difference, float(difference - half), float(difference + half)


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
    auc_low: float  # CONFIDENCE_LEVEL interval of the AUC (auc_interval)
    auc_high: float
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
    low, high = auc_interval(labels, scores)
    return Report(
        n=len(labels),
        n_fake=int(labels.sum()),
        accuracy=(tp + tn) / max(len(labels), 1),
        precision=precision,
        recall=recall,
        f1=f1,
        auc=roc_auc(labels, scores),
        auc_low=low,
        auc_high=high,
        eer=eer(labels, scores)[0] if 0 < labels.sum() < len(labels) else float("nan"),
        ece=expected_calibration_error(labels, scores),
        threshold=threshold,
        confusion=((tn, fp), (fn, tp)),
    )
