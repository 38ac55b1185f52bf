"""Training fakes made from real faces: self-blended images and local edits.

A detector trained on one generator's fakes learns that generator's fingerprint and little else. The
artefacts that face swaps and edits share are at the seam: a face region whose colour, sharpness or position
differs slightly from the frame around it, blended in along a soft boundary. Self-blended images (SBI;
Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022) make exactly that from one
real face: two differently treated copies of it, one blended into the other through a deformed face-shaped
mask. Trained on FaceForensics++ reals and SBIs alone they reached 0.93 AUC on Celeb-DF. Local edits paste
one part (eyes, nose or mouth) of another real face, colour-matched, which is what face-editing tools do.

The masks here follow the face box, not landmarks (no landmark model ships with the project): an ellipse
over the face, deformed and blurred, or one over a part at its usual place in a Haar box. Crops are margin
crops (``pipeline.faces.square_crop``): the box is their central 1 / CROP_MARGIN. Every function takes and
returns uint8 RGB crops of one shape, so the class-neutral augmentation runs on pseudo-fakes as on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.faces import CROP_MARGIN

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # SBI's: a partly blended face is still a fake
# face parts at their usual place in a Haar frontal box: centre (x, y) and half-axes, as fractions of the box
FACE_PARTS = {
    "eyes": ((0.5, 0.40), (0.36, 0.11)),
    "nose": ((0.5, 0.58), (0.11, 0.14)),
    "mouth": ((0.5, 0.77), (0.20, 0.09)),
}


@dataclass(frozen=True)
class PseudoFakes:
    """How many pseudo-fakes a training batch gets and of which kind."""

    probability: float = 0.5  # chance that a real face in a batch also appears as a pseudo-fake of itself
    local_edit_share: float = 0.3  # of the pseudo-fakes: a part of another face; the rest are self-blended


def _face_box(side: int) -> tuple[float, float, float]:
    """The face box of a margin crop of ``side``: its left/top edge and its side, in pixels."""
    box = side / CROP_MARGIN
    return (side - box) / 2, (side - box) / 2, box


def _ellipse_mask(side: int, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    mask = np.zeros((side, side), dtype=np.float32)
    cv2.ellipse(
        mask,
        (round(centre[0]), round(centre[1])),
        (max(1, round(axes[0])), max(1, round(axes[1]))),
        0,
        0,
        360,
        1.0,
        -1,
    )
    return mask


def _deform(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Warp a mask by a smooth random displacement field of about ``strength`` pixels."""
    side = mask.shape[0]
    coarse = rng.normal(0.0, strength, size=(2, 5, 5)).astype(np.float32)
    dx, dy = (cv2.resize(c, (side, side), interpolation=cv2.INTER_CUBIC) for c in coarse)
    grid_y, grid_x = np.mgrid[0:side, 0:side].astype(np.float32)
    return cv2.remap(mask, grid_x + dx, grid_y + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _soften(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink or grow the mask a little, blur its edge and scale it by a blend ratio."""
    side = mask.shape[0]
    k = int(rng.integers(1, max(2, side // 40)))
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    mask = cv2.erode(mask, kernel) if rng.random() < 0.5 else cv2.dilate(mask, kernel)
    sigma = rng.uniform(0.01, 0.05) * side
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return np.clip(mask, 0.0, 1.0) * float(rng.choice(BLEND_RATIOS))


def _colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift hue, saturation, brightness and contrast a little (float32 RGB in [0, 255])."""
    hsv = cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.85, 1.15), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    out = (out - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-18, 18)
    return out + rng.uniform(-8, 8, size=3)  # a per-channel cast


def _sharpness_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (a lower-resolution render) or sharpen the image."""
    side = image.shape[0]
    if rng.random() < 0.5:
        small = max(8, round(side * rng.uniform(0.4, 0.8)))
        low = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
        return cv2.resize(low, (side, side), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
    return image + rng.uniform(0.3, 1.0) * (image - blurred)


def _shifted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale and move the image a little about its centre (a source face that does not quite fit)."""
    side = image.shape[0]
    scale = rng.uniform(0.95, 1.05)
    dx, dy = rng.uniform(-0.03, 0.03, size=2) * side
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), 0.0, scale)
    matrix[:, 2] += (dx, dy)
    return cv2.warpAffine(image, matrix, (side, side), borderMode=cv2.BORDER_REFLECT)


def _blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return np.clip(m * source + (1.0 - m) * target, 0, 255).round().astype(np.uint8)


def self_blend(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A self-blended image: a treated copy of the face blended into the face through a deformed mask."""
    side = crop.shape[0]
    target = crop.astype(np.float32)
    source = target.copy()
    treatments = [_colour_jitter, _sharpness_jitter]
    for treat in treatments if rng.random() < 0.3 else [treatments[rng.integers(2)]]:
        source = treat(source, rng)
    source = _shifted(source, rng)
    if rng.random() < 0.5:  # SBI treats either copy; swapping the roles does that
        source, target = target, source
    x0, y0, box = _face_box(side)
    centre = (x0 + box * rng.uniform(0.46, 0.54), y0 + box * rng.uniform(0.5, 0.6))
    axes = (box * rng.uniform(0.30, 0.44), box * rng.uniform(0.38, 0.52))
    mask = _soften(_deform(_ellipse_mask(side, centre, axes), rng, 0.04 * box), rng)
    return _blend(source, target, mask)


def _match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``source`` with the per-channel mean and spread of ``target`` inside ``mask`` (in Lab)."""
    inside = mask > 0.5
    if inside.sum() < 4:
        return source
    src = cv2.cvtColor(source.astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    tgt = cv2.cvtColor(target.astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    mean_s, std_s = src[inside].mean(axis=0), src[inside].std(axis=0) + 1e-3
    mean_t, std_t = tgt[inside].mean(axis=0), tgt[inside].std(axis=0) + 1e-3
    matched = np.clip((src - mean_s) * (std_t / std_s) + mean_t, 0, 255).astype(np.uint8)
    return cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype(np.float32)


def local_edit(crop: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``crop`` with one part (eyes, nose or mouth) pasted from ``donor``, colour-matched and blended."""
    side = crop.shape[0]
    target = crop.astype(np.float32)
    source = _shifted(donor.astype(np.float32), rng)
    (cx, cy), (ax, ay) = FACE_PARTS[str(rng.choice(list(FACE_PARTS)))]
    x0, y0, box = _face_box(side)
    centre = (x0 + box * (cx + rng.uniform(-0.03, 0.03)), y0 + box * (cy + rng.uniform(-0.03, 0.03)))
    axes = (box * ax * rng.uniform(0.85, 1.25), box * ay * rng.uniform(0.85, 1.25))
    mask = _deform(_ellipse_mask(side, centre, axes), rng, 0.02 * box)
    source = _match_colour(source, target, mask)
    return _blend(source, target, _soften(mask, rng))


def pseudo_fake(
    crop: np.ndarray, donor: np.ndarray, rng: np.random.Generator, config: PseudoFakes = PseudoFakes()
) -> np.ndarray:
    """A local edit with ``donor`` (``local_edit_share`` of the time) or a self-blended image of ``crop``."""
    if rng.random() < config.local_edit_share:
        return local_edit(crop, donor, rng)
    return self_blend(crop, rng)
