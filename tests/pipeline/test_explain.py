from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.analyze import Analyzer
from pipeline.errors import NoFaceError
from pipeline.explain import explain_crop, render_overlay
from pipeline.pack import ModelPack
from workers.samples import face_image


def test_lime_finds_the_region_the_score_depends_on() -> None:
    crop = np.full((64, 64, 3), 128, np.uint8)
    crop[:, :32] = 200  # two flat halves: SLIC puts the boundary between them

    def score(crops: list[np.ndarray]) -> np.ndarray:  # "fake" exactly when the left half is visible
        return np.array([float(c[:, :32].mean() > 100) * 0.9 + 0.05 for c in crops])

    explanation = explain_crop(crop, score, num_samples=60, n_segments=4)
    segments, weights = explanation.segments, explanation.weights
    top = explanation.top_segments(1)[0]
    assert top["weight"] > 0.2 and not (segments[:, 32:] == top["segment"]).any()  # inside the left half
    left, right = set(np.unique(segments[:, :32])), set(np.unique(segments[:, 32:]))
    assert left.isdisjoint(right)
    assert min(weights[s] for s in left) > max(weights.get(s, 0.0) for s in right)
    assert explanation.fake_probability == pytest.approx(0.95)


def test_overlay_tints_towards_fake_in_red() -> None:
    crop = np.full((20, 20, 3), 100, np.uint8)
    segments = np.zeros((20, 20), int)
    segments[:, 10:] = 1
    out = render_overlay(crop, segments, {0: 0.5, 1: -0.5})
    assert out[5, 2, 0] > out[5, 2, 2] and out[5, 17, 2] > out[5, 17, 0]


def test_every_face_of_an_image_is_explained(random_pack: Path) -> None:
    analyzer = Analyzer(ModelPack.load(random_pack))
    ((box, explanation),) = analyzer.explain_image(face_image(), num_samples=30)
    assert box.w > 50 and explanation.overlay.shape == explanation.segments.shape + (3,)
    assert len(explanation.weights) >= 1
    with pytest.raises(NoFaceError):
        analyzer.explain_image(np.zeros((64, 64, 3), np.uint8), num_samples=10)
