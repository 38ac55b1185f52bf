"""The pipeline's entry points: one media file (or decoded arrays) in, one ``MediaResult`` out.

Scoring is batch-first: faces from many frames (and, later, many files) go through each member in one
batch. Every way an analysis can fail becomes a result with a status and a reason; no score is invented.

Provenance (``pipeline.provenance``) is read beside the detectors; under the analyzer's ``VerdictPolicy`` a
trusted C2PA manifest's claim may decide the label (``apply_provenance``), the detectors' own verdict kept
in ``details``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import split_windows
from pipeline.batching import CoalescingBatcher, batched, prefetched
from pipeline.ensemble import Verdict, aggregate, vote
from pipeline.errors import DeepscanError, MediaDecodeError, NoFaceError, ResultStatus, UnsupportedMediaError
from pipeline.explain import LIME_SAMPLES, FaceExplanation, explain_crop
from pipeline.faces import FaceBox, FaceDetector, square_crop
from pipeline.media import (
    FRAME_INTERVAL_S,
    VideoInfo,
    decode_image_bytes,
    detect_media_type,
    iter_video_frames,
    load_audio,
    probe_video,
    read_file,
)
from pipeline.pack import PREDICT_BATCH, ModelPack
from pipeline.provenance import (
    Provenance,
    ProvenanceOptions,
    VerdictPolicy,
    decide,
    read_provenance,
    watermark_findings,
)

logger = logging.getLogger(__name__)

EXPLAIN_MAX_SIDE_PX = 256  # the side of the training crops
VIDEO_CHUNK_FRAMES = 16  # seconds of video scored per batch: bounds memory, keeps batches large
# Statuses that mean "the content was read but the detectors had nothing to judge": a verified claim of
# provenance still gives such a file its label. A file that could not be read or analysed keeps its failure.
PROVENANCE_DECIDES = frozenset(
    {ResultStatus.OK, ResultStatus.NO_FACE, ResultStatus.TOO_SHORT, ResultStatus.SILENT}
)
PROVENANCE_PROBABILITY = {"fake": 1.0, "real": 0.0}  # a verified claim is not a guess


@dataclass
class FrameScore:
    """Faces found in one frame and their scores. ``fake_probability`` is None when there is no face."""

    t_s: float
    boxes: list[FaceBox]
    member_scores: np.ndarray  # (n_faces, n_members)
    face_probabilities: np.ndarray  # (n_faces,)

    @property
    def fake_probability(self) -> float | None:
        # One manipulated face makes the frame manipulated: the frame takes its most suspicious face.
        return float(self.face_probabilities.max()) if len(self.face_probabilities) else None


@dataclass(frozen=True)
class FoundFaces:
    """The faces detected in one frame and their crops, ready to be scored with other frames' faces."""

    t_s: float
    boxes: list[FaceBox]
    crops: list[np.ndarray]


