from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.analyze import Analyzer
from pipeline.errors import NoFaceError
from pipeline.explain import explain_crop, render_overlay
from pipeline.pack import ModelPack
from workers.samples import face_image


def textured(means: list[int], width_px: int, seed: int = 0) -> np.ndarray:
    """Vertical bands of ``width_px`` around each grey level, with fine grey noise: detail a blur removes.

    The noise stays weak enough (sigma 8) for SLIC to cut along the bands.
    """
    rng = np.random.default_rng(seed)
    bands = np.concatenate([np.full((64, width_px, 3), m, np.float64) for m in means], axis=1)
    return np.clip(bands + rng.normal(0, 8, (64, bands.shape[1], 1)), 0, 255).astype(np.uint8)


def detail(region: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours: high for noise, low once blurred."""
    return float(np.abs(np.diff(region.astype(np.float64), axis=1)).mean())


def test_lime_finds_the_region_the_score_depends_on() -> None:
    crop = textured([200, 60], 32)  # two halves: SLIC puts the boundary between them

    def score(crops: list[np.ndarray]) -> np.ndarray:  # "fake" as long as the left half keeps its detail
        reference = detail(crop[:, :32])
        return np.array([0.05 + 0.9 * min(1.0, detail(c[:, :32]) / reference) for c in crops])

    explanation = explain_crop(crop, score, num_samples=60, n_segments=4)
    segments, weights = explanation.segments, explanation.weights
    top = explanation.top_segments(1)[0]
    assert top["weight"] > 0.1 and not (segments[:, 36:] == top["segment"]).any()  # in the left half
    left, right = set(np.unique(segments[:, :28])), set(np.unique(segments[:, 36:]))
    assert left.isdisjoint(right)
    assert min(weights[s] for s in left) > max(weights.get(s, 0.0) for s in right)
    assert explanation.fake_probability == pytest.approx(0.95)
    assert explanation.towards_fake[:, :28].mean() > 0.5 and not explanation.towards_fake[:, 36:].any()


def test_overlay_tints_towards_fake_in_red_and_dims_the_rest() -> None:
    crop = np.full((20, 20, 3), 100, np.uint8)
    towards_fake, towards_real = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    towards_fake[:, :8], towards_real[:, 12:] = True, True
    out = render_overlay(crop, towards_fake, towards_real)
    assert out[5, 2, 0] > out[5, 2, 2] and out[5, 17, 2] > out[5, 17, 0]
    assert (out[5, 10] < crop[5, 10]).all()  # neither: dimmed, untinted


def test_only_the_strongest_regions_are_shown() -> None:
    """Weights like the bundled pack's once were (all small, a few clearly stronger) no longer tint everything."""
    crop = textured([40 + 25 * i for i in range(8)], 8)  # eight bands: SLIC keeps them apart
    reference = detail(crop[:, :8]), detail(crop[:, 8:])

    def score(crops: list[np.ndarray]) -> np.ndarray:  # the first band matters, every other band a little
        return np.array(
            [
                0.3 + 0.4 * detail(c[:, :8]) / reference[0] + 0.01 * detail(c[:, 8:]) / reference[1]
                for c in crops
            ]
        )

    explanation = explain_crop(crop, score, num_samples=120, n_segments=8)
    segments, weights = explanation.segments, explanation.weights
    strongest = max(abs(w) for w in weights.values())
    over_first_band = set(np.unique(segments[:, :8]))
    shown = set(np.unique(segments[explanation.towards_fake]))
    assert shown and shown <= over_first_band  # only regions over the band that matters ...
    assert all(weights[s] >= 0.25 * strongest for s in shown)  # ... and only the strong ones
    assert not explanation.towards_real.any()
    for_fake, for_real = explanation.shown_weights()
    assert len(for_fake) == len(shown) <= 3 and for_real == []
    assert 0.0 <= explanation.fit_r2 <= 1.0 and explanation.num_samples == 120


def test_every_face_of_an_image_is_explained(random_pack: Path) -> None:
    analyzer = Analyzer(ModelPack.load(random_pack))
    ((box, explanation),) = analyzer.explain_image(face_image(), num_samples=30)
    assert box.w > 50 and explanation.overlay.shape == explanation.segments.shape + (3,)
    assert len(explanation.weights) >= 1
    with pytest.raises(NoFaceError):
        analyzer.explain_image(np.zeros((64, 64, 3), np.uint8), num_samples=10)
