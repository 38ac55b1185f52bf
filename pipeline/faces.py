"""Face detection (OpenCV Haar cascade) and face crops in the exact geometry the models were trained on.

The training crops in ``../shared/data/faces`` were made with Haar ``frontalface_default``, a 1.3x square
margin and INTER_AREA resizing; inference uses the same recipe so that the members see the distribution
they learned. Every face in a frame is returned, not only the largest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

HAAR_CASCADE_FILE = "haarcascade_frontalface_default.xml"  # shipped inside opencv-python-headless<5
CROP_MARGIN = 1.3  # square side = 1.3 x the larger box side, as in the training crops (DFDC winner: +1/3)
DETECT_MAX_SIDE_PX = 960  # frames are detected at most this large; boxes are mapped back to full size


@dataclass(frozen=True)
class FaceBox:
    """A face in frame pixel coordinates (top-left corner, width, height)."""

    x: int
    y: int
    w: int
    h: int

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


@dataclass(frozen=True)
class DetectorOptions:
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_face_px: int = 40  # at detection scale; smaller faces carry too few pixels to judge
    max_faces: int = 8  # per frame, largest first: crowds are not what the members were trained on


class FaceDetector:
    """Haar-cascade face detector. Construct once per process; ``detect`` is cheap to call."""

    def __init__(
        self, options: DetectorOptions | None = None, cascade_path: str | Path | None = None
    ) -> None:
        self.options = options or DetectorOptions()
        default = Path(cv2.data.haarcascades) / HAAR_CASCADE_FILE  # type: ignore[attr-defined]
        path = Path(cascade_path) if cascade_path else default
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FileNotFoundError(f"Haar cascade not loadable: {path}")

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Find faces in an RGB uint8 frame of shape (H, W, 3); largest first."""
        height, width = frame.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE_PX / max(height, width))
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(
                gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
        gray = cv2.equalizeHist(gray)
        opts = self.options
        found = self._cascade.detectMultiScale(
            gray,
            scaleFactor=opts.scale_factor,
            minNeighbors=opts.min_neighbors,
            minSize=(opts.min_face_px, opts.min_face_px),
        )
        boxes = [
            FaceBox(round(x / scale), round(y / scale), round(w / scale), round(h / scale))
            for (x, y, w, h) in (found if len(found) else [])
        ]
        boxes.sort(key=lambda b: b.w * b.h, reverse=True)
        return boxes[: opts.max_faces]


def square_crop(frame: np.ndarray, box: FaceBox, margin: float = CROP_MARGIN) -> np.ndarray:
    """Cut a square of side ``margin * max(w, h)`` centred on the box, shifted to stay inside the frame.

    Returns a uint8 view-copy of shape (S, S, 3); S shrinks only when the frame itself is smaller.
    """
    height, width = frame.shape[:2]
    side = min(round(max(box.w, box.h) * margin), height, width)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    y0 = int(np.clip(round(cy - side / 2), 0, height - side))
    return frame[y0 : y0 + side, x0 : x0 + side].copy()


def to_model_input(crops: list[np.ndarray], size_hw: tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB crops to ``size_hw`` (INTER_AREA, as in training) and scale to [0, 1].

    Returns float32 of shape (N, H, W, 3).
    """
    h, w = size_hw
    out = np.empty((len(crops), h, w, 3), dtype=np.float32)
    for i, crop in enumerate(crops):
        interpolation = cv2.INTER_AREA if crop.shape[0] >= h else cv2.INTER_CUBIC
        out[i] = cv2.resize(crop, (w, h), interpolation=interpolation).astype(np.float32) / 255.0
    return out
