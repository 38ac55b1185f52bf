"""Which regions of a face drove its score: LIME over superpixels of the crop (Ribeiro et al., 2016).

LIME hides random subsets of superpixels, scores every perturbed crop with the same function the
verdict came from, and fits a linear model: each superpixel's weight is how much showing it moves
P(fake). Positive weights push towards "fake", negative towards "real".

A hidden superpixel is blurred, not blacked out. The members look at fine colour residuals; with black
patches every perturbed crop scored at or below the original (bundled pack 0.7.0: P(fake) 0 to 0.313 for
a face at 0.313), so every region came out "towards fake" by about one point and two seeds agreed on
none of them. Blurring removes the fine detail the members read and keeps the face a face: the same face
then ranges over 0.13 to 0.83 and the strongest weights reach 8 to 9 points, both ways
(benchmarks/explain_lime.py).

Cost is the ensemble scoring ``num_samples`` perturbed crops, handed to it in large batches (LIME's own
default hands over 10 at a time). Only the strongest regions on each side are shown: with every segment
tinted, a face whose weights are all about 0.01 came out uniformly red and said nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

# Perturbed crops per face. benchmarks/explain_lime.py (bundled pack 0.7.0, 15 superpixels, 2 CPU cores
# shared with other jobs at a load of 10-12): 64 samples take 15-19 s per face, 128 take 38 s; the regions
# shown at 64 cover 60 % (pixel IoU) of those shown at 512, and two seeds agree on 26-41 % at 64 or 128.
LIME_SAMPLES = 64
# Crops per call of the scoring function: the whole neighbourhood at once up to this many, so that the
# ensemble sees full batches (ModelPack pads each member's batch to a power of two up to 64).
LIME_BATCH = 256
BLUR_SIGMA_FRACTION = 1 / 32  # of the crop side: a hidden region keeps its colours, loses its detail
# SLIC segments per crop: eyes, mouth, cheeks, hair and background come out apart. Fewer, larger regions
# than 25 gave steadier explanations at the same cost (agreement with 512 samples 0.60 against 0.29).
SUPERPIXELS = 15
TOP_REGIONS = 3  # at most this many regions shown on each side (for fake, for real)
# A region is shown only if its weight is at least this share of the strongest one: weaker regions are
# noise at this sample count, and tinting them hides the ones that matter.
MIN_WEIGHT_SHARE = 0.25
OVERLAY_ALPHA = 0.5
DIM_REST = 0.55  # brightness of the regions not shown, so the shown ones stand out
FAKE_RGB = (230, 40, 40)
REAL_RGB = (40, 110, 255)
T = TypeVar("T")


@dataclass(frozen=True)
class FaceExplanation:
    """A LIME explanation of one face crop.

    ``crop`` is the uint8 RGB crop (S, S, 3) that was explained, ``segments`` its superpixels (S, S) int,
    ``weights`` maps each segment to its change in P(fake) when shown, ``towards_fake`` and
    ``towards_real`` are bool masks (S, S) of the strongest regions on each side, ``overlay`` is the crop
    with those regions tinted (RGB uint8 (S, S, 3)), ``fit_r2`` the R² of LIME's local linear model on its
    samples (how much of the score's variation the regions explain).
    """

    crop: np.ndarray
    segments: np.ndarray
    weights: dict[int, float]
    fake_probability: float
    towards_fake: np.ndarray
    towards_real: np.ndarray
    overlay: np.ndarray
    fit_r2: float
    num_samples: int

    def top_segments(self, k: int = 5) -> list[dict[str, float]]:
        ranked = sorted(self.weights.items(), key=lambda kv: abs(kv[1]), reverse=True)[:k]
        return [
            {"segment": int(s), "weight": round(w, 5), "area": float((self.segments == s).mean())}
            for s, w in ranked
        ]

    def shown_weights(self) -> tuple[list[float], list[float]]:
        """Weights of the regions shown towards fake (descending) and towards real (most negative first)."""

        def shown(mask: np.ndarray) -> list[float]:
            return [self.weights[int(s)] for s in np.unique(self.segments[mask])]

        return sorted(shown(self.towards_fake), reverse=True), sorted(shown(self.towards_real))


def _no_progress_bar(iterable: Iterable[T], *_: object, **__: object) -> Iterable[T]:
    return iterable


def explain_crop(
    crop: np.ndarray,
    score: Callable[[list[np.ndarray]], np.ndarray],
    *,
    num_samples: int = LIME_SAMPLES,
    n_segments: int = SUPERPIXELS,
    top_regions: int = TOP_REGIONS,
    seed: int = 0,
) -> FaceExplanation:
    """Explain the P(fake) of one uint8 RGB face crop (S, S, 3).

    ``score`` maps a list of uint8 crops to P(fake) (N,): the ensemble exactly as the verdict used it.
    """
    from lime import lime_image
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    # lime 0.2.0.1 draws a tqdm bar on stderr for every explanation and has no switch to turn it off:
    # a server would log one per face. Its module-level name is the only handle.
    lime_image.tqdm = _no_progress_bar

    def classifier(images: np.ndarray) -> np.ndarray:
        p_fake = np.asarray(
            score([np.clip(img, 0, 255).astype(np.uint8) for img in images]), dtype=np.float64
        )
        return np.stack([1.0 - p_fake, p_fake], axis=1)

    segmenter = SegmentationAlgorithm(
        "slic", n_segments=n_segments, compactness=10, start_label=0, random_seed=seed
    )
    blurred = cv2.GaussianBlur(crop, (0, 0), max(1.0, BLUR_SIGMA_FRACTION * crop.shape[0]))
    # hide_color may be an image: LIME assigns it to the hidden pixels (fudged_image[:] = hide_color)
    explanation = lime_image.LimeImageExplainer(random_state=seed).explain_instance(
        crop.astype(np.float64),
        classifier,
        labels=(1,),
        top_labels=None,
        hide_color=blurred.astype(np.float64),
        num_samples=num_samples,
        batch_size=min(num_samples, LIME_BATCH),
        segmentation_fn=segmenter,
        random_seed=seed,
    )
    weights = {int(segment): float(weight) for segment, weight in explanation.local_exp[1]}
    segments = np.asarray(explanation.segments)
    floor = MIN_WEIGHT_SHARE * max((abs(w) for w in weights.values()), default=0.0)
    _, fake_mask = explanation.get_image_and_mask(
        1, positive_only=True, num_features=top_regions, min_weight=floor
    )
    _, real_mask = explanation.get_image_and_mask(
        1, positive_only=False, negative_only=True, num_features=top_regions, min_weight=floor
    )
    towards_fake, towards_real = np.asarray(fake_mask) > 0, np.asarray(real_mask) > 0
    return FaceExplanation(
        crop=crop,
        segments=segments,
        weights=weights,
        fake_probability=float(score([crop])[0]),
        towards_fake=towards_fake,
        towards_real=towards_real,
        overlay=render_overlay(crop, towards_fake, towards_real),
        fit_r2=float(explanation.score),
        num_samples=num_samples,
    )


def render_overlay(crop: np.ndarray, towards_fake: np.ndarray, towards_real: np.ndarray) -> np.ndarray:
    """The crop with the regions of ``towards_fake`` tinted red and outlined, ``towards_real`` blue.

    ``crop`` is RGB uint8 (S, S, 3), the masks bool (S, S); the rest of the crop is dimmed. Returns RGB
    uint8 (S, S, 3).
    """
    out = crop.astype(np.float32) * DIM_REST
    for mask, colour in ((towards_fake, FAKE_RGB), (towards_real, REAL_RGB)):
        if not mask.any():
            continue
        tinted = crop.astype(np.float32) * (1 - OVERLAY_ALPHA) + np.array(colour, np.float32) * OVERLAY_ALPHA
        out[mask] = tinted[mask]
    out_u8 = np.clip(out, 0, 255).astype(np.uint8)
    thickness = max(1, crop.shape[0] // 128)
    for mask, colour in ((towards_fake, FAKE_RGB), (towards_real, REAL_RGB)):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out_u8, contours, -1, colour, thickness)
    return out_u8
