from __future__ import annotations

import numpy as np
import pytest

from pipeline.ensemble import Aggregation, Verdict, aggregate, vote

SCORES = np.array([[0.9, 0.8, 0.2], [0.1, 0.3, 0.6]])


def test_mean() -> None:
    np.testing.assert_allclose(aggregate(SCORES, Aggregation("mean")), [0.6333333, 0.3333333], rtol=1e-6)


def test_weighted_mean_normalises_weights() -> None:
    out = aggregate(SCORES, Aggregation("weighted_mean", weights=(2.0, 0.0, 2.0)))
    np.testing.assert_allclose(out, [0.55, 0.35])


def test_majority_vote_is_the_fraction_of_fake_votes() -> None:
    np.testing.assert_allclose(aggregate(SCORES, Aggregation("majority")), [2 / 3, 1 / 3])


def test_stacking_is_logistic_over_logits() -> None:
    agg = Aggregation("stacking", coefficients=(1.0, 0.0, 0.0), intercept=0.0)
    np.testing.assert_allclose(aggregate(SCORES, agg), SCORES[:, 0], rtol=1e-6)  # identity on member 0
    shifted = aggregate(SCORES, Aggregation("stacking", coefficients=(1.0, 0.0, 0.0), intercept=2.0))
    assert np.all(shifted > SCORES[:, 0])


def test_temperature_softens_without_reordering() -> None:
    soft = aggregate(SCORES, Aggregation("mean", temperature=3.0))
    assert np.all(np.abs(soft - 0.5) < np.abs(aggregate(SCORES, Aggregation("mean")) - 0.5))
    assert soft[0] > soft[1]


def test_saturated_scores_stay_finite() -> None:
    out = aggregate(np.array([[1.0, 0.0]]), Aggregation("stacking", coefficients=(1.0, 1.0)))
    assert np.isfinite(out).all()


@pytest.mark.parametrize(
    "bad",
    [Aggregation("weighted_mean", weights=(1.0,)), Aggregation("stacking", coefficients=(1.0, 2.0))],
)
def test_mismatched_parameters_raise(bad: Aggregation) -> None:
    with pytest.raises(ValueError):
        aggregate(SCORES, bad)


def test_manifest_round_trip_and_unknown_method() -> None:
    agg = Aggregation("stacking", coefficients=(0.5, 1.5), intercept=-0.2)
    assert Aggregation.from_dict(agg.to_dict()) == agg
    with pytest.raises(ValueError, match="unknown aggregation"):
        Aggregation.from_dict({"method": "median"})


def test_verdict_confidences_sum_to_one() -> None:
    v = Verdict(0.8, threshold=0.7)
    assert v.label == "fake" and v.confidence == {"real": pytest.approx(0.2), "fake": 0.8}
    assert Verdict(0.6, threshold=0.7).label == "real"


def test_vote_counts() -> None:
    assert vote([0.9, 0.2, 0.5, 0.49], threshold=0.5) == (2, 2)
