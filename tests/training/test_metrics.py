from __future__ import annotations

import numpy as np
import pytest

from training import metrics


@pytest.fixture
def noisy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 500), 0, 1).round(2)  # rounding makes ties
    return labels, scores


def test_auc_matches_scikit_learn_with_ties(noisy: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.metrics import roc_auc_score

    labels, scores = noisy
    assert metrics.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_extremes() -> None:
    assert metrics.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert metrics.roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(metrics.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_eer_is_where_error_rates_cross(noisy: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = noisy
    rate, threshold = metrics.eer(labels, scores)
    fpr = (scores[labels == 0] >= threshold).mean()
    fnr = (scores[labels == 1] < threshold).mean()
    assert abs(fpr - fnr) < 0.03 and rate == pytest.approx((fpr + fnr) / 2, abs=0.03)
    assert metrics.eer(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))[0] == 0.0


def test_threshold_at_fpr_respects_the_target(noisy: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = noisy
    for target in (0.01, 0.05, 0.2):
        t = metrics.threshold_at_fpr(labels, scores, target)
        assert (scores[labels == 0] >= t).mean() <= target


def test_ece_zero_for_calibrated_bins_and_large_for_overconfident() -> None:
    labels = np.array([0] * 8 + [1] * 2 + [1] * 8 + [0] * 2)
    scores = np.array([0.2] * 10 + [0.8] * 10)
    assert metrics.expected_calibration_error(labels, scores) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(labels, np.where(scores > 0.5, 1.0, 0.0)) == pytest.approx(0.2)


def test_report_confusion_and_f1() -> None:
    r = metrics.report(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.7, 0.8, 0.9, 0.2]), threshold=0.5)
    assert r.confusion == ((1, 1), (1, 2))
    assert r.accuracy == pytest.approx(0.6) and r.f1 == pytest.approx(2 / 3)


def _placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each fake item's share of real items it outranks, and each real item's share of fakes it is below
    (ties one half): DeLong's structural components, pair by pair."""
    fake, real = scores[labels == 1], scores[labels == 0]
    wins = (fake[:, None] > real[None, :]) + 0.5 * (fake[:, None] == real[None, :])
    return wins.mean(axis=1), wins.mean(axis=0)


def test_delong_covariance_equals_the_pairwise_definition(noisy: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = noisy
    other = np.clip(scores + np.random.default_rng(4).normal(0, 0.1, len(scores)), 0, 1).round(2)
    aucs, covariance = metrics.delong(labels, np.stack([scores, other]))
    m, n = int(labels.sum()), int((1 - labels).sum())
    (fa, ra), (fb, rb) = _placements(labels, scores), _placements(labels, other)
    expected = np.cov(np.stack([fa, fb])) / m + np.cov(np.stack([ra, rb])) / n
    np.testing.assert_allclose(covariance, expected, rtol=1e-10)
    np.testing.assert_allclose(aucs, [metrics.roc_auc(labels, scores), metrics.roc_auc(labels, other)])


def test_auc_interval_covers_the_true_auc_at_its_level() -> None:
    """Binormal scores with a known AUC, Phi(d / sqrt 2), on splits the size of the GAN test split."""
    from statistics import NormalDist

    rng = np.random.default_rng(5)
    separation, n_fake, n_real, runs = 2.0, 23, 66, 400
    true_auc = NormalDist().cdf(separation / np.sqrt(2))  # 0.921
    labels = np.r_[np.ones(n_fake), np.zeros(n_real)].astype(int)
    covered, widths = 0, []
    for _ in range(runs):
        scores = np.r_[rng.normal(separation, 1, n_fake), rng.normal(0, 1, n_real)]
        low, high = metrics.auc_interval(labels, scores)
        assert low < metrics.roc_auc(labels, scores) < high
        covered += low <= true_auc <= high
        widths.append(high - low)
    assert 0.91 <= covered / runs <= 0.98
    assert 0.08 < np.mean(widths) < 0.16  # about +-0.03: what 23 fakes can say
    low, high = metrics.auc_interval(labels, scores, level=0.5)  # z 0.674 against 1.960
    assert high - low == pytest.approx(widths[-1] * 0.674 / 1.960, rel=0.1)


def test_auc_interval_edges() -> None:
    assert metrics.auc_interval(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == (1.0, 1.0)
    assert all(np.isnan(metrics.auc_interval(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.8]))))
    r = metrics.report(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.7, 0.8, 0.9, 0.2]))
    assert r.auc_low < r.auc < r.auc_high


def test_paired_auc_difference() -> None:
    rng = np.random.default_rng(6)
    labels = np.tile([0, 1], 100)
    weak = labels + rng.normal(0, 1.5, 200)
    strong = weak + labels * 0.3  # the same noise and a little more signal
    difference, low, high = metrics.auc_difference(labels, strong, weak)
    assert difference == pytest.approx(metrics.roc_auc(labels, strong) - metrics.roc_auc(labels, weak))
    assert 0 < low < difference < high
    assert metrics.auc_difference(labels, weak, weak) == (0.0, 0.0, 0.0)
    # the two intervals side by side overlap; only the pairing shows that one scorer is better
    assert metrics.auc_interval(labels, strong)[0] < metrics.auc_interval(labels, weak)[1]
