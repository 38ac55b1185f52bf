from __future__ import annotations

import numpy as np
import pytest

from pipeline import metrics


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
