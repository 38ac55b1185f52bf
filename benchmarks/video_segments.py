"""How many seconds of video one ``score_segment`` task should score: time per sampled second by segment size.

A segment task pays a fixed price (an ffmpeg process, a seek, a model batch) whatever its length; longer
segments amortise it but give fewer tasks to spread over workers. This scores one looped sample video in
segments of each size, sequentially in one process (what one worker does), and prints seconds per scored
second.

    python benchmarks/video_segments.py [--pack DIR] [--duration-s 32] [--repeats 2]

Without ``--pack`` it builds an untrained pack with the bundled members' architectures and input sizes
(densenet121 at 96 px, spectral at 128 px): inference cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_pack(directory: Path) -> Path:
    from pipeline.pack import Manifest, MemberSpec, write_manifest
    from training.architectures import build_image_member

    members = []
    for arch, size in (("densenet121", (96, 96)), ("spectral", (128, 128))):
        build_image_member(arch, size).save(directory / f"{arch}.keras")
        members.append(MemberSpec(arch, "image", f"{arch}.keras", size, arch))
    write_manifest(directory, Manifest(name="bench", version="0", members=tuple(members)))
    return directory


def looped_video(sample: Path, out: Path, duration_s: int) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(sample),
         "-t", str(duration_s), "-c", "copy", str(out)],
        check=True,
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path)
    parser.add_argument("--duration-s", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    args = parser.parse_args()

    from pipeline.analyze import Analyzer
    from pipeline.media import probe_video
    from pipeline.pack import ModelPack
    from workers.samples import write_samples

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.pack is None:
            (work / "pack").mkdir()
        pack_dir = args.pack or build_pack(work / "pack")
        write_samples(work / "samples")
        video = looped_video(work / "samples" / "talking_face.mp4", work / "long.mp4", args.duration_s)
        analyzer = Analyzer(ModelPack.load(pack_dir), score_soundtrack=False)
        info = probe_video(video)
        analyzer.score_video_segment(video, info, 0.0, 4.0)  # warm-up: graph tracing, cascade load
        print(f"video {info.duration_s:.1f} s, {info.width}x{info.height}; seconds per scored second:")
        for size in (int(s) for s in args.sizes.split(",")):
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                n = 0
                for start in range(0, int(info.duration_s + 0.999), size):
                    n += len(analyzer.score_video_segment(video, info, float(start), float(size)))
                best = min(best, time.perf_counter() - started)
            print(f"  segment {size:>3} s: {best / n:.3f} s/s  ({n} seconds in {best:.1f} s)")


if __name__ == "__main__":
    main()
