from __future__ import annotations

import numpy as np
import pytest

from training.member_choice import compare_members, group_folds


def scores(labels: np.ndarray, separation: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose logits are shifted by ``separation`` for the fakes."""
    return 1 / (1 + np.exp(-(rng.normal(0, 1, len(labels)) + separation * labels)))


def test_a_member_that_carries_the_signal_is_told_from_one_that_does_not() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 600)
    matrix = np.stack([scores(labels, 2.0, rng), scores(labels, 0.0, rng), scores(labels, 0.7, rng)], axis=1)
    groups = [f"clip{i // 3}" for i in range(len(labels))]
    figures = compare_members(matrix, labels, groups, ["strong", "noise", "weak"])
    assert figures["ensemble"] > figures["alone"]["weak"]
    assert figures["ensemble"] - figures["without"]["strong"] > 0.05  # the ensemble loses most without it
    assert abs(figures["ensemble"] - figures["without"]["noise"]) < 0.01  # and nothing without the noise
    assert figures["alone"]["noise"] == pytest.approx(0.5, abs=0.06)


def test_a_cluster_stays_in_one_fold_and_the_folds_are_even() -> None:
    groups = [f"c{i}" for i in np.repeat(np.arange(100), 3)]  # DFDC: a real clip and its fakes
    fold = group_folds(groups, 5, np.random.default_rng(0))
    by_group: dict[str, set[int]] = {}
    for group, k in zip(groups, fold, strict=True):
        by_group.setdefault(group, set()).add(int(k))
    assert all(len(ks) == 1 for ks in by_group.values())
    assert np.bincount(fold).tolist() == [60] * 5
