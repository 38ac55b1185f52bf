"""Face-finding recall of ``pipeline.faces.FaceDetector`` per dataset, and how often it invents a face.

Every image in the face sets shows one face, so an image with no box is a face the detector missed, and
an image with a box that does not overlap the face (intersection over union below ``MIN_IOU`` with the
face's expected square) is a miss as well. The negatives show no face: every box there is invented.

    python benchmarks/face_recall.py [--data ../shared/data] [--per-set 300] [--sample eval|dev]

Sets (a fixed sample of ``--per-set`` images each, drawn with ``--seed`` from the sorted file list; ``dev``
is the next ``--per-set`` images of the same order, disjoint from ``eval``, for tuning):

- ``faces/faceswap_lfw``, ``faces/gan_ffhq_tpdne``, ``faces2/stylegan``: 256 px crops made with Haar, a
  1.3x square margin (the face is the middle 1/1.3 of the side);
- ``faces2/dfdc``: DFDC face crops as their source cut them, a tight box resized to 224 px (the face is the
  whole image), and ``faces2/dfdc+grey``: the same crops centred on a mid-grey canvas so that the face
  spans ``PADDED_FACE_FRACTION`` of its side;
- ``faces/faceswap_lfw in 1080p``: the same crops shrunk so that the face spans 80 to 240 px, pasted
  into a 1080p frame: faces as small as a video's (80 px is the smallest searched, 40 px at 960);
- ``negatives``: the scikit-image stills without a face (the coffee cup is ``workers.samples``' ``no_face.png``),
  whole, and ``NEGATIVE_CROPS_PER_STILL`` random square crops of each resized to 224 px, plus noise images.

Four detectors are compared: ``single pass`` (the frontal cascade on the frame, as deepscan 0.7.0 ran it),
``unverified`` (the later passes run only when the earlier ones found nothing, as in 0.10.0), ``default``
(``DetectorOptions()``: those passes, each box shown to the face verifier) and ``fast`` (the same, the
first pass searching windows past 48 px on the frame halved: ``DEEPSCAN_FACE_SEARCH=fast``).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.faces import CROP_MARGIN, DetectorOptions, FaceBox, FaceDetector  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PADDED_FACE_FRACTION = 0.6  # the grey-padded DFDC crops: face side / image side (the protocol)
MIN_IOU = 0.25  # a box overlapping the face less than this is not that face
NEGATIVE_CROPS_PER_STILL = 12
NEGATIVE_CROP_PX = 224
NOISE_IMAGES = 20
# scikit-image stills that show no face (camera and astronaut do); the cat is an animal face, no person
FACELESS_STILLS = (
    "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "coins", "moon", "page",
    "text", "checkerboard", "clock", "brick", "grass", "gravel", "colorwheel", "logo", "retina", "cell",
    "microaneurysms", "shepp_logan_phantom", "horse", "binary_blobs",
)  # fmt: skip

DETECTORS: dict[str, DetectorOptions] = {
    "single pass": DetectorOptions(border_fraction=0.0, profile=False, min_face_score=0.0),
    "unverified": DetectorOptions(min_face_score=0.0),
    "default": DetectorOptions(),
    "fast": DetectorOptions(halved_pyramid=True),
}
FRAME_HW = (1080, 1920)  # the small-face set: a face pasted into a 1080p frame
SMALL_FACE_PX = (80, 240)  # its side there: 80 px is the smallest face searched (40 px at 960)


@dataclass(frozen=True)
class FaceSet:
    name: str
    files: list[Path]
    # image (H, W, 3) RGB -> (image to detect on, the face's expected square box in it)
    prepare: Callable[[np.ndarray], tuple[np.ndarray, FaceBox]]


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"unreadable image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _margin_crop(image: np.ndarray) -> tuple[np.ndarray, FaceBox]:
    side = image.shape[0]
    face = round(side / CROP_MARGIN)
    return image, FaceBox((side - face) // 2, (side - face) // 2, face, face)


def _tight_crop(image: np.ndarray) -> tuple[np.ndarray, FaceBox]:
    return image, FaceBox(0, 0, image.shape[1], image.shape[0])


def _grey_padded(image: np.ndarray) -> tuple[np.ndarray, FaceBox]:
    h, w = image.shape[:2]
    side = round(max(h, w) / PADDED_FACE_FRACTION)
    canvas = np.full((side, side, 3), 128, np.uint8)
    y, x = (side - h) // 2, (side - w) // 2
    canvas[y : y + h, x : x + w] = image
    return canvas, FaceBox(x, y, w, h)


@functools.cache
def _background_1080p() -> np.ndarray:
    """The coffee still stretched to a 1080p frame: the background of the small-face set."""
    from skimage import data as stills

    return cv2.resize(np.ascontiguousarray(stills.coffee()), FRAME_HW[::-1], interpolation=cv2.INTER_LINEAR)


def _in_a_1080p_frame(image: np.ndarray) -> tuple[np.ndarray, FaceBox]:
    """A margin crop shrunk so that its face spans 80 to 240 px, pasted into a 1080p frame (the coffee
    still, stretched): a face as small as a video's. Size and place follow from the image's bytes."""
    draw = zlib.crc32(image.tobytes())
    low, high = SMALL_FACE_PX
    face = low + draw % (high - low + 1)
    side = round(face * CROP_MARGIN)
    frame = _background_1080p().copy()
    y = (draw >> 8) % (FRAME_HW[0] - side)
    x = (draw >> 16) % (FRAME_HW[1] - side)
    frame[y : y + side, x : x + side] = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    offset = (side - face) // 2
    return frame, FaceBox(x + offset, y + offset, face, face)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _sample(files: list[Path], per_set: int, which: str, seed: int) -> list[Path]:
    order = np.random.default_rng(seed).permutation(len(files))
    start = 0 if which == "eval" else per_set
    return [files[i] for i in sorted(order[start : start + per_set])]


def face_sets(data: Path, per_set: int, which: str, seed: int) -> list[FaceSet]:
    lfw = _sample(_files(data / "faces" / "faceswap_lfw"), per_set, which, seed)
    dfdc = _sample(_files(data / "faces2" / "dfdc"), per_set, which, seed)
    return [
        FaceSet("faces/faceswap_lfw", lfw, _margin_crop),
        FaceSet("faces/gan_ffhq_tpdne", _sample(_files(data / "faces" / "gan_ffhq_tpdne"), per_set, which, seed), _margin_crop),
        FaceSet("faces2/stylegan", _sample(_files(data / "faces2" / "stylegan"), per_set, which, seed), _margin_crop),
        FaceSet("faces/faceswap_lfw in 1080p", lfw, _in_a_1080p_frame),
        FaceSet("faces2/dfdc", dfdc, _tight_crop),
        FaceSet("faces2/dfdc+grey", dfdc, _grey_padded),
    ]  # fmt: skip


def negatives(which: str, seed: int) -> list[tuple[str, np.ndarray]]:
    """Images without a face: RGB uint8, named. ``dev`` and ``eval`` draw different crops and noise."""
    from skimage import data as stills

    rng = np.random.default_rng((seed, 0 if which == "eval" else 1))
    out = []
    for name in FACELESS_STILLS:
        image = np.asarray(getattr(stills, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        elif image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = np.ascontiguousarray(image[..., :3])
        if which == "eval":
            out.append((name, image))
        h, w = image.shape[:2]
        for i in range(NEGATIVE_CROPS_PER_STILL):
            side = int(rng.integers(min(h, w) // 5, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = cv2.resize(
                image[y : y + side, x : x + side], (NEGATIVE_CROP_PX,) * 2, interpolation=cv2.INTER_AREA
            )
            out.append((f"{name}/crop{i}", crop))
    for i in range(NOISE_IMAGES):
        smooth = cv2.GaussianBlur(
            rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (0, 0), float(rng.uniform(0.5, 6))
        )
        out.append((f"noise{i}", smooth))
    return out


def measure(detector: FaceDetector, face_set: FaceSet) -> dict[str, float]:
    found = right = extra = 0
    elapsed = 0.0
    for path in face_set.files:
        image, face = face_set.prepare(_read_rgb(path))
        started = time.perf_counter()
        boxes = detector.detect(image)
        elapsed += time.perf_counter() - started
        found += bool(boxes)
        right += any(box.iou(face) >= MIN_IOU for box in boxes)
        extra += sum(box.iou(face) < MIN_IOU for box in boxes) > 0
    n = len(face_set.files)
    return {"n": n, "found": found / n, "right": right / n, "extra": extra / n, "ms": 1000 * elapsed / n}


def measure_negatives(
    detector: FaceDetector, images: list[tuple[str, np.ndarray]]
) -> tuple[dict[str, float], list[str]]:
    with_face, boxes_total, elapsed = [], 0, 0.0
    for name, image in images:
        started = time.perf_counter()
        boxes = detector.detect(image)
        elapsed += time.perf_counter() - started
        boxes_total += len(boxes)
        if boxes:
            with_face.append(name)
    n = len(images)
    return {
        "n": n,
        "with_face": len(with_face) / n,
        "boxes": boxes_total,
        "ms": 1000 * elapsed / n,
    }, with_face


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
    parser.add_argument("--per-set", type=int, default=300)
    parser.add_argument("--sample", choices=("eval", "dev"), default="eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detectors", default=",".join(DETECTORS), help=f"comma-separated, of: {', '.join(DETECTORS)}"
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no research data at {args.data}")
    sets = face_sets(args.data, args.per_set, args.sample, args.seed)
    faceless = negatives(args.sample, args.seed)
    print(f"# {platform.machine()} {platform.processor() or ''}, OpenCV {cv2.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, sample {args.sample}, seed {args.seed}\n")  # fmt: skip
    print("| detector | set | n | face found | right face | extra box | ms / image |")
    print("|---|---|---|---|---|---|---|")
    invented: dict[str, list[str]] = {}
    for label in args.detectors.split(","):
        detector = FaceDetector(DETECTORS[label])
        for face_set in sets:
            r = measure(detector, face_set)
            print(f"| {label} | {face_set.name} | {r['n']} | {r['found']:.1%} | {r['right']:.1%} | "
                  f"{r['extra']:.1%} | {r['ms']:.1f} |")  # fmt: skip
        r, invented[label] = measure_negatives(detector, faceless)
        print(
            f"| {label} | negatives (no face) | {r['n']} | {r['with_face']:.1%} | - | {r['boxes']} boxes | {r['ms']:.1f} |"
        )
    print()
    for label, names in invented.items():
        print(f"{label}: a face invented in {', '.join(names) or 'none'}")


if __name__ == "__main__":
    main()
