"""Aggregation of member scores into one P(fake), and the confidences reported for both classes.

Scores are arrays of shape (N, M): N faces (or windows), M members, each entry P(fake) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

AGGREGATION_METHODS = ("mean", "weighted_mean", "majority", "stacking")
_EPS = 1e-6  # keeps logits finite for saturated member outputs


@dataclass(frozen=True)
class Aggregation:
    """How member scores become one probability; stored in the pack manifest.

    ``stacking`` is a logistic regression over member logits (coefficients in member order plus an
    intercept), fitted on validation data; it also calibrates. ``temperature`` rescales the final logit
    (1.0 leaves it alone) for the other methods.
    """

    method: str = "mean"
    weights: tuple[float, ...] = ()
    coefficients: tuple[float, ...] = ()
    intercept: float = 0.0
    temperature: float = 1.0
    vote_threshold: float = 0.5

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Aggregation:
        method = str(data.get("method", "mean"))
        if method not in AGGREGATION_METHODS:
            raise ValueError(f"unknown aggregation {method!r}; choose from {', '.join(AGGREGATION_METHODS)}")

        def numbers(key: str) -> tuple[float, ...]:
            values = data.get(key) or ()
            if not isinstance(values, list | tuple):
                raise ValueError(f"aggregation {key} must be a list of numbers, got {values!r}")
            return tuple(float(v) for v in values)

        def number(key: str, default: float) -> float:
            value = data.get(key, default)
            if not isinstance(value, int | float):
                raise ValueError(f"aggregation {key} must be a number, got {value!r}")
            return float(value)

        return cls(
            method=method,
            weights=numbers("weights"),
            coefficients=numbers("coefficients"),
            intercept=number("intercept", 0.0),
            temperature=number("temperature", 1.0),
            vote_threshold=number("vote_threshold", 0.5),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "weights": list(self.weights),
            "coefficients": list(self.coefficients),
            "intercept": self.intercept,
            "temperature": self.temperature,
            "vote_threshold": self.vote_threshold,
        }


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the tanh form never overflows


def aggregate(scores: np.ndarray, aggregation: Aggregation) -> np.ndarray:
    """Combine member scores (N, M) into P(fake) (N,), float64."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must have shape (N, M) with M >= 1, got {scores.shape}")
    n_members = scores.shape[1]
    method = aggregation.method
    if method == "majority":
        return (scores >= aggregation.vote_threshold).mean(axis=1)
    if method == "stacking":
        coefficients = np.asarray(aggregation.coefficients, dtype=np.float64)
        if coefficients.shape != (n_members,):
            raise ValueError(f"stacking has {coefficients.size} coefficients for {n_members} members")
        return sigmoid(logit(scores) @ coefficients + aggregation.intercept)
    if method == "weighted_mean":
        weights = np.asarray(aggregation.weights, dtype=np.float64)
        if weights.shape != (n_members,) or weights.sum() <= 0:
            raise ValueError(
                f"weighted_mean needs {n_members} non-negative weights, got {aggregation.weights}"
            )
        combined = scores @ (weights / weights.sum())
    else:
        combined = scores.mean(axis=1)
    if aggregation.temperature != 1.0:
        combined = sigmoid(logit(combined) / aggregation.temperature)
    return combined


@dataclass(frozen=True)
class Verdict:
    """A probability, the label it implies at a threshold, and the confidence in each class."""

    fake_probability: float
    threshold: float
    confidence: dict[str, float] = field(init=False)
    label: str = field(init=False)

    def __post_init__(self) -> None:
        p = float(self.fake_probability)
        object.__setattr__(self, "confidence", {"real": round(1.0 - p, 6), "fake": round(p, 6)})
        object.__setattr__(self, "label", "fake" if p >= self.threshold else "real")


def vote(probabilities: Sequence[float], threshold: float) -> tuple[int, int]:
    """Count (fake, real) votes among per-item probabilities at ``threshold``."""
    fake = sum(1 for p in probabilities if p >= threshold)
    return fake, len(probabilities) - fake
