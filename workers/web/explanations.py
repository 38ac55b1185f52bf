"""Which face an explanation is about, and the frame it is in.

An image is explained on its most suspicious face (the one whose score the image took); a video on the
most suspicious face of its most suspicious second, the frame that weighed most towards "fake". Both read
a fresh ``MediaResult.to_dict()`` and a stored row (``db.queries.result_to_dict``) alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import MediaDecodeError
from pipeline.faces import FaceBox
from pipeline.media import FRAME_INTERVAL_S, iter_video_frames, load_image, probe_video


@dataclass(frozen=True)
class ExplainTarget:
    """The face to explain: its box, its score, and the second of the video it is in (None: an image)."""

    box: FaceBox
    fake_probability: float
    t_s: float | None = None


def seconds_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Timeline entries (second, t_s, fake_probability, faces) of a result: fresh or stored, one shape."""
    return list(result.get("timeline") or [])


def _faces_of(result: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    return result.get("faces") or []


def _most_suspicious(faces: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    scored = [f for f in faces if f.get("fake_probability") is not None]
    return max(scored, key=lambda f: f["fake_probability"], default=None)


def driving_face(result: Mapping[str, Any]) -> ExplainTarget | None:
    """The face that drove the verdict of an image or a video, or None when it showed no face."""
    if result.get("media_type") == "image":
        face = _most_suspicious(_faces_of(result))
        return None if face is None else ExplainTarget(FaceBox(**face["box"]), face["fake_probability"])
    if result.get("media_type") == "video":
        seconds = [s for s in seconds_of(result) if s.get("fake_probability") is not None and s["faces"]]
        if not seconds:
            return None
        second = max(seconds, key=lambda s: s["fake_probability"])
        face = _most_suspicious(second["faces"])
        if face is None:
            return None
        return ExplainTarget(FaceBox(**face["box"]), face["fake_probability"], float(second["t_s"]))
    return None


def frame_at(path: Path, media_type: str, t_s: float | None = None) -> np.ndarray:
    """The RGB uint8 frame (H, W, 3) of an image, or of a video at its sampled second ``t_s``.

    Raises ``MediaDecodeError`` when the video has no frame there.
    """
    if media_type == "image":
        return load_image(path)
    info = probe_video(path)
    for _, frame in iter_video_frames(path, info, start_s=t_s or 0.0, duration_s=FRAME_INTERVAL_S):
        return frame.copy()
    raise MediaDecodeError(f"no frame of the video at {t_s or 0.0:.1f} s")
