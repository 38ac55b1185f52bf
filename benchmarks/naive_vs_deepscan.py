"""The naive video loop against deepscan's, on the same videos and the same loaded pack, votes compared.

The naive loop is what a first script does: read every frame with OpenCV, keep one per second, run Haar
on the full frame, and call ``model.predict`` once per face and member. deepscan's loop is
``Analyzer.score_video_segment``: ffmpeg's fps filter converts only the kept frames, Haar runs on frames
scaled to at most 960 px with boxes mapped back (``--fast-face-search``: windows past 48 px searched on
the frame halved, as ``DEEPSCAN_FACE_SEARCH=fast`` does), the face verifier drops boxes that are not faces
(``--unverified`` keeps them, as 0.10.0 did), and the faces of up to 16 seconds go through each member in
one padded batch. Both run in this process after the pack is loaded and warmed (``--cold`` times the
first pass instead), soundtracks aside (the naive loop has none). Votes are compared for every second
where the naive loop scored the faces deepscan scored (boxes within ``BOX_IOU`` of each other), and
deepscan's own faces are scored both ways (one predict per face and member, and deepscan's batches) to
check that the same faces get the same votes.

    python benchmarks/naive_vs_deepscan.py [VIDEO ...] [--pack DIR] [--repeats 2] [--json OUT]

Without videos it takes ``../shared/data/videos/*.mp4`` where that exists, else three sample videos of
10, 20 and 30 s of ``deepscan samples``' talking face (``--samples`` takes these even where the research
clips exist).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
RESEARCH_VIDEOS = REPO.parent / "shared" / "data" / "videos"
BOX_IOU = 0.8


def member_input(crop: Any, member: Any) -> Any:
    """One crop as ``member`` reads it (its crop geometry and input size): a batch of one."""
    from pipeline.faces import to_model_input

    return to_model_input([crop], member.input_size, member.crop_geometry)


def naive_timeline(analyzer: Any, path: Path) -> list[dict[str, Any]]:
    """One entry per second: the naive loop's faces and their ensemble probabilities."""
    import cv2
    import numpy as np

    from pipeline.ensemble import aggregate
    from pipeline.faces import FaceBox, square_crop

    pack, options = analyzer.pack, analyzer.detector.options
    cascade = analyzer.detector._cascade  # the same cascade file, run on the full frame
    capture = cv2.VideoCapture(str(path))
    step = max(1, round(capture.get(cv2.CAP_PROP_FPS)))
    timeline, index = [], 0
    while True:
        ok, bgr = capture.read()  # every frame is decoded and converted
        if not ok:
            break
        if index % step == 0:
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
            found = cascade.detectMultiScale(
                gray,
                scaleFactor=options.scale_factor,
                minNeighbors=options.min_neighbors,
                minSize=(options.min_face_px, options.min_face_px),
            )
            boxes = sorted((FaceBox(*map(int, b)) for b in found), key=lambda b: -b.w * b.h)
            boxes = boxes[: options.max_faces]
            probabilities = []
            for box in boxes:
                crop = square_crop(frame, box)
                scores = [
                    float(pack.models[m.name].predict(member_input(crop, m), verbose=0)[0, 0])
                    for m in pack.manifest.image_members
                ]
                probabilities.append(float(aggregate(np.array([scores]), pack.manifest.aggregation)[0]))
            timeline.append({"second": index // step, "boxes": boxes, "probabilities": probabilities})
        index += 1
    capture.release()
    return timeline


def deepscan_timeline(analyzer: Any, path: Path) -> list[dict[str, Any]]:
    from pipeline.media import probe_video

    return [
        {
            "second": entry.second,
            "boxes": [face["box"] for face in entry.faces],
            "probabilities": [face["fake_probability"] for face in entry.faces],
        }
        for entry in analyzer.score_video_segment(path, probe_video(path))
    ]


def same_crops_check(analyzer: Any, path: Path) -> dict[str, Any]:
    """deepscan's own faces of every second scored both ways: one predict per face and member (naive) and
    deepscan's padded batches across seconds. Same faces must give the same vote."""
    import numpy as np

    from pipeline.ensemble import aggregate
    from pipeline.media import iter_video_frames, probe_video

    pack, threshold = analyzer.pack, analyzer.image_threshold
    found = [analyzer.find_faces(t, frame) for t, frame in iter_video_frames(path, probe_video(path))]
    batched = analyzer.score_found(found)
    seconds = same_votes = 0
    gap = 0.0
    for faces, scored in zip(found, batched, strict=True):
        if not faces.crops:
            continue
        one_by_one = [
            [float(pack.models[m.name].predict(member_input(c, m), verbose=0)[0, 0])
             for m in pack.manifest.image_members]
            for c in faces.crops
        ]  # fmt: skip
        p_naive = float(aggregate(np.array(one_by_one), pack.manifest.aggregation).max())
        p_batched = float(scored.fake_probability)
        seconds += 1
        same_votes += (p_naive >= threshold) == (p_batched >= threshold)
        gap = max(gap, abs(p_naive - p_batched))
    return {"seconds_with_faces": seconds, "same_votes": same_votes, "largest_probability_gap": gap}


def compare_votes(
    naive: list[dict[str, Any]], ours: list[dict[str, Any]], threshold: float
) -> dict[str, Any]:
    """Seconds where the naive loop scored every face deepscan scored (a naive box within ``BOX_IOU`` of
    each), and how many of those got the same vote: the largest probability of those faces, both ways.

    The naive loop's other boxes are left out of its vote: they are what deepscan's face verifier rejected
    (``naive_boxes_unmatched`` counts them) or faces only one loop found.
    """
    from pipeline.faces import FaceBox

    by_second = {entry["second"]: entry for entry in ours}
    same_faces = same_votes = unmatched = 0
    largest_gap = 0.0
    for entry in naive:
        other = by_second.get(entry["second"], {"boxes": [], "probabilities": []})
        pairs = []
        for box, p_ours in zip(other["boxes"], other["probabilities"], strict=True):
            overlap, p_naive = max(
                (
                    (a.iou(FaceBox(**box)), q)
                    for a, q in zip(entry["boxes"], entry["probabilities"], strict=True)
                ),
                default=(0.0, 0.0),
            )
            if overlap >= BOX_IOU:
                pairs.append((p_naive, p_ours))
        unmatched += len(entry["boxes"]) - len(pairs)
        if not other["boxes"] or len(pairs) < len(other["boxes"]):
            continue
        same_faces += 1
        p_naive, p_ours = max(p for p, _ in pairs), max(p for _, p in pairs)
        largest_gap = max(largest_gap, abs(p_naive - p_ours))
        same_votes += (p_naive >= threshold) == (p_ours >= threshold)
    return {
        "seconds": len(naive),
        "seconds_same_faces": same_faces,
        "same_votes": same_votes,
        "largest_probability_gap": round(largest_gap, 4),
        "naive_boxes_unmatched": unmatched,
    }


def timed(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def sample_videos(directory: Path) -> list[Path]:
    """Three talking-face videos of 10, 20 and 30 s (640 x 640, 25 fps, the sample portrait zooming)."""
    from workers.samples import face_image, talking_face_video

    face = face_image()
    return [talking_face_video(directory / f"face_{s}s.mp4", face, None, s) for s in (10, 20, 30)]


def the_videos(given: list[Path], scratch: Path, *, samples: bool) -> Iterator[Path]:
    if given:
        yield from given
    elif RESEARCH_VIDEOS.is_dir() and not samples:
        yield from sorted(RESEARCH_VIDEOS.glob("*.mp4"))
    else:
        yield from sample_videos(scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--pack", type=Path, default=REPO / "pipeline" / "weights" / "default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", action="store_true", help="the sample videos, not the research clips")
    parser.add_argument("--cold", action="store_true", help="time the first pass (nothing traced yet)")
    parser.add_argument(
        "--unverified", action="store_true", help="deepscan without its face verifier (as 0.10.0 ran)"
    )
    parser.add_argument(
        "--fast-face-search",
        action="store_true",
        help="deepscan's first Haar pass halved past 48 px (DEEPSCAN_FACE_SEARCH=fast)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from pipeline.analyze import Analyzer
    from pipeline.faces import DetectorOptions, FaceDetector
    from pipeline.media import probe_video
    from pipeline.pack import ModelPack

    start = time.perf_counter()
    options = DetectorOptions(
        min_face_score=0.0 if args.unverified else DetectorOptions.min_face_score,
        halved_pyramid=args.fast_face_search,
    )
    detector = FaceDetector(options)
    analyzer = Analyzer(ModelPack.load(args.pack), detector, score_soundtrack=False)
    load_s = time.perf_counter() - start
    rows, naive_total, ours_total, video_s = [], 0.0, 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        videos = list(the_videos(args.videos, Path(tmp), samples=args.samples))
        if not args.cold:  # trace every batch shape both loops will use, outside the timings
            for path in videos:
                naive_timeline(analyzer, path)
                deepscan_timeline(analyzer, path)
        repeats = 1 if args.cold else args.repeats
        for path in videos:
            duration = probe_video(path).duration_s
            naive_s, naive = timed(lambda p=path: naive_timeline(analyzer, p), repeats)
            ours_s, ours = timed(lambda p=path: deepscan_timeline(analyzer, p), repeats)
            votes = compare_votes(naive, ours, analyzer.image_threshold)
            same_crops = same_crops_check(analyzer, path)
            faces = sum(len(entry["boxes"]) for entry in ours)
            rows.append(
                {"video": path.name, "duration_s": round(duration, 2), "faces": faces,
                 "naive_s": round(naive_s, 2), "deepscan_s": round(ours_s, 2),
                 "speedup": round(naive_s / ours_s, 2), "own_detections": votes,
                 "same_crops_both_ways": same_crops}
            )  # fmt: skip
            naive_total, ours_total, video_s = naive_total + naive_s, ours_total + ours_s, video_s + duration
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
        "pack": str(args.pack),
        "pack_load_s": round(load_s, 1),
        "face_verifier": not args.unverified,
        "halved_pyramid": options.halved_pyramid,
        "timing": "first pass" if args.cold else f"best of {args.repeats}, after a warm-up pass",
        "videos": rows,
        "naive_s": round(naive_total, 2),
        "deepscan_s": round(ours_total, 2),
        "speedup": round(naive_total / ours_total, 2),
        "deepscan_real_time_factor": round(ours_total / video_s, 3),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
