from __future__ import annotations

import numpy as np
import pytest

from pipeline.faces import CROP_MARGIN, FaceBox, FaceDetector, square_crop, to_model_input
from workers.samples import face_image


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def test_finds_the_astronaut(detector: FaceDetector) -> None:
    boxes = detector.detect(face_image())
    assert len(boxes) == 1
    box = boxes[0]
    assert 150 < box.x < 220 and 40 < box.y < 110 and 70 < box.w < 130  # her face, not the flag


def test_every_face_is_returned_largest_first(detector: FaceDetector) -> None:
    image = face_image()
    small = image[::2, ::2]
    canvas = np.zeros((512, 768, 3), dtype=np.uint8)
    canvas[:, :512] = image
    canvas[128:384, 512:] = small
    boxes = detector.detect(canvas)
    assert len(boxes) == 2
    assert boxes[0].w > boxes[1].w and boxes[1].x > 512


def test_no_face_in_noise(detector: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    assert detector.detect(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)) == []


def test_large_frames_are_detected_at_reduced_scale(detector: FaceDetector) -> None:
    import cv2

    big = cv2.resize(face_image(), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    (box,) = detector.detect(big)
    assert 600 < box.x < 900 and 280 < box.w < 520  # mapped back to full-resolution pixels


def test_square_crop_has_margin_and_stays_inside() -> None:
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    crop = square_crop(frame, FaceBox(10, 10, 40, 40))
    assert crop.shape == (round(40 * CROP_MARGIN),) * 2 + (3,)
    edge = square_crop(frame, FaceBox(180, 80, 30, 30))  # partly outside: shifted, not padded
    assert edge.shape == (39, 39, 3)
    huge = square_crop(frame, FaceBox(0, 0, 200, 100))  # larger than the frame: clipped to its height
    assert huge.shape == (100, 100, 3)


def test_model_input_is_scaled_float() -> None:
    crops = [np.full((80, 80, 3), 255, np.uint8), np.zeros((20, 20, 3), np.uint8)]
    x = to_model_input(crops, (32, 48))
    assert x.shape == (2, 32, 48, 3) and x.dtype == np.float32
    assert x[0].min() == pytest.approx(1.0) and x[1].max() == 0.0
