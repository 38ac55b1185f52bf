from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.faces import (
    CROP_MARGIN,
    DetectorOptions,
    FaceBox,
    FaceDetector,
    FaceVerifier,
    face_region,
    square_crop,
    to_model_input,
    with_margin,
)
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
    huge = square_crop(frame, FaceBox(10, 0, 190, 100))  # larger than the frame: clipped to its height
    assert huge.shape == (100, 100, 3)


def test_a_box_that_is_the_whole_frame_gets_a_mirrored_margin_and_the_tight_region_is_the_frame() -> None:
    """A face crop taken whole (the detector's last pass) reaches the members as training's tight crops do."""
    frame = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    crop = square_crop(frame, FaceBox(0, 0, 224, 224))
    assert crop.shape[0] == 224 + 2 * 34  # 1.3x, the margin mirrored, not the frame shifted and cut
    np.testing.assert_array_equal(crop[34:-34, 34:-34], frame)
    np.testing.assert_array_equal(crop[34:-34, 33], frame[:, 1])  # BORDER_REFLECT_101
    assert face_region(crop, "tight").shape[0] == 225  # the frame and a pixel of mirror, as in training
    oblong = with_margin(frame[:, :160])  # a crop no more oblong than 1.5: squared by the mirror too
    assert oblong.shape[:2] == (292, 292)
    np.testing.assert_array_equal(oblong[34:258, 66:226], frame[:, :160])


