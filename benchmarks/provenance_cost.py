"""What reading provenance adds to the time of one image: ``analyze_file`` with the policy ``off`` against
the default (``verified_ai``, with trust anchors), on the same files, in one process, interleaved.

    python benchmarks/provenance_cost.py [--pack DIR] [--repeats 15]

The images are the face sample as a plain JPEG, a C2PA-signed JPEG, a PNG (the watermark decoder reads
every pixel) and a 2048 px JPEG. Each repeat times both analyzers on every file, alternating which goes
first; the figures are medians, of the process's CPU time (all its threads) and of wall time. On a machine
shared with other jobs, CPU time is the steadier of the two. The provenance step alone (C2PA, metadata and
watermarks on the bytes and pixels the analyzer already has) is timed apart. Without ``--pack`` it uses the
bundled pack: the cost users pay.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_images(directory: Path) -> tuple[dict[str, Path], str]:
    import cv2

    from tests.provenance_media import jpeg_bytes, make_chain, png_bytes, sign
    from workers.samples import face_image

    chain = make_chain()
    face = face_image()
    big = cv2.resize(face, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    plain = jpeg_bytes(face)
    files = {
        "plain JPEG 512 px": plain,
        "C2PA-signed JPEG 512 px": sign(
            plain, "image/jpeg", chain, source_type="digitalCapture", generator="bench"
        ),
        "PNG 512 px": png_bytes(face),
        "plain JPEG 2048 px": jpeg_bytes(big),
    }
    paths = {}
    for i, (name, data) in enumerate(files.items()):
        paths[name] = directory / f"{i}.{'png' if 'PNG' in name else 'jpg'}"
        paths[name].write_bytes(data)
    return paths, chain.root_pem.decode()


def provenance_step(data: bytes, pixels: np.ndarray, anchors: str) -> None:
    """What ``analyze_file`` adds for an image: C2PA, metadata, watermarks."""
    from pipeline.provenance import read_provenance, watermark_findings

    read_provenance(data, media_type="image", trust_anchors_pem=anchors)
    watermark_findings(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pack", type=Path, default=None, help="model pack (default: the bundled one)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from pipeline.analyze import Analyzer
    from pipeline.media import decode_image_bytes
    from pipeline.pack import ModelPack
    from pipeline.provenance import ProvenanceOptions, VerdictPolicy
    from workers.settings import DEFAULT_PACK_DIR

    pack = ModelPack.load(args.pack or DEFAULT_PACK_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        images, anchors = make_images(Path(tmp))
        off = Analyzer(pack, provenance=ProvenanceOptions(policy=VerdictPolicy.OFF))
        on = Analyzer(pack, provenance=ProvenanceOptions(trust_anchors_pem=anchors))
        for path in images.values():  # warm up: model graphs, the C2PA library, caches
            off.analyze_file(path)
            on.analyze_file(path)
        times: dict[str, dict[str, list[float]]] = {
            name: {f"{key} {clock}": [] for key in ("off", "on", "step") for clock in ("cpu", "wall")}
            for name in images
        }

        def timed(name: str, key: str, run: Callable[[], object]) -> None:
            cpu, wall = time.process_time(), time.perf_counter()
            run()
            times[name][f"{key} cpu"].append(time.process_time() - cpu)
            times[name][f"{key} wall"].append(time.perf_counter() - wall)

        for repeat in range(args.repeats):
            for name, path in images.items():
                order = [("off", off), ("on", on)][:: 1 if repeat % 2 else -1]
                for key, analyzer in order:
                    timed(name, key, partial(analyzer.analyze_file, path))
                data = path.read_bytes()
                timed(name, "step", partial(provenance_step, data, decode_image_bytes(data), anchors))

    print(f"pack {pack.manifest.label}, {args.repeats} repeats, medians")
    print("| image | clock | off (s) | on (s) | on / off | provenance step (ms) | step / off |")
    print("|---|---|---|---|---|---|---|")
    for name, t in times.items():
        for clock in ("cpu", "wall"):
            t_off, t_on, step = (statistics.median(t[f"{k} {clock}"]) for k in ("off", "on", "step"))
            print(
                f"| {name} | {clock} | {t_off:.3f} | {t_on:.3f} | {100 * (t_on / t_off - 1):+.1f} % "
                f"| {1000 * step:.1f} | {100 * step / t_off:.1f} % |"
            )


if __name__ == "__main__":
    main()