@dataclass(frozen=True)
class AudioVerdict:
    """The verdict on a sound: a clip, or a video's soundtrack. One shape whether or not it was scored:
    ``status`` ok with a label and window scores, or the status and reason why there is no score."""

    status: ResultStatus = ResultStatus.OK
    reason: str | None = None
    label: str | None = None
    fake_probability: float | None = None
    confidence: dict[str, float] | None = None
    windows: int = 0
    window_s: float | None = None
    window_probabilities: tuple[float, ...] = ()
    duration_s: float | None = None

    @classmethod
    def unscored(cls, error: DeepscanError) -> AudioVerdict:
        return cls(status=error.status, reason=error.reason)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AudioVerdict:
        """Back from ``to_dict`` (a chord part's JSON)."""
        return cls(
            **{
                **data,
                "status": ResultStatus(data["status"]),
                "window_probabilities": tuple(data.get("window_probabilities", ())),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "window_probabilities": list(self.window_probabilities)}


@dataclass(frozen=True)
class TimelineSecond:
    """One sampled second of a video: its faces and, when there is one, the frame's P(fake) and label."""

    second: int
    t_s: float
    n_faces: int
    fake_probability: float | None
    label: str | None
    faces: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimelineSecond:
        """Back from ``to_dict`` (a chord part's JSON)."""
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MediaResult:
    """The outcome for one input. ``to_dict`` is the JSON shape of ``deepscan detect``, of a stored row
    (``db.queries.result_to_dict`` adds the row's storage columns) and of the API."""

    path: str
    media_type: str = "unknown"
    status: ResultStatus = ResultStatus.OK
    reason: str | None = None
    label: str | None = None
    fake_probability: float | None = None
    confidence: dict[str, float] | None = None
    model: str | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[TimelineSecond] = field(default_factory=list)
    audio: AudioVerdict | None = None
    provenance: Provenance | None = None  # None when it was not read (policy off, or not media)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def set_verdict(self, verdict: Verdict | None) -> None:
        if verdict is None:
            self.label, self.fake_probability, self.confidence = None, None, None
            return
        self.label = verdict.label
        self.fake_probability = round(float(verdict.fake_probability), 6)
        self.confidence = verdict.confidence

    def fail(self, error: DeepscanError) -> MediaResult:
        self.status, self.reason = error.status, error.reason
        self.set_verdict(None)
        return self

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["audio"] = self.audio.to_dict() if self.audio is not None else None
        out["provenance"] = self.provenance.to_dict() if self.provenance is not None else None
        return out


class PackBatcher:
    """One forward pass per member for the faces (and audio windows) of many threads of one process: the
    analyzers of a threaded worker share one pack and one ``PackBatcher``. ``max_wait_s`` bounds what a
    caller waits for others; a batch takes at most ``max_items`` before it goes without waiting."""

    def __init__(self, pack: ModelPack, *, max_wait_s: float, max_items: int = PREDICT_BATCH) -> None:
        self.faces = CoalescingBatcher(pack.score_faces, max_items=max_items, max_wait_s=max_wait_s)
        self.windows = CoalescingBatcher(
            lambda windows: pack.score_audio_windows(np.stack(windows)),
            max_items=max_items,
            max_wait_s=max_wait_s,
        )

    def score_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``ModelPack.score_faces``, in a pass shared with other threads' crops."""
        return self.faces.score(crops)

    def score_audio_windows(self, windows: np.ndarray) -> np.ndarray:
        """``ModelPack.score_audio_windows``, in a pass shared with other threads' windows."""
        return self.windows.score(list(windows))


class Analyzer:
    """Holds a loaded pack and a face detector; analyses files or arrays. One per thread (a face detector
    is not shared between threads); the analyzers of one process share its pack."""

    def __init__(
        self,
        pack: ModelPack,
        detector: FaceDetector | None = None,
        *,
        score_soundtrack: bool = True,
        provenance: ProvenanceOptions = ProvenanceOptions(),
        batcher: PackBatcher | None = None,
    ):
        self.pack = pack
        self.detector = detector or FaceDetector()
        # Analyzers of one process's threads may share a batcher: their faces and windows then go through
        # the members together (``PackBatcher``); alone, an analyzer calls the pack directly.
        self.scorer: ModelPack | PackBatcher = batcher or pack
        self.score_soundtrack = score_soundtrack
        self.provenance = provenance
        manifest = pack.manifest
        self.member_names = [m.name for m in manifest.image_members]
        self.image_threshold = manifest.threshold("image")
        self.audio_threshold = manifest.threshold("audio")
        self.vote_threshold = manifest.threshold("video_vote")

    def warm_up(self) -> None:
        """Trace the pack's members and the face verifier, so that the first object costs what the
        hundredth does (``ModelPack.warm_up``, ``FaceDetector.warm_up``)."""
        self.pack.warm_up()
        self.detector.warm_up()

    # -- batch-first building blocks ------------------------------------------------------------------

    def find_faces(self, t_s: float, frame: np.ndarray) -> FoundFaces:
        """Detect the faces of an RGB uint8 frame (H, W, 3) and cut their crops; the frame can go."""
        boxes = self.detector.detect(frame)
        return FoundFaces(t_s, boxes, [square_crop(frame, box) for box in boxes])

    def score_found(self, found: Sequence[FoundFaces]) -> list[FrameScore]:
        """Score the faces of many frames: all their crops in one batch per member."""
        if not self.pack.manifest.image_members:
            raise DeepscanError("the model pack has no image members")
        crops = [crop for frame in found for crop in frame.crops]
        scores = self.scorer.score_faces(crops)
        probabilities = aggregate(scores, self.pack.manifest.aggregation) if len(crops) else np.zeros(0)
        out, start = [], 0
        for frame in found:
            end = start + len(frame.boxes)
            out.append(FrameScore(frame.t_s, frame.boxes, scores[start:end], probabilities[start:end]))
            start = end
        return out

    def score_frames(
        self, frames: Sequence[np.ndarray], times_s: Sequence[float] | None = None
    ) -> list[FrameScore]:
        """Detect and score every face in RGB uint8 frames (H, W, 3), all faces in one batch per member."""
        times = list(times_s) if times_s is not None else [0.0] * len(frames)
        return self.score_found([self.find_faces(t, frame) for t, frame in zip(times, frames, strict=True)])

    def score_audio(self, signal: np.ndarray) -> AudioVerdict:
        """Score a mono signal at the pack's rate (raises on silence or a clip too short)."""
        front_end = self.pack.manifest.audio
        if front_end is None or not self.pack.manifest.audio_members:
            raise UnsupportedMediaError("the model pack has no audio member")
        scores = self.scorer.score_audio_windows(split_windows(signal, front_end))
        window_p = aggregate(scores, self.pack.manifest.audio_aggregation)
        verdict = Verdict(float(window_p.mean()), self.audio_threshold)
        return AudioVerdict(
            label=verdict.label,
            fake_probability=round(verdict.fake_probability, 6),
            confidence=verdict.confidence,
            windows=len(window_p),
            window_s=front_end.window_s,
            window_probabilities=tuple(round(float(p), 4) for p in window_p),
            duration_s=round(signal.size / front_end.sample_rate_hz, 3),
        )

    def explain_image(
        self, frame: np.ndarray, *, num_samples: int = LIME_SAMPLES
    ) -> list[tuple[FaceBox, FaceExplanation]]:
        """LIME explanation of every face in an RGB uint8 frame, with the ensemble as the scoring function."""
        boxes = self.detector.detect(frame)
        if not boxes:
            raise NoFaceError("no face found in the image")
        return [(box, self.explain_face(frame, box, num_samples=num_samples)) for box in boxes]

    def explanation_crop(self, frame: np.ndarray, box: FaceBox) -> np.ndarray:
        """The crop of the face at ``box`` that LIME explains: uint8 RGB (S, S, 3), S <= 256."""
        crop = square_crop(frame, box)
        if crop.shape[0] > EXPLAIN_MAX_SIDE_PX:  # superpixels of a bigger crop add time, not detail
            crop = to_uint8_size(crop, EXPLAIN_MAX_SIDE_PX)
        return crop

    def explain_crop(self, crop: np.ndarray, *, num_samples: int = LIME_SAMPLES) -> FaceExplanation:
        """LIME explanation of one face crop (``explanation_crop``), scored by the ensemble."""

        def score(crops: list[np.ndarray]) -> np.ndarray:
            return aggregate(self.pack.score_faces(crops), self.pack.manifest.aggregation)

        return explain_crop(crop, score, num_samples=num_samples)

    def explain_face(
        self, frame: np.ndarray, box: FaceBox, *, num_samples: int = LIME_SAMPLES
    ) -> FaceExplanation:
        """LIME explanation of the face at ``box`` in an RGB uint8 frame (H, W, 3)."""
        return self.explain_crop(self.explanation_crop(frame, box), num_samples=num_samples)

    # -- per media type -------------------------------------------------------------------------------

    def analyze_image(self, frame: np.ndarray, result: MediaResult) -> MediaResult:
        (scored,) = self.score_frames([frame])
        if not scored.boxes:
            raise NoFaceError("no face found in the image")
        result.faces = self._faces(scored)
        result.set_verdict(Verdict(scored.fake_probability or 0.0, self.image_threshold))
        result.details["aggregation"] = self.pack.manifest.aggregation.method
        return result

    def analyze_video(self, path: Path, result: MediaResult) -> MediaResult:
        info = probe_video(path)
        timeline = self.score_video_segment(path, info)
        audio = self.score_soundtrack_of(path) if info.has_audio else None
        return self.video_verdict(result, info, timeline, audio)

    def score_video_segment(
        self, path: Path, info: VideoInfo, start_s: float = 0.0, duration_s: float | None = None
    ) -> list[TimelineSecond]:
        """The timeline of the sampled seconds of ``[start_s, start_s + duration_s)``.

        The distributed scanner fans a video out into segments with this and gathers them with
        ``video_verdict``; the embedded path calls it once for the whole video.
        """
        entries: list[TimelineSecond] = []
        frames = iter_video_frames(
            path, info, interval_s=FRAME_INTERVAL_S, start_s=start_s, duration_s=duration_s
        )
        # Decoding and detection (ffmpeg's pipe, OpenCV: both release the GIL) run a chunk ahead of the
        # models in a thread of their own; only crops wait in between, so memory does not grow with the
        # frame size.
        found = prefetched(self._faces_of(frames), VIDEO_CHUNK_FRAMES)
        for chunk in batched(found, VIDEO_CHUNK_FRAMES):
            scored = self.score_found(chunk)
            entries.extend(self._timeline_entry(round(fs.t_s / FRAME_INTERVAL_S), fs) for fs in scored)
        return entries

    def _faces_of(self, frames: Generator[tuple[float, np.ndarray], None, None]) -> Iterator[FoundFaces]:
        with contextlib.closing(frames):  # stops ffmpeg when the consumer stops early
            for t_s, frame in frames:
                yield self.find_faces(t_s, frame)

    def score_soundtrack_of(self, path: Path) -> AudioVerdict | None:
        """The audio verdict of a video's soundtrack (unscored, with its reason, when it cannot be scored),
        or None when soundtracks are not scored."""
        if not self.score_soundtrack or not self.pack.manifest.audio_members:
            return None
        try:
            return self.score_audio(load_audio(path))
        except DeepscanError as e:
            return AudioVerdict.unscored(e)

    def video_verdict(
        self,
        result: MediaResult,
        info: VideoInfo,
        timeline: Sequence[TimelineSecond],
        audio: AudioVerdict | None,
    ) -> MediaResult:
        """Aggregate timeline entries (any order, duplicates by second collapse) and the soundtrack verdict.

        Idempotent: the same entries always give the same result.
        """
        result.details["video"] = {
            "duration_s": round(info.duration_s, 3),
            "width": info.width,
            "height": info.height,
            "fps": round(info.fps, 3),
            "has_audio": info.has_audio,
        }
        by_second = {entry.second: entry for entry in timeline}
        result.timeline = [by_second[k] for k in sorted(by_second)]
        if not result.timeline:
            raise MediaDecodeError("no frame could be decoded from the video")
        result.audio = audio
        return self._combine(result, self._vote(result.timeline), audio, len(result.timeline))

    def read_provenance(self, source: bytes | Path, media_type: str) -> Provenance | None:
        """The provenance of a file's bytes (images) or path (video, audio); None when the policy is off."""
        if self.provenance.policy == VerdictPolicy.OFF:
            return None
        return read_provenance(
            source, media_type=media_type, trust_anchors_pem=self.provenance.trust_anchors_pem
        )

    def apply_provenance(self, result: MediaResult, provenance: Provenance | None) -> MediaResult:
        """Attach ``provenance`` and, where the policy lets a verified claim decide, set the label from it.

        The detectors' verdict stays in ``details`` (``detector_label``, ``detector_fake_probability``, and
        ``detector_status`` / ``detector_reason`` when they had none). Idempotent.
        """
        result.provenance = provenance
        label = decide(provenance, self.provenance.policy)
        if label is None or result.status not in PROVENANCE_DECIDES:
            return result
        if result.details.get("verdict_driven_by") != "provenance":
            if result.status != ResultStatus.OK:
                result.details["detector_status"] = str(result.status)
                result.details["detector_reason"] = result.reason
            elif "verdict_driven_by" in result.details:
                result.details["detector_verdict_driven_by"] = result.details["verdict_driven_by"]
            result.details["detector_label"] = result.label
            result.details["detector_fake_probability"] = result.fake_probability
        result.status, result.reason = ResultStatus.OK, None
        result.set_verdict(Verdict(PROVENANCE_PROBABILITY[label], 0.5))
        result.details["verdict_driven_by"] = "provenance"
        return result

    def analyze_audio(self, path: Path, result: MediaResult) -> MediaResult:
        verdict = self.score_audio(load_audio(path))
        result.audio = verdict
        assert verdict.fake_probability is not None  # score_audio raises rather than leave it unscored
        result.set_verdict(Verdict(verdict.fake_probability, self.audio_threshold))
        return result

    def analyze_file(self, path: str | Path) -> MediaResult:
        """Analyse one file. Never raises for bad input: failures come back as a status and a reason."""
        path = Path(path)
        started = time.perf_counter()
        result = MediaResult(path=str(path), model=self.pack.manifest.label)
        provenance: Provenance | None = None
        try:
            result.media_type = detect_media_type(path)
            if result.media_type == "image":
                data = read_file(path)
                provenance = self.read_provenance(data, "image")
                frame = decode_image_bytes(data)
                if provenance is not None and self.provenance.watermarks:
                    provenance = provenance.with_findings(watermark_findings(frame))
                self.analyze_image(frame, result)
            elif result.media_type == "video":
                provenance = self.read_provenance(path, "video")
                self.analyze_video(path, result)
            elif result.media_type == "audio":
                provenance = self.read_provenance(path, "audio")
                self.analyze_audio(path, result)
            elif result.media_type == "archive":
                raise UnsupportedMediaError(
                    "archives are expanded by the batch scanner, not analysed directly"
                )
            else:
                raise UnsupportedMediaError(
                    "the content is not an image, video or audio format deepscan reads"
                )
        except DeepscanError as e:
            result.fail(e)
        except OSError as e:
            result.fail(MediaDecodeError(f"the file could not be read: {e}"))
        except Exception as e:  # a bug or a decoder failure we did not foresee: record it, keep going
            logger.exception("unexpected failure analysing %s", path)
            error = DeepscanError(f"internal error ({type(e).__name__}): {e}")
            result.fail(error)
        self.apply_provenance(result, provenance)
        result.elapsed_s = round(time.perf_counter() - started, 4)
        return result

    # -- helpers --------------------------------------------------------------------------------------

    def _faces(self, scored: FrameScore) -> list[dict[str, Any]]:
        return [
            {
                "box": box.as_dict(),
                "fake_probability": round(float(p), 6),
                "members": {n: round(float(s), 6) for n, s in zip(self.member_names, member, strict=True)},
            }
            for box, p, member in zip(
                scored.boxes, scored.face_probabilities, scored.member_scores, strict=True
            )
        ]

    def _timeline_entry(self, second: int, scored: FrameScore) -> TimelineSecond:
        p = scored.fake_probability
        return TimelineSecond(
            second=second,
            t_s=round(scored.t_s, 3),
            n_faces=len(scored.boxes),
            fake_probability=None if p is None else round(p, 6),
            label=None if p is None else ("fake" if p >= self.image_threshold else "real"),
            faces=self._faces(scored),
        )

    def _vote(self, timeline: Sequence[TimelineSecond]) -> dict[str, Any] | None:
        """Majority vote over the seconds that show a face; probability = mean of their probabilities."""
        probabilities = [e.fake_probability for e in timeline if e.fake_probability is not None]
        if not probabilities:
            return None
        fake, real = vote(probabilities, self.image_threshold)
        mean_p = float(np.mean(probabilities))
        return {
            "label": "fake" if fake / len(probabilities) >= self.vote_threshold else "real",
            "fake_probability": round(mean_p, 6),
            "confidence": Verdict(mean_p, self.image_threshold).confidence,
            "votes": {"fake": fake, "real": real},
            "seconds_with_faces": len(probabilities),
        }

    def _combine(
        self, result: MediaResult, faces: dict[str, Any] | None, audio: AudioVerdict | None, n_seconds: int
    ) -> MediaResult:
        """A video is fake if either stream is: the combined verdict follows the more suspicious one."""
        result.details["faces_verdict"] = faces
        sound = audio.to_dict() if audio is not None else None
        candidates = {k: v for k, v in (("faces", faces), ("audio", sound)) if v and v.get("label")}
        if not candidates:
            raise NoFaceError(f"no face in any of {n_seconds} sampled seconds and no scorable soundtrack")
        driver = max(
            candidates, key=lambda k: (candidates[k]["label"] == "fake", candidates[k]["fake_probability"])
        )
        chosen = candidates[driver]
        result.label = chosen["label"]
        result.fake_probability = chosen["fake_probability"]
        result.confidence = chosen["confidence"]
        result.details["verdict_driven_by"] = driver
        return result


def to_uint8_size(crop: np.ndarray, side_px: int) -> np.ndarray:
    import cv2

    return cv2.resize(crop, (side_px, side_px), interpolation=cv2.INTER_AREA)