def test_box_overlap_is_intersection_over_union() -> None:
    box = FaceBox(0, 0, 10, 10)
    assert box.iou(box) == 1.0 and box.iou(FaceBox(20, 20, 10, 10)) == 0.0
    assert box.iou(FaceBox(5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_model_input_is_scaled_float() -> None:
    crops = [np.full((80, 80, 3), 255, np.uint8), np.zeros((20, 20, 3), np.uint8)]
    x = to_model_input(crops, (32, 48))
    assert x.shape == (2, 32, 48, 3) and x.dtype == np.float32
    assert x[0].min() == pytest.approx(1.0) and x[1].max() == 0.0


# --- faces that fill the frame: tight crops, padded crops, faces turned aside -------------------------------

# the frontal cascade alone, as deepscan 0.7.0 ran it
SINGLE_PASS = DetectorOptions(border_fraction=0.0, profile=False, min_face_score=0.0)


def tight_astronaut(fraction: float = 0.8, side_px: int = 224) -> np.ndarray:
    """Her face cut tighter than the Haar box (``fraction`` of its side), resized: a DFDC-style face crop."""
    import cv2

    image = face_image()
    (box,) = FaceDetector().detect(image)
    side = round(box.w * fraction)
    x0, y0 = round(box.x + box.w / 2 - side / 2), round(box.y + box.h / 2 - side / 2)
    return cv2.resize(
        image[y0 : y0 + side, x0 : x0 + side], (side_px, side_px), interpolation=cv2.INTER_CUBIC
    )


def grey_canvas(crop: np.ndarray, face_fraction: float) -> tuple[np.ndarray, FaceBox]:
    side = round(crop.shape[0] / face_fraction)
    canvas = np.full((side, side, 3), 128, np.uint8)
    offset = (side - crop.shape[0]) // 2
    canvas[offset : offset + crop.shape[0], offset : offset + crop.shape[1]] = crop
    return canvas, FaceBox(offset, offset, crop.shape[1], crop.shape[0])


def test_a_tight_crop_is_found_once_the_frame_has_a_border(detector: FaceDetector) -> None:
    crop = tight_astronaut()
    assert FaceDetector(SINGLE_PASS).detect(crop) == []  # the cascade's window has no room around the face
    (box,) = detector.detect(crop)
    assert box.x >= 0 and box.y >= 0 and box.x + box.w <= 224 and box.y + box.h <= 224  # cut to the frame
    assert box.w * box.h > 0.8 * 224 * 224


def test_a_crop_on_a_grey_canvas_is_found(detector: FaceDetector) -> None:
    """Equalising a frame that is mostly flat grey crushes the face; the later passes do not equalise."""
    canvas, pasted = grey_canvas(tight_astronaut(), 0.4)
    assert FaceDetector(SINGLE_PASS).detect(canvas) == []
    (box,) = detector.detect(canvas)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    assert pasted.x < cx < pasted.x + pasted.w and pasted.y < cy < pasted.y + pasted.h


def test_a_face_turned_aside_is_found_by_the_profile_pass_in_either_direction(detector: FaceDetector) -> None:
    import cv2
    from skimage import data

    camera = np.repeat(data.camera()[..., None], 3, axis=-1)
    crop = cv2.resize(camera[50:180, 200:330], (224, 224), interpolation=cv2.INTER_CUBIC)  # his head
    assert FaceDetector(DetectorOptions(profile=False)).detect(crop) == []  # no frontal pass finds it
    (box,) = detector.detect(crop)
    assert box.x < 112 and box.y > 80  # the face, low left in the crop, not the camera on the right
    (mirrored,) = detector.detect(np.ascontiguousarray(crop[:, ::-1]))
    assert mirrored == FaceBox(224 - box.x - box.w, box.y, box.w, box.h)


def test_the_first_pass_keeps_its_boxes(detector: FaceDetector) -> None:
    image = face_image()
    assert detector.detect(image) == FaceDetector(SINGLE_PASS).detect(image)


@pytest.mark.parametrize("face_px", [50, 64, 80, 100, 120])
def test_the_fast_search_finds_small_faces_as_the_thorough_one_does(
    detector: FaceDetector, face_px: int
) -> None:
    """The fast search (``halved_pyramid``) looks for faces of 48 to 96 px on the frame halved, at the
    coarser step; in a still with one face of those sizes it finds the face and boxes it as the whole
    pyramid (the default ``detector``) does."""
    import cv2
    from skimage import data

    image = face_image()
    (box,) = FaceDetector(SINGLE_PASS).detect(image)
    head = image[max(0, box.y - box.h) : box.y + 2 * box.h, max(0, box.x - box.w) : box.x + 2 * box.w]
    scale = face_px / box.w
    small = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = cv2.resize(data.coffee(), (960, 540), interpolation=cv2.INTER_AREA)  # a still with no face
    frame[100 : 100 + small.shape[0], 300 : 300 + small.shape[1]] = small
    expected = detector.detect(frame)
    found = FaceDetector(DetectorOptions(halved_pyramid=True)).detect(frame)
    assert len(expected) == len(found) == 1
    assert found[0].iou(expected[0]) > 0.8


@pytest.mark.parametrize("halved", [False, True], ids=["thorough", "fast"])
def test_the_later_passes_invent_no_face_in_stills_without_one(halved: bool, samples: Path) -> None:
    from skimage import data

    from pipeline.media import load_image

    detector = FaceDetector(DetectorOptions(halved_pyramid=halved))
    assert detector.detect(load_image(samples / "no_face.png")) == []
    for still in (data.coffee(), data.chelsea(), data.rocket(), data.astronaut()[300:, :200]):
        assert detector.detect(np.ascontiguousarray(still)) == []


@pytest.mark.parametrize("shape", [(1, 640), (640, 1), (60, 60), (47, 300)])
def test_the_fast_search_takes_frames_too_small_to_halve(shape: tuple[int, int]) -> None:
    """A frame whose half is smaller than the cascade's window is searched on the frame alone."""
    frame = np.full((*shape, 3), 128, np.uint8)
    assert FaceDetector(DetectorOptions(halved_pyramid=True)).detect(frame) == []


# --- the face verifier: boxes Haar finds that are not faces ------------------------------------------------


@pytest.mark.parametrize(("stage", "reference_class"), [("onet", "ONet"), ("rnet", "RNet")])
def test_the_verifier_networks_are_mtcnns(stage: str, reference_class: str) -> None:
    """Built in Keras 3 from the shipped weights, each stage scores patches as the mtcnn package's own
    network (TensorFlow) does."""
    import importlib

    from mtcnn.utils.tensorflow import load_weights

    from pipeline.faces import MTCNN_STAGES, _mtcnn_stage

    reference = getattr(importlib.import_module(f"mtcnn.network.{stage}"), reference_class)()
    reference.build()
    reference.set_weights(load_weights(f"{stage}.lz4"))
    side = MTCNN_STAGES[stage][0]
    patches = np.random.default_rng(0).normal(0.0, 0.6, (8, side, side, 3)).astype(np.float32)
    ours = np.asarray(_mtcnn_stage(stage).predict_on_batch(patches))
    np.testing.assert_allclose(ours, np.asarray(reference(patches)[-1]), atol=1e-3)  # TF32 on a GPU


FACELESS_CROPS = [
    ("coins", 96, 0, 0),
    ("brick", 128, 0, 320),
    ("grass", 128, 128, 128),
    ("clock", 160, 80, 80),
]


@pytest.mark.parametrize(("still", "side", "y", "x"), FACELESS_CROPS, ids=lambda v: str(v))
def test_boxes_haar_finds_in_textures_are_not_faces(
    detector: FaceDetector, still: str, side: int, y: int, x: int
) -> None:
    import cv2
    from skimage import data

    image = getattr(data, still)()
    image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    crop = cv2.resize(
        np.ascontiguousarray(image[y : y + side, x : x + side]), (224, 224), interpolation=cv2.INTER_CUBIC
    )
    assert FaceDetector(DetectorOptions(min_face_score=0.0)).detect(crop)  # Haar alone finds a "face"
    assert detector.detect(crop) == []


def test_the_verifier_scores_a_face_as_one(detector: FaceDetector) -> None:
    image = face_image()
    (box,) = detector.detect(image)
    verifier = FaceVerifier()
    (score,) = verifier.face_scores(image, [box])
    assert score > 0.95
    assert verifier.face_scores(image, [FaceBox(300, 300, box.w, box.h)])[0] < 0.3  # her suit, not a face


def tilted(image: np.ndarray, degrees: float) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REFLECT)


def test_a_tight_crop_no_cascade_finds_is_one_face_when_the_verifier_says_so(detector: FaceDetector) -> None:
    crop = tilted(tight_astronaut(0.9), 25)  # a head tilted past what the cascades find
    assert FaceDetector(DetectorOptions(whole_frame_max_aspect=0.0)).detect(crop) == []
    assert detector.detect(crop) == [FaceBox(0, 0, 224, 224)]


def test_a_video_frame_is_never_taken_whole(detector: FaceDetector) -> None:
    import cv2

    frame = cv2.resize(tilted(tight_astronaut(0.9), 25), (398, 224), interpolation=cv2.INTER_AREA)  # 16:9
    assert detector.detect(frame) == []
    assert FaceDetector(DetectorOptions(whole_frame_max_aspect=2.0)).detect(frame) != []  # a face to ONet


def test_the_verifier_sees_a_box_whole_and_square_with_grey_beyond_the_frame() -> None:
    """As MTCNN shows a network a proposal: a box over the frame's edge is not squeezed into the frame,
    an oblong box is squared around its centre, and what lies outside the frame is mid-grey."""
    from pipeline.faces import _square_patch

    frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    over_the_edge = _square_patch(frame, FaceBox(-10, 20, 30, 30), 30)
    assert (over_the_edge[:, :10] == 128).all()
    np.testing.assert_array_equal(over_the_edge[:, 10:], frame[20:50, :20])
    whole = _square_patch(frame, FaceBox(0, 0, 80, 60), 80)
    assert (whole[:10] == 128).all() and (whole[70:] == 128).all()
    np.testing.assert_array_equal(whole[10:70], frame)
    assert FaceVerifier().face_scores(frame, []).shape == (0,)


def test_an_image_smaller_than_the_smallest_face_is_not_taken_whole(detector: FaceDetector) -> None:
    import cv2

    face = tilted(tight_astronaut(0.9), 25)
    assert detector.detect(cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)) != []
    assert detector.detect(cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA)) == []
