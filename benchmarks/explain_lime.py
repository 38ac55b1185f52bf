"""LIME cost and stability per face: seconds per explanation and how far its strongest regions can be trusted.

Explains the sample portrait's face with the pack's ensemble (as ``deepscan serve`` and ``deepscan
explain`` do) for each superpixel count and sample count, twice with different seeds, and prints the
seconds per explanation, the R² of LIME's local model, the strongest weight, and how well the regions
shown (the strongest towards fake and towards real) agree, as pixel IoU, between the two seeds and with
a reference run at ``--reference`` samples.

    python benchmarks/explain_lime.py [--pack DIR] [--segments 15,25] [--samples 64,128] [--reference 512]

The first run pays for tracing the batch shapes; it is not timed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def agreement(a: object, b: object) -> float:
    """Pixel IoU of the regions two explanations show, side by side (fake with fake, real with real)."""
    both = sum(int((getattr(a, m) & getattr(b, m)).sum()) for m in ("towards_fake", "towards_real"))
    either = sum(int((getattr(a, m) | getattr(b, m)).sum()) for m in ("towards_fake", "towards_real"))
    return both / either if either else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=None)
    parser.add_argument("--segments", default="15,25")
    parser.add_argument("--samples", default="64,128")
    parser.add_argument("--reference", type=int, default=512)
    args = parser.parse_args()

    import numpy as np

    from pipeline.analyze import Analyzer
    from pipeline.ensemble import aggregate
    from pipeline.explain import explain_crop
    from pipeline.media import load_image
    from pipeline.pack import ModelPack
    from workers.samples import write_samples
    from workers.settings import DEFAULT_PACK_DIR

    analyzer = Analyzer(ModelPack.load(args.pack or DEFAULT_PACK_DIR))
    with tempfile.TemporaryDirectory() as tmp:
        write_samples(tmp)
        frame = load_image(Path(tmp) / "face.jpg")
    crop = analyzer.explanation_crop(frame, analyzer.detector.detect(frame)[0])

    def score(crops: list[np.ndarray]) -> np.ndarray:
        return aggregate(analyzer.pack.score_faces(crops), analyzer.pack.manifest.aggregation)

    counts = [int(n) for n in args.samples.split(",")]
    explain_crop(crop, score, num_samples=max(counts))  # traces every batch shape once
    print(f"crop {crop.shape[0]} px; reference {args.reference} samples")
    print("segments  samples  seconds  R2 (seed 0, 1)   max|w| pts  agree seeds  agree reference")
    for n_segments in (int(s) for s in args.segments.split(",")):
        reference = explain_crop(crop, score, num_samples=args.reference, n_segments=n_segments)
        for n in counts:
            started = time.perf_counter()
            first = explain_crop(crop, score, num_samples=n, n_segments=n_segments, seed=0)
            elapsed = time.perf_counter() - started
            second = explain_crop(crop, score, num_samples=n, n_segments=n_segments, seed=1)
            strongest = 100 * max(abs(w) for w in first.weights.values())
            print(
                f"{n_segments:8d}  {n:7d}  {elapsed:7.1f}  {first.fit_r2:.2f}, {second.fit_r2:.2f}       "
                f"{strongest:9.2f}  {agreement(first, second):11.2f}  "
                f"{agreement(first, reference):15.2f}"
            )


if __name__ == "__main__":
    main()
