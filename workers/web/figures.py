"""PNG figures a person reads: a face beside its explanation, a video's P(fake) per second, thumbnails.

Drawn with matplotlib's object API on the Agg canvas (never ``pyplot``, whose global state is not safe
across the server's threads); each function returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from pipeline.explain import FAKE_RGB, MIN_WEIGHT_SHARE, REAL_RGB, TOP_REGIONS, FaceExplanation

DPI = 100
THUMBNAIL_SIDE_PX = 160


def _rgb(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return rgb[0] / 255, rgb[1] / 255, rgb[2] / 255


FAKE_COLOUR, REAL_COLOUR = _rgb(FAKE_RGB), _rgb(REAL_RGB)
NO_FACE_COLOUR = (0.6, 0.6, 0.6)


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _points(weights: Sequence[float]) -> str:
    """Weights (changes in P(fake)) as signed percentage points: ``+7.1, +0.8``; below one, two decimals."""
    return ", ".join(f"{100 * w:+.1f}" if abs(w) >= 0.01 else f"{100 * w:+.2f}" for w in weights)


def explanation_png(explanation: FaceExplanation, *, threshold: float, title: str | None = None) -> bytes:
    """The face crop and its explanation side by side, with a legend and the score.

    The legend gives the weight of each region shown in percentage points of P(fake): how much showing
    that region (rather than hiding it) moves the score in LIME's local linear model.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    p = explanation.fake_probability
    label = "fake" if p >= threshold else "real"
    figure = Figure(figsize=(7.2, 5.2), layout="constrained")
    figure.suptitle(
        title or f"P(fake) {p:.3f}: {label} (threshold {threshold:.3f})",
        fontsize=13,
        color=FAKE_COLOUR if label == "fake" else REAL_COLOUR,
        fontweight="bold",
    )
    axes = figure.subplot_mosaic([["face", "overlay"], ["legend", "legend"]], height_ratios=[10, 2.4])
    for name, image, title in (
        ("face", explanation.crop, "face"),
        ("overlay", explanation.overlay, "strongest regions"),
    ):
        axes[name].imshow(image)
        axes[name].set_title(title, fontsize=11)
        axes[name].set_axis_off()
    for_fake, for_real = explanation.shown_weights()
    handles = [
        Patch(
            facecolor=FAKE_COLOUR,
            label=f"towards fake: {_points(for_fake)} pts" if for_fake else "towards fake: no region",
        ),
        Patch(
            facecolor=REAL_COLOUR,
            label=f"towards real: {_points(for_real)} pts" if for_real else "towards real: no region",
        ),
    ]
    legend = axes["legend"]
    legend.set_axis_off()
    legend.legend(handles=handles, loc="upper center", ncols=2, fontsize=10, frameon=False)
    strongest = max((abs(w) for w in explanation.weights.values()), default=0.0)
    legend.text(
        0.5,
        0.0,
        f"LIME over {explanation.num_samples} perturbed crops. pts: change in P(fake) when a region keeps its "
        "detail rather than being blurred.\n"
        f"Shown: up to {TOP_REGIONS} regions per side, each at least {MIN_WEIGHT_SHARE:.0%} of the strongest "
        f"({100 * strongest:.1f} pts). Local linear fit R² {explanation.fit_r2:.2f}.",
        ha="center",
        va="bottom",
        fontsize=8,
        color="0.35",
        transform=legend.transAxes,
    )
    return _png(figure)


def timeline_png(result: Mapping[str, Any], *, threshold: float) -> bytes:
    """P(fake) per sampled second of a video result, the threshold, and the soundtrack's verdict.

    ``result`` is a video's result in the one JSON shape of a fresh result and a stored row: ``timeline``
    entries have ``second`` and ``fake_probability`` (None: no face that second), ``audio`` is the
    soundtrack's verdict, ``label`` and ``fake_probability`` the video's.
    """
    from matplotlib.figure import Figure

    timeline = result.get("timeline") or []
    seconds = np.array([int(e["second"]) for e in timeline], dtype=np.int64)
    probabilities = np.array(
        [np.nan if e.get("fake_probability") is None else float(e["fake_probability"]) for e in timeline]
    )
    figure = Figure(figsize=(7.2, 3.0), layout="constrained")
    axis = figure.subplots()
    axis.axhspan(threshold, 1.0, color=FAKE_COLOUR, alpha=0.07)
    axis.axhline(threshold, color="0.4", linestyle="--", linewidth=1)
    axis.text(
        0.0,
        threshold,
        f" threshold {threshold:.2f}",
        va="bottom",
        fontsize=8,
        color="0.3",
        transform=axis.get_yaxis_transform(),
    )
    axis.plot(seconds, probabilities, color="0.25", linewidth=1.2, zorder=2)
    scored = ~np.isnan(probabilities)
    colours = [FAKE_COLOUR if p >= threshold else REAL_COLOUR for p in probabilities[scored]]
    axis.scatter(seconds[scored], probabilities[scored], c=colours, s=28, zorder=3, label="faces")
    if (~scored).any():
        axis.scatter(
            seconds[~scored],
            np.zeros((~scored).sum()),
            marker="x",
            color=NO_FACE_COLOUR,
            s=24,
            zorder=3,
            label="no face",
        )
        axis.legend(loc="upper right", fontsize=8, frameon=False)
    axis.set_ylim(-0.03, 1.03)
    axis.set_xlim(-0.5, max(int(seconds.max()) if len(seconds) else 0, 1) + 0.5)
    axis.set_xlabel("second")
    axis.set_ylabel("P(fake) of the frame")
    axis.grid(alpha=0.25)
    axis.set_title(video_caption(result), fontsize=10)
    return _png(figure)


def video_caption(result: Mapping[str, Any]) -> str:
    """Two lines: the video's verdict (and which stream drove it); the faces' vote and the soundtrack's."""
    details = result.get("details") or {}
    first = "no verdict"
    if result.get("label"):
        first = f"verdict: {result['label']}, P(fake) {result['fake_probability']:.3f}"
        if details.get("verdict_driven_by"):
            first += f", driven by the {details['verdict_driven_by']}"
    faces = details.get("faces_verdict")
    if faces:
        votes = faces.get("votes", {})
        seen = f"faces: {faces['label']} {faces['fake_probability']:.3f}"
        seen += f" ({votes.get('fake', 0)} of {faces.get('seconds_with_faces', '?')} seconds fake)"
    else:
        seen = "faces: no verdict"
    return f"{first}\n{seen}   {_audio_caption(result.get('audio'))}"


def _audio_caption(audio: Mapping[str, Any] | None) -> str:
    if audio is None:
        return "audio: not scored"
    if audio.get("label") is None:
        return f"audio: no verdict ({audio.get('status', 'unknown')})"
    return f"audio: {audio['label']} {audio['fake_probability']:.3f} ({audio.get('windows', '?')} windows)"


def thumbnail_png(frame: np.ndarray, *, side_px: int = THUMBNAIL_SIDE_PX) -> bytes:
    """An RGB uint8 frame (H, W, 3) shrunk to fit a ``side_px`` square, as PNG."""
    height, width = frame.shape[:2]
    scale = min(1.0, side_px / max(height, width))
    small = cv2.resize(
        frame, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    ok, data = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV could not encode the thumbnail")
    return data.tobytes()
