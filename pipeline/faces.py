"""Face detection (OpenCV Haar cascade) and face crops in the exact geometry the models were trained on.

The training crops in ``../shared/data/faces`` were made with Haar ``frontalface_default``, a 1.3x square
margin and INTER_AREA resizing; inference uses the same recipe so that the members see the distribution
they learned. Every face in a frame is returned, not only the largest.

Faces that fill the frame (tight crops, profile pictures) are what the plain cascade misses: its window
needs a little room around the face, and histogram equalisation over a frame with a flat border (a padded
crop) crushes the face's contrast. When the first pass finds nothing, later passes look for one face that
fills much of the frame (``benchmarks/face_recall.py`` has the figures).

Haar also finds faces where there are none: a shirt and tie, a striped sleeve, a door (32 of the 78 boxes
on the four research clips). Every box is therefore shown to a face verifier, MTCNN's output network
(O-Net, Zhang et al. 2016: a 48 px face/non-face classifier) built here in Keras 3 with the weights the
``mtcnn`` package ships, and a pass whose boxes it all rejects counts as a pass that found nothing. When
no pass finds a face in a nearly square image (a crop cut tighter than Haar's window, a head tilted past
what the cascades find), the image as a whole is one face if MTCNN's R-Net and O-Net both say so.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.batching import predict_padded
from pipeline.errors import ModelPackError

HAAR_CASCADE_FILE = "haarcascade_frontalface_default.xml"  # shipped inside opencv-python-headless<5
PROFILE_CASCADE_FILE = "haarcascade_profileface.xml"  # faces turned to one side; shipped alongside
CROP_MARGIN = 1.3  # square side = 1.3 x the larger box side, as in the training crops (DFDC winner: +1/3)
DETECT_MAX_SIDE_PX = 960  # frames are detected at most this large; boxes are mapped back to full size
GROUP_EPS = 0.2  # how alike two hits' rectangles must be to join a group: detectMultiScale's own
BORDER_GREY = 128  # the border of the later passes: mid-grey, what a plain background looks like
# The face verifier: MTCNN's networks as the mtcnn package ships their weights (joblib lists of arrays, in
# the layer order of ``_mtcnn_stage``), read from its folder without importing it (its __init__ imports
# TensorFlow). Per stage: input side, conv blocks (filters, pool, stride, padding), last conv's filters,
# hidden units, and the box-regression outputs before the face/non-face output.
VERIFIER_PACKAGE = "mtcnn"
MTCNN_STAGES: dict[str, tuple[int, tuple[tuple[int, int, int, str], ...], int, int, tuple[int, ...]]] = {
    "rnet": (24, ((28, 3, 2, "same"), (48, 3, 2, "valid")), 64, 128, (4,)),
    "onet": (48, ((32, 3, 2, "same"), (64, 3, 2, "valid"), (64, 2, 2, "same")), 128, 256, (4, 10)),
}
VERIFIER_BATCH = 8  # boxes are verified in batches of at most 8, padded to a power of two (4 shapes)
PROPOSAL_MIN_SCORE = 0.7  # R-Net's threshold in the MTCNN reference implementation


@dataclass(frozen=True)
class FaceBox:
    """A face in frame pixel coordinates (top-left corner, width, height)."""

    x: int
    y: int
    w: int
    h: int

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}

    def iou(self, other: FaceBox) -> float:
        """Intersection over union of the two boxes."""
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x + self.w, other.x + other.w), min(self.y + self.h, other.y + other.h)
        inter = max(0, x1 - x0) * max(0, y1 - y0)
        return inter / float(self.w * self.h + other.w * other.h - inter)


@dataclass(frozen=True)
class DetectorOptions:
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_face_px: int = 40  # at detection scale; smaller faces carry too few pixels to judge
    # Fast face search (``DEEPSCAN_FACE_SEARCH=fast``): the first pass searches windows past twice the
    # cascade's (24 px) on the frame halved. OpenCV scans a pyramid level shrunk by more than 2x at a 1 px
    # step and the others at 2 px, so windows of 48 to 96 px are most of the windows it looks at; on the
    # halved frame they are scanned at 2 px (8 % of the window), half of the windows in all. Each of their
    # hits stands for the four positions the 1 px step looked at and counts four times when the hits are
    # grouped (with ``min_neighbors``, as before), so boxes average and neighbours count nearly as before
    # (nearly: a group of four-fold hits also outweighs more of the smaller groups nested in it). Haar's
    # time falls by about 40 %; faces of those sizes are missed a little more often (``benchmarks/README.md``,
    # "Fast face search"), which is why it is not the default.
    halved_pyramid: bool = False
    max_faces: int = 8  # per frame, largest first: crowds are not what the members were trained on
    # Second pass, when the first finds nothing: the frame, not equalised, inside a mid-grey border of this
    # fraction of its larger side; 0 turns the later passes off.
    border_fraction: float = 0.25
    # Third pass, when the second finds nothing too: the profile cascade on the bordered frame and on its
    # mirror image (the cascade finds faces turned one way only).
    profile: bool = True
    # The later passes look for a face that fills the frame: their boxes must span at least this fraction
    # of the frame's shorter side. Smaller finds there were mostly texture (coins, clock faces, cells).
    fill_fraction: float = 1 / 3
    # Boxes the face verifier scores below this are not faces; 0 turns verification off (and with it the
    # whole-frame pass, which only the networks can accept). 0.7 is the output network's threshold in the
    # MTCNN paper's reference implementation, not tuned here.
    min_face_score: float = 0.7
    # Last, when no pass finds a face: a frame no more oblong than this (and at least min_face_px on its
    # shorter side) that R-Net and the verifier take for a face as a whole is one face box (a face crop cut
    # tighter than Haar's window, a profile picture, a close-up); 0 turns it off. A 16:9 video frame is
    # more oblong than 1.5 and is never taken whole.
    whole_frame_max_aspect: float = 1.5


class FaceDetector:
    """Haar-cascade face detector. Construct once per process; ``detect`` is cheap to call.

    Passes run in order and stop at the first that finds a face, so a frame in which the first pass finds
    a face gets exactly the boxes it always got:

    1. the frontal cascade on the histogram-equalised frame;
    2. the frontal cascade on the frame as it is (not equalised) inside a mid-grey border;
    3. the profile cascade on that bordered frame and on its mirror image;
    4. the whole frame as one box, when it is nearly square (``whole_frame_max_aspect``): MTCNN's R-Net
       and then the verifier (O-Net) must both take it for a face.

    Passes 2 and 3 keep only boxes of at least ``fill_fraction`` of the frame's shorter side. Boxes are
    mapped back to frame pixels and cut to the frame; then the face verifier keeps those it scores at least
    ``min_face_score`` (a pass whose boxes it all rejects found nothing).
    """

    def __init__(
        self, options: DetectorOptions | None = None, cascade_path: str | Path | None = None
    ) -> None:
        self.options = options or DetectorOptions()
        haarcascades = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
        self._cascade = _load_cascade(
            Path(cascade_path) if cascade_path else haarcascades / HAAR_CASCADE_FILE
        )
        self._profile = _load_cascade(haarcascades / PROFILE_CASCADE_FILE) if self.options.profile else None
        self._verifier = FaceVerifier() if self.options.min_face_score > 0 else None

    def warm_up(self) -> None:
        """Build and trace the face verifier (shared by the process's detectors) ahead of the first frame."""
        if self._verifier is not None:
            self._verifier.warm_up()

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Find faces in an RGB uint8 frame of shape (H, W, 3); largest first, inside the frame."""
        height, width = frame.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE_PX / max(height, width))
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(
                gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
        equalised = cv2.equalizeHist(gray)
        first = (
            self._find_halved(equalised)
            if self.options.halved_pyramid
            else self._find(self._cascade, equalised)
        )
        boxes = self._faces(frame, first, scale)
        opts = self.options
        border = round(opts.border_fraction * max(gray.shape))
        if not boxes and border > 0:
            bordered = _with_border(gray, border)
            passes = [(self._cascade, False)] + (
                [(self._profile, False), (self._profile, True)] if self._profile else []
            )
            min_side = opts.fill_fraction * min(gray.shape)
            for cascade, mirrored in passes:
                image = bordered[:, ::-1] if mirrored else bordered
                found = [
                    (bordered.shape[1] - 2 * border - x - w, y, w, h) if mirrored else (x, y, w, h)
                    for (x, y, w, h) in self._find(cascade, image, offset=border, min_px=int(min_side))
                    if max(w, h) >= min_side
                ]
                boxes = self._faces(frame, found, scale)
                if boxes:
                    break
        nearly_square = max(height, width) <= opts.whole_frame_max_aspect * min(height, width)
        large_enough = min(gray.shape) >= opts.min_face_px
        if not boxes and nearly_square and large_enough and self._verifier is not None:  # unverified: any
            whole = FaceBox(0, 0, width, height)
            # No cascade proposed it: R-Net judges it first, as MTCNN's own proposals are judged.
            if self._verifier.proposal_scores(frame, [whole])[0] >= PROPOSAL_MIN_SCORE:
                boxes = self._faces(frame, [(0, 0, width, height)], 1.0)
        boxes.sort(key=lambda b: b.w * b.h, reverse=True)
        return boxes[: opts.max_faces]

    def _faces(
        self, frame: np.ndarray, found: list[tuple[int, int, int, int]], scale: float
    ) -> list[FaceBox]:
        """The boxes of one pass (at detection scale) in frame pixels, those the verifier rejects left out,
        cut to the frame. The verifier sees each box whole, what lies outside the frame mid-grey."""
        height, width = frame.shape[:2]
        boxes = [FaceBox(*(round(v / scale) for v in box)) for box in found]
        pairs = [(box, cut) for box in boxes if (cut := _cut_to_frame(box, width, height)) is not None]
        if self._verifier is not None and pairs:
            scores = self._verifier.face_scores(frame, [box for box, _ in pairs])
            pairs = [
                pair
                for pair, score in zip(pairs, scores, strict=True)
                if score >= self.options.min_face_score
            ]
        return [cut for _, cut in pairs]

    def _find(
        self, cascade: cv2.CascadeClassifier, gray: np.ndarray, *, offset: int = 0, min_px: int = 0
    ) -> list[tuple[int, int, int, int]]:
        """Boxes (x, y, w, h) at detection scale, shifted by ``-offset`` (the border around ``gray``), none
        smaller than ``min_px`` or ``min_face_px`` (the cascade does not search smaller windows)."""
        opts = self.options
        side = max(opts.min_face_px, min_px)
        found = cascade.detectMultiScale(
            np.ascontiguousarray(gray),
            scaleFactor=opts.scale_factor,
            minNeighbors=opts.min_neighbors,
            minSize=(side, side),
        )
        return [(int(x) - offset, int(y) - offset, int(w), int(h)) for (x, y, w, h) in found]

    def _find_halved(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """The first pass's boxes (x, y, w, h) at detection scale: windows up to twice the cascade's searched
        on ``gray``, larger ones on ``gray`` halved, the hits of both grouped as OpenCV groups them (those
        of the halved frame's 2 px step counting four times)."""
        opts = self.options
        window_w, window_h = self._cascade.getOriginalWindowSize()
        hits: list[list[int]] = []  # every hit, ungrouped (minNeighbors=0)
        if opts.min_face_px <= 2 * min(window_w, window_h):
            for hit in self._cascade.detectMultiScale(
                gray,
                scaleFactor=opts.scale_factor,
                minNeighbors=0,
                minSize=(opts.min_face_px, opts.min_face_px),
                maxSize=(2 * window_w, 2 * window_h),
            ):
                hits.append([int(v) for v in hit])
        height, width = gray.shape
        if min(height // 2 - window_h, width // 2 - window_w) > 0:
            halved = cv2.resize(gray, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
            smallest = -(-opts.min_face_px // 2)
            coarse = _coarse_step_widths(window_w, opts.scale_factor)
            for hit in self._cascade.detectMultiScale(
                halved,
                scaleFactor=opts.scale_factor,
                minNeighbors=0,
                minSize=(max(window_w + 1, smallest), max(window_h + 1, smallest)),
            ):
                hits += [[2 * int(v) for v in hit]] * (4 if int(hit[2]) in coarse else 1)
        if not hits:
            return []
        grouped, _ = cv2.groupRectangles(hits, opts.min_neighbors, GROUP_EPS)
        return [(int(x), int(y), int(w), int(h)) for (x, y, w, h) in grouped]


def _coarse_step_widths(window_w: int, scale_factor: float) -> set[int]:
    """The window widths of the pyramid levels OpenCV scans at its 2 px step: those it shrinks the image by
    at most 2x (``detectMultiScale``'s own loop: factors scale_factor**k, widths rounded)."""
    widths, factor = set(), 1.0
    while factor <= 2.0:
        widths.add(round(window_w * factor))
        factor *= scale_factor
    return widths


class FaceVerifier:
    """MTCNN's last two stages as face/non-face classifiers of boxes: O-Net (48 px) checks every box, R-Net
    (24 px) stands in for the proposals no cascade made. The networks are built on first use, once per
    process, and shared (inference only): a process that never detects never loads Keras for them."""

    def face_scores(self, frame: np.ndarray, boxes: list[FaceBox]) -> np.ndarray:
        """O-Net's P(face) of every box of an RGB uint8 frame."""
        return _stage_scores("onet", frame, boxes)

    def proposal_scores(self, frame: np.ndarray, boxes: list[FaceBox]) -> np.ndarray:
        """R-Net's P(face) of every box: what MTCNN asks of a proposal before O-Net sees it."""
        return _stage_scores("rnet", frame, boxes)

    def warm_up(self) -> None:
        """Build the networks and trace every batch shape they are given, so that the first frame a
        process detects in costs what the hundredth does."""
        frame = np.full((48, 48, 3), BORDER_GREY, dtype=np.uint8)
        box = FaceBox(0, 0, 48, 48)
        for k in range(VERIFIER_BATCH.bit_length()):
            self.face_scores(frame, [box] * (1 << k))
        self.proposal_scores(frame, [box])  # only the whole frame, one box, goes to R-Net


def _stage_scores(stage: str, frame: np.ndarray, boxes: list[FaceBox]) -> np.ndarray:
    """P(face) of every box by one MTCNN stage, as MTCNN shows it a proposal: the square of the box's larger
    side around its centre, what lies outside the frame mid-grey, resized to the stage's input."""
    side = MTCNN_STAGES[stage][0]
    if not boxes:
        return np.zeros(0, dtype=np.float32)
    patches = np.stack([_square_patch(frame, box, side) for box in boxes]).astype(np.float32)
    patches = (patches - 127.5) / 128.0  # MTCNN's input scaling
    return predict_padded(_mtcnn_stage(stage), patches, VERIFIER_BATCH)[:, 1]


def _square_patch(frame: np.ndarray, box: FaceBox, side_px: int) -> np.ndarray:
    """The square of side max(w, h) centred on ``box`` (which may overhang the frame), resized to
    ``side_px``; the parts outside the frame are mid-grey (0 after MTCNN's scaling, as mtcnn pads)."""
    height, width = frame.shape[:2]
    size = max(box.w, box.h)
    x0, y0 = round(box.x + box.w / 2 - size / 2), round(box.y + box.h / 2 - size / 2)
    inside = frame[max(0, y0) : min(height, y0 + size), max(0, x0) : min(width, x0 + size)]
    square = cv2.copyMakeBorder(
        inside,
        max(0, -y0),
        max(0, y0 + size - height),
        max(0, -x0),
        max(0, x0 + size - width),
        cv2.BORDER_CONSTANT,
        value=(BORDER_GREY,) * 3,
    )
    interpolation = cv2.INTER_AREA if size >= side_px else cv2.INTER_LINEAR
    return cv2.resize(square, (side_px, side_px), interpolation=interpolation)


def verifier_weights_path(stage: str) -> Path:
    """Where the mtcnn package keeps a stage's weights (found without importing the package)."""
    spec = importlib.util.find_spec(VERIFIER_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelPackError(f"the face verifier's weights need the {VERIFIER_PACKAGE!r} package")
    return Path(spec.origin).parent / "assets" / "weights" / f"{stage}.lz4"


_built_stages: dict[str, Any] = {}
_building = threading.Lock()


def _mtcnn_stage(stage: str) -> Any:
    """The network of an MTCNN stage, built once per process (threads asking at once wait for the one
    build, so a warmed network is never replaced by a cold one)."""
    with _building:
        if stage not in _built_stages:
            _built_stages[stage] = _build_stage(stage)
        return _built_stages[stage]


def _build_stage(stage: str) -> Any:
    """An MTCNN stage in Keras 3 (any backend), its face-probability output only, with the shipped weights.

    The layers are those of mtcnn's ``network/rnet.py`` and ``network/onet.py`` in the same order (the
    weight list follows it); the Permute before Flatten matches the original Caffe weights' column-major
    flattening.
    """
    import joblib  # mtcnn's dependency; reads its lz4-compressed weight lists
    import keras
    from keras import layers

    side, blocks, last_filters, hidden, regressions = MTCNN_STAGES[stage]
    x = inputs = keras.Input((side, side, 3))
    for filters, pool, stride, padding in blocks:
        x = layers.Conv2D(filters, 3)(x)
        x = layers.PReLU(shared_axes=[1, 2])(x)
        x = layers.MaxPooling2D(pool, stride, padding=padding)(x)
    x = layers.PReLU(shared_axes=[1, 2])(layers.Conv2D(last_filters, 2)(x))
    x = layers.Flatten()(layers.Permute((2, 1, 3))(x))
    x = layers.PReLU()(layers.Dense(hidden)(x))
    face = layers.Dense(2, activation="softmax")(x)
    everything = keras.Model(inputs, [*(layers.Dense(n)(x) for n in regressions), face])
    path = verifier_weights_path(stage)
    try:
        everything.set_weights(joblib.load(path))
    except (OSError, ImportError, ValueError) as e:  # missing, unreadable (lz4 absent) or of another shape
        raise ModelPackError(f"could not load the face verifier's weights {path}: {e}") from e
    return keras.Model(inputs, face, name=f"face_verifier_{stage}")


def _load_cascade(path: Path) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise FileNotFoundError(f"Haar cascade not loadable: {path}")
    return cascade


def _with_border(gray: np.ndarray, border: int) -> np.ndarray:
    """``gray`` inside a border of ``border`` pixels of mid-grey (what a plain background looks like)."""
    return cv2.copyMakeBorder(gray, border, border, border, border, cv2.BORDER_CONSTANT, value=BORDER_GREY)


def _cut_to_frame(box: FaceBox, width: int, height: int) -> FaceBox | None:
    """The part of ``box`` (frame pixels) inside a frame of size (W, H); None when nothing is."""
    x0, y0 = max(0, box.x), max(0, box.y)
    x1, y1 = min(width, box.x + box.w), min(height, box.y + box.h)
    return FaceBox(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def square_crop(frame: np.ndarray, box: FaceBox, margin: float = CROP_MARGIN) -> np.ndarray:
    """Cut a square of side ``margin * max(w, h)`` centred on the box, shifted to stay inside the frame.

    A box that is the whole frame (an image that is a face crop, cut as DFDC's were: the detector's
    whole-frame pass, or a later pass's box cut to the frame) has no margin to cut: it gets one by
    mirroring its edges outwards (``with_margin``), as training gives those crops theirs, so that the
    members see it as they saw them.

    Returns a uint8 copy of shape (S, S, 3): S is the margin's side, smaller when the frame is, and
    ``CROP_MARGIN`` times the frame's larger side for a whole-frame box.
    """
    height, width = frame.shape[:2]
    if (box.x, box.y, box.w, box.h) == (0, 0, width, height):
        return with_margin(frame, margin)
    side = min(round(max(box.w, box.h) * margin), height, width)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    y0 = int(np.clip(round(cy - side / 2), 0, height - side))
    return frame[y0 : y0 + side, x0 : x0 + side].copy()


def with_margin(tight: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """A face crop that is the face box alone inside a mirrored border: a square of side ``margin`` times
    its larger side, the crop in the centre as a margin crop's box is (the context outside is unknown)."""
    height, width = tight.shape[:2]
    larger = max(height, width)
    side = larger + 2 * max(0, round((larger * margin - larger) / 2))
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(
        tight, top, side - height - top, left, side - width - left, cv2.BORDER_REFLECT_101
    )


# What a member sees of a face (a manifest field of image members, see pipeline.pack.MemberSpec):
# - "margin": the whole crop, the face box with CROP_MARGIN around it (the recipe of ../shared/data/faces);
# - "tight": the face box alone, the crop's central 1 / CROP_MARGIN (how DFDC's crops were cut).
CROP_GEOMETRIES = ("margin", "tight")


def face_region(crop: np.ndarray, geometry: str) -> np.ndarray:
    """The part of a margin crop that a member of ``geometry`` sees (a view; the crop itself for margin).

    A crop that ``square_crop`` had to shift to stay inside the frame is cut at its centre all the same:
    the box sits off-centre by the shift, which the members' training shifts cover (5 % of the side).
    """
    if geometry == "margin":
        return crop
    if geometry != "tight":
        raise ValueError(f"unknown crop geometry {geometry!r}; expected one of {CROP_GEOMETRIES}")
    side = crop.shape[0]
    inner = max(1, round(side / CROP_MARGIN))
    start = (side - inner) // 2
    return crop[start : start + inner, start : start + inner]


def to_model_input(crops: list[np.ndarray], size_hw: tuple[int, int], geometry: str = "margin") -> np.ndarray:
    """Cut uint8 RGB crops to ``geometry``, resize them to ``size_hw`` (INTER_AREA, as in training) and
    scale them to [0, 1].

    Returns float32 of shape (N, H, W, 3).
    """
    h, w = size_hw
    out = np.empty((len(crops), h, w, 3), dtype=np.float32)
    for i, crop in enumerate(crops):
        region = face_region(crop, geometry)
        interpolation = cv2.INTER_AREA if region.shape[0] >= h else cv2.INTER_CUBIC
        out[i] = cv2.resize(region, (w, h), interpolation=interpolation).astype(np.float32) / 255.0
    return out
